#!/usr/bin/env bash
# Installs the Debian packages anvil builds and tests with; a no-op when all are present.
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
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "install_deps: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
