#!/usr/bin/env bash
# Builds anvil's GPU tests and benchmarks ON the lent GPU machine, from the repo root.
# That machine has CUDA (nvcc, cuBLAS), PyTorch (whose wheels carry cuDNN and NCCL), g++,
# cmake and ninja, but none of anvil's Debian dependencies and no network. They travel as
# .deb files in .gpudeps/ (made here by scripts/gpu_pack.sh, carried by the device tool) and
# are unpacked with dpkg -x into a prefix, never into /.
#
# Assumption: the packed libraries are Debian bookworm's, built against glibc 2.36, and the
# GPU image is newer (Ubuntu 24.04: glibc 2.39), which runs them. An older glibc is refused
# below with a clear message before anything is compiled.
#
# usage: scripts/gpu_build.sh [BUILD_DIR]      (default build-gpu; env ANVIL_GPU_PREFIX, JOBS)
# Afterwards `source BUILD_DIR/gpu-env.sh` sets what the binaries need at run time
# (bench/run_gpu_tests.sh and bench/run_gpu_bench.sh do).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
prefix=${ANVIL_GPU_PREFIX:-/tmp/anvil-prefix}
deps=$PWD/.gpudeps
arch=x86_64-linux-gnu
jobs=${JOBS:-$(nproc)}
fail() { echo "gpu_build: $*" >&2; exit 1; }

echo "== machine"
(. /etc/os-release 2>/dev/null && echo "os: $PRETTY_NAME") || true
echo "glibc: $(ldd --version | head -1)"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: no GPU listed"
nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$nvcc_bin" ] || fail "no nvcc on PATH or in /usr/local/cuda/bin"
echo "nvcc: $("$nvcc_bin" --version | tail -2 | head -1)"
echo "g++: $(g++ --version | head -1)"
echo "cmake: $(cmake --version | head -1); ninja $(ninja --version)"
[ -d "$deps/debs" ] || fail "$deps/debs is missing: run scripts/gpu_pack.sh on the build machine and carry .gpudeps"
head -1 "$deps/MANIFEST" 2>/dev/null || true

# Unpacked once per pack: a second run on a machine still warm (a later device call) reuses it.
if cmp -s "$deps/MANIFEST" "$prefix/.anvil-manifest"; then
  echo "== $prefix is already unpacked from this pack"
else
  echo "== unpacking $(ls "$deps"/debs/*.deb | wc -l) packages into $prefix"
  rm -rf "$prefix" && mkdir -p "$prefix"
  for deb in "$deps"/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$prefix"
    else  # no dpkg: a .deb is an ar archive holding data.tar.*
      tmp=$(mktemp -d) && (cd "$tmp" && ar x "$deb" && tar -xf data.tar.* -C "$prefix") && rm -rf "$tmp"
    fi
  done
  # Absolute symlinks (e.g. libz.so -> /lib/.../libz.so.1.2.13) point into the prefix instead.
  while IFS= read -r link; do
    target=$(readlink "$link")
    if [ -e "$prefix$target" ]; then ln -sfn "$prefix$target" "$link"; fi
  done < <(find "$prefix" -type l -lname '/*')
  cp "$deps/MANIFEST" "$prefix/.anvil-manifest"
fi

libdirs=("$prefix/usr/lib/$arch" "$prefix/lib/$arch" "$prefix/usr/lib/$arch/openblas-openmp"
         "$prefix/usr/lib/$arch/hdf5/openmpi")
libpath=$(IFS=:; echo "${libdirs[*]}")

echo "== checking that the packed libraries load here"
bad=""
for lib in "$prefix/usr/lib/$arch/libhdf5_openmpi.so.103" "$prefix/usr/lib/$arch/libmpi.so.40" \
           "$prefix/usr/lib/$arch/openblas-openmp/libopenblas.so.0" "$prefix/usr/lib/$arch/libyaml-cpp.so.0.7"; do
  out=$(LD_LIBRARY_PATH="$libpath" ldd "$lib" 2>&1 || true)
  if echo "$out" | grep -q "not found\|GLIBC_\|GLIBCXX_\|CXXABI_"; then
    bad+=$'\n'"$lib:"$'\n'"$(echo "$out" | grep "not found\|GLIBC")"
  fi
done
if [ -n "$bad" ]; then
  fail "the packed Debian bookworm libraries do not load on this machine ($(ldd --version | head -1)):$bad
They need glibc >= 2.36 and libstdc++ from GCC >= 12. Pack from a distribution no newer than this
machine's (edit scripts/gpu_pack.sh) or build the dependencies here."
fi

echo "== locating cuDNN, NCCL, cuBLASLt and NVRTC"
cuda_home=$(dirname "$(dirname "$(readlink -f "$nvcc_bin")")")
# Site-packages of the python3 that holds PyTorch: its nvidia-* wheels carry the libraries.
site_dirs=$(python3 -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' \
            2>/dev/null || true)
hints=()
locate() {  # locate LIBFILE HEADER: adds the library's and header's dirs to hints unless the toolkit/system has them
  local lib=$1 header=$2 found=""
  for d in "$cuda_home/lib64" "$cuda_home/targets/x86_64-linux/lib" "/usr/lib/$arch" /usr/local/lib; do
    if [ -e "$d/$lib" ] && { [ -e "$cuda_home/include/$header" ] || [ -e "/usr/include/$header" ]; }; then
      echo "$lib: $d (system)"; return 0
    fi
  done
  for sp in $site_dirs; do
    [ -d "$sp/nvidia" ] || continue
    found=$(find "$sp/nvidia" -name "$lib" 2>/dev/null | head -1 || true)
    if [ -n "$found" ]; then
      local inc
      inc=$(find "$sp/nvidia" -name "$header" 2>/dev/null | head -1 || true)
      [ -n "$inc" ] || fail "$lib is in $(dirname "$found") but no $header was found under $sp/nvidia"
      hints+=("$(dirname "$found")" "$(dirname "$inc")")
      echo "$lib: $(dirname "$found") (python wheel), $header: $(dirname "$inc")"
      return 0
    fi
  done
  fail "$lib not found in the CUDA toolkit ($cuda_home), the system, or python's nvidia wheels ($site_dirs)"
}
locate libcudnn.so.9 cudnn.h
locate libnccl.so.2 nccl.h
cuda_major=$("$nvcc_bin" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
locate "libcublasLt.so.$cuda_major" cublasLt.h
locate "libnvrtc.so.$cuda_major" nvrtc.h  # the cuDNN frontend's runtime-compiled engines
hint_list=$(IFS=';'; echo "${hints[*]:-}")
fe="$deps/cudnn_frontend/include"
[ -f "$fe/cudnn_frontend.h" ] || fail "$fe/cudnn_frontend.h missing: re-run scripts/gpu_pack.sh"

# Run-time paths: the packed libraries and the wheels' (cuDNN loads its engine libraries by
# name, so they must be on the search path, not only linked).
runtime_path="$libpath"
for h in "${hints[@]}"; do case "$h" in */lib) runtime_path+=":$h";; esac; done
rpath=$(echo "$runtime_path" | tr ':' ';')

echo "== configuring $build"
# MPI is named outright (its compiler wrapper would look for files under /usr); the GPU tests and
# benches never initialise it, they only link it through anvil_core. CMAKE_POLICY_VERSION_MINIMUM
# lets CMake 4 read Debian's older package configs (CMake 3 reports it unused).
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
  -DANVIL_DEPS_PREFIX="$prefix" -DCMAKE_PREFIX_PATH="$prefix/usr" \
  -DMPI_CXX_SKIP_MPICXX=ON -DMPI_CXX_LIB_NAMES=mpi \
  -DMPI_mpi_LIBRARY="$prefix/usr/lib/$arch/openmpi/lib/libmpi.so" \
  -DMPI_CXX_HEADER_DIR="$prefix/usr/lib/$arch/openmpi/include" \
  -DMPI_CXX_COMPILER_INCLUDE_DIRS="$prefix/usr/lib/$arch/openmpi/include" \
  -DANVIL_MULTIRANK_TESTS=OFF \
  -DANVIL_CUDA_LIB_HINTS="$hint_list" -DANVIL_CUDNN_FRONTEND_DIR="$fe" \
  -DCMAKE_BUILD_RPATH="$rpath" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--disable-new-dtags -Wl,-rpath-link,$runtime_path" \
  ${ANVIL_CMAKE_ARGS:-}

# Every dependency must come from the prefix (a system copy of another version would mix ABIs).
for var in HDF5_LIBRARY OPENBLAS_LIBRARY MPI_mpi_LIBRARY ZLIB_LIBRARY_RELEASE yaml-cpp_DIR GTest_DIR; do
  val=$(grep "^$var:" "$build/CMakeCache.txt" | cut -d= -f2- || true)
  case "$val" in "$prefix"*) ;; *) echo "gpu_build: warning: $var = '$val' is not from $prefix" >&2;; esac
done

echo "== building with $jobs jobs"
cmake --build "$build" -j "$jobs" --target gpu_tests gpu_train_throughput train_throughput anvil

# The binaries carry these directories as RPATH already; cuDNN also dlopens its engine
# libraries by name, which only the library path reaches. Python stays outside it (the
# packed libraries must not shadow the ones PyTorch was built with).
cat > "$build/gpu-env.sh" <<ENVEOF
# Written by scripts/gpu_build.sh: what anvil's binaries in $build need at run time.
export ANVIL_GPU_BUILD="$PWD/$build"
export ANVIL_RUNTIME_PATH="$runtime_path"
# anvil_env CMD...: runs CMD (an anvil binary, or ctest running them) with that library path.
anvil_env() { LD_LIBRARY_PATH="\$ANVIL_RUNTIME_PATH\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" "\$@"; }
ENVEOF

echo "== checking that the binaries load"
source "$build/gpu-env.sh"
for bin in "$build"/tests/*_gpu_test "$build"/bin/gpu_train_throughput; do
  missing=$(anvil_env ldd "$bin" | grep "not found" || true)
  [ -z "$missing" ] || fail "$bin cannot load:"$'\n'"$missing"
done
anvil_env "$build/tests/core_gpu_test" --gtest_list_tests >/dev/null || fail "core_gpu_test does not start"
echo "gpu_build: done. Run bench/run_gpu_tests.sh $build and bench/run_gpu_bench.sh $build"
