#!/usr/bin/env bash
# Installs the Debian packages anvil builds and tests with, and the PyPI packages its
# parity tests use; a no-op when all are present.
set -euo pipefail
packages=(
  cmake ninja-build g++ make pkg-config
  libopenblas-openmp-dev libgtest-dev
  libopenmpi-dev openmpi-bin libhdf5-openmpi-dev
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev
  python3-torch python3-numpy python3-pip python3-psutil python3-yaml  # the last two: accelerate (peft)
  zlib1g-dev
  slurm-wlm slurmctld slurmd slurm-client munge
  clang libclang-rt-14-dev  # libFuzzer + ASan/UBSan runtimes for the fuzz targets (tests/fuzz)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# PyPI oracles for the python3 first on PATH (pyenv, which sees PyPI; tests/CMakeLists.txt
# finds it as PYPI_PYTHON): Hugging Face tokenizers and safetensors, TensorBoard. No sudo.
pypi=()
python3 -c 'import tokenizers' >/dev/null 2>&1 || pypi+=(tokenizers==0.23.3)
python3 -c 'import safetensors' >/dev/null 2>&1 || pypi+=(safetensors==0.8.0)
# TensorBoard's own reader checks the event files anvil writes (tests/ops/tensorboard_test.cpp).
python3 -c 'import tensorboard' >/dev/null 2>&1 || pypi+=(tensorboard==2.21.0)
if [ ${#pypi[@]} -gt 0 ]; then
  echo "install_deps: installing ${pypi[*]} for $(command -v python3)"
  python3 -m pip install --quiet "${pypi[@]}"
fi

# transformers for Debian's torch 1.13 (/usr/bin/python3, which pip may not modify: Debian marks it
# externally managed): a pinned set, every wheel without dependencies, into a --target directory that
# tests/parity/hf_parity_test.cpp puts on PYTHONPATH. transformers 4.38.2 runs on torch 1.13 and Debian's
# numpy 1.24 (GPT-2 and Llama build, save and load); peft 0.10 (+ accelerate 0.27, whose psutil and
# pyyaml Debian ships) loads and saves LoRA adapters on it; the rest are versions it accepts. The set is
# recorded in the directory, so a changed pin reinstalls. ANVIL_PYDEPS overrides the location
# (tests/CMakeLists.txt reads the same variable at configure time).
pydeps="${ANVIL_PYDEPS:-$HOME/.cache/anvil-pydeps}"
hf_pins=(
  transformers==4.38.2 tokenizers==0.15.2 safetensors==0.4.2 huggingface-hub==0.21.4
  regex==2023.12.25 tqdm==4.66.2 filelock==3.13.1 packaging==23.2 fsspec==2024.2.0
  peft==0.10.0 accelerate==0.27.2
)
if [ "$(cat "$pydeps/.anvil-pins" 2>/dev/null)" != "${hf_pins[*]}" ] ||
   ! PYTHONPATH="$pydeps" /usr/bin/python3 -c 'import transformers, tokenizers, safetensors' >/dev/null 2>&1; then
  echo "install_deps: installing ${hf_pins[*]} into $pydeps for /usr/bin/python3"
  rm -rf "$pydeps"
  /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$pydeps" "${hf_pins[@]}"
  PYTHONPATH="$pydeps" /usr/bin/python3 -c 'import torch, transformers, peft; transformers.LlamaForCausalLM; transformers.GPT2LMHeadModel'
  echo "${hf_pins[*]}" > "$pydeps/.anvil-pins"
fi

# The cuDNN frontend (header-only C++ graph API for fused attention) from PyPI's
# nvidia-cudnn-frontend wheel: only its include/ is unpacked, into the directory CMake's
# ANVIL_CUDNN_FRONTEND_DIR defaults to. Needed only where nvcc exists (the CUDA backend).
cudnn_fe_version=1.32.0
cudnn_fe_dir="${ANVIL_DEPS:-$HOME/.cache/anvil-deps}/cudnn_frontend"
if { command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; } &&
   [ "$(cat "$cudnn_fe_dir/.version" 2>/dev/null)" != "$cudnn_fe_version" ]; then
  echo "install_deps: unpacking nvidia-cudnn-frontend $cudnn_fe_version headers into $cudnn_fe_dir"
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp" "nvidia-cudnn-frontend==$cudnn_fe_version"
  rm -rf "$cudnn_fe_dir" && mkdir -p "$cudnn_fe_dir"
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in z.namelist() if n.startswith("include/")]' \
    "$tmp"/nvidia_cudnn_frontend-*.whl "$cudnn_fe_dir"
  rm -rf "$tmp"
  echo "$cudnn_fe_version" > "$cudnn_fe_dir/.version"
fi
