#!/usr/bin/env bash
# Installs the Debian packages anvil builds and tests with, and the PyPI packages its
# parity tests use; a no-op when all are present.
set -euo pipefail
packages=(
  cmake ninja-build g++ make pkg-config
  libopenblas-openmp-dev libgtest-dev
  libopenmpi-dev openmpi-bin libhdf5-openmpi-dev
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev
  python3-torch python3-numpy
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
# finds it as PYPI_PYTHON): Hugging Face tokenizers and safetensors. No sudo.
pypi=()
python3 -c 'import tokenizers' >/dev/null 2>&1 || pypi+=(tokenizers==0.23.3)
python3 -c 'import safetensors' >/dev/null 2>&1 || pypi+=(safetensors==0.8.0)
if [ ${#pypi[@]} -gt 0 ]; then
  echo "install_deps: installing ${pypi[*]} for $(command -v python3)"
  python3 -m pip install --quiet "${pypi[@]}"
fi
