#!/usr/bin/env bash
# Packs what the GPU machine lacks into .gpudeps/ (git-ignored; the device tool carries it):
# the Debian bookworm .deb files of anvil's C++ dependencies and their runtime closure, and
# the cuDNN frontend headers. Run HERE (a Debian bookworm machine with apt and network),
# from the repo root; scripts/gpu_build.sh unpacks and uses them ON the GPU machine, which
# reaches no package registry. Re-running replaces the folder.
#
# The closure is checked, not guessed: every shared library of the unpacked packages is
# resolved with ldd against the unpacked tree, and any dependency found only on this
# machine's system (except glibc and the compiler's runtime, which the GPU machine's own
# toolchain provides) is reported with its package, so the list below can be fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpudeps
arch=x86_64-linux-gnu

# Headers, CMake configs and link-time .so symlinks.
dev_packages=(
  libyaml-cpp-dev libhdf5-openmpi-dev libopenmpi-dev libopenblas-openmp-dev
  libgtest-dev libcli11-dev nlohmann-json3-dev zlib1g-dev
)
# The shared libraries those link against, and theirs (the ldd closure, checked below).
# MPI's transports (libfabric, libucx, libpmix, ...) are plugins Open MPI dlopens at MPI_Init:
# the GPU tests and benches run one process and never initialise MPI, so they stay out.
runtime_packages=(
  libyaml-cpp0.7 libhdf5-openmpi-103-1 libopenmpi3 libopenblas0-openmp libgfortran5 libquadmath0
  libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 libudev1 libsz2 libaec0 zlib1g
  # libhdf5 links libcurl (its read-only S3 driver) and libcrypto; their closure:
  libcurl4 libssl3 libbrotli1 libcom-err2 libffi8 libgmp10 libgnutls30 libgssapi-krb5-2 libhogweed6
  libidn2-0 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libldap-2.5-0 libnettle8 libnghttp2-14
  libp11-kit0 libpsl5 librtmp1 libsasl2-2 libssh2-1 libtasn1-6 libunistring2 libzstd1
)
# Provided by the GPU machine itself (glibc, and the runtime of its own g++ that builds anvil).
system_packages="libc6 libstdc++6 libgcc-s1 libgomp1"

command -v apt-get >/dev/null || { echo "gpu_pack: needs apt-get (a Debian bookworm machine)" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out/debs"
echo "gpu_pack: downloading ${#dev_packages[@]} dev and ${#runtime_packages[@]} runtime packages"
(cd "$out/debs" && apt-get download -q "${dev_packages[@]}" "${runtime_packages[@]}" 2>&1 |
   grep -v "couldn't be accessed by user '_apt'" || true)
n=$(ls "$out"/debs/*.deb | wc -l)
[ "$n" -eq $(( ${#dev_packages[@]} + ${#runtime_packages[@]} )) ] ||
  { echo "gpu_pack: expected $(( ${#dev_packages[@]} + ${#runtime_packages[@]} )) .deb files, got $n" >&2; exit 1; }

# Check the closure on an unpacked copy.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
for deb in "$out"/debs/*.deb; do dpkg -x "$deb" "$probe"; done
libdirs="$probe/usr/lib/$arch:$probe/lib/$arch:$probe/usr/lib/$arch/openblas-openmp:$probe/usr/lib/$arch/hdf5/openmpi"
# The libraries anvil links directly; ldd lists their whole load-time closure. (Plugins that
# Open MPI dlopens at MPI_Init are not in it, on purpose: see runtime_packages.)
link_roots=(usr/lib/$arch/libhdf5_openmpi.so.103 usr/lib/$arch/libmpi.so.40
            usr/lib/$arch/openblas-openmp/libopenblas.so.0 usr/lib/$arch/libyaml-cpp.so.0.7 lib/$arch/libz.so.1)
missing=""
for root in "${link_roots[@]}"; do [ -e "$probe/$root" ] || missing+=" $root(not in the pack)"; done
while IFS= read -r lib; do
  while read -r dep path; do
    case "$path" in
      "$probe"/*) ;;
      "not") missing+=" $dep(not found)";;
      *) real=$(readlink -f "$path")  # usrmerge: dpkg may know either /lib or /usr/lib
         pkg=$({ dpkg -S "$path" || dpkg -S "$real" || dpkg -S "${real#/usr}" || true; } 2>/dev/null |
               head -1 | cut -d: -f1 || true)
         case " $system_packages " in *" $pkg "*) ;; *) missing+=" $dep($pkg)";; esac;;
    esac
  done < <(LD_LIBRARY_PATH="$libdirs" ldd "$lib" 2>/dev/null | awk '/=>/ {print $1, $3}')
done < <(printf "$probe/%s\n" "${link_roots[@]}")
if [ -n "$missing" ]; then
  echo "gpu_pack: these libraries resolve outside the pack; add their packages:" \
       "$(echo "$missing" | tr ' ' '\n' | sort -u | tr '\n' ' ')" >&2
  exit 1
fi

# The cuDNN frontend headers (header-only), as scripts/install_deps.sh unpacked them.
fe="${ANVIL_DEPS:-$HOME/.cache/anvil-deps}/cudnn_frontend"
[ -f "$fe/include/cudnn_frontend.h" ] ||
  { echo "gpu_pack: no cuDNN frontend headers in $fe — run scripts/install_deps.sh first" >&2; exit 1; }
mkdir -p "$out/cudnn_frontend" && cp -r "$fe/include" "$out/cudnn_frontend/"
cp "$fe/.version" "$out/cudnn_frontend/" 2>/dev/null || true

# What was packed, for the record (gpu_build.sh prints it).
{ echo "packed $(date -u +%Y-%m-%dT%H:%MZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1)"
  for deb in "$out"/debs/*.deb; do dpkg-deb -f "$deb" Package Version | paste -sd' '; done
} > "$out/MANIFEST"
size=$(du -sm "$out" | cut -f1)
echo "gpu_pack: $n packages + cuDNN frontend headers in $out ($size MiB)"
if [ "$size" -gt 60 ]; then
  echo "gpu_pack: $out is $size MiB, over the 60 MiB budget (the device tool carries 64 MiB in all)" >&2
  exit 1
fi
