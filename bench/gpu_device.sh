# Sourced by the GPU run scripts: loading a GPU build's run-time settings, the device's name
# for file names, and the header every recorded GPU result starts with (what ran, where, with
# which software).

# gpu_build_env BUILD_DIR SCRIPT: sources BUILD_DIR/gpu-env.sh (written by scripts/gpu_build.sh),
# or exits naming SCRIPT when that build is missing.
gpu_build_env() {
  if [ ! -f "$1/gpu-env.sh" ]; then
    echo "$2: $1/gpu-env.sh missing: run scripts/gpu_build.sh first" >&2
    exit 1
  fi
  source "$1/gpu-env.sh"
}

# "NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3"
gpu_device_slug() {
  local name
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  [ -n "$name" ] || name="unknown-gpu"
  echo "$name" | sed 's/^NVIDIA //I' | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/-$//'
}

gpu_run_header() {  # gpu_run_header TITLE
  echo "# anvil: $1"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  echo "gpus visible: $(nvidia-smi -L 2>/dev/null | wc -l)"
  echo "nvcc: $(nvcc --version 2>/dev/null | sed -n 's/.*release /release /p' | head -1)"
  echo "torch: $(python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>/dev/null)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'unknown (no .git on this machine)')"
  echo "host: $(uname -srm), $(nproc) CPUs"
}
