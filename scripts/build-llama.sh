#!/usr/bin/env bash
# Fetches llama.cpp's source from the PyPI sdist of llama-cpp-python (pinned,
# sha256-checked), and builds its CPU libraries (ggml with its RPC backend,
# llama), llama-bench and ggml-rpc-server (llama.cpp's rpc-server) into
# build/llama.cpp. Nothing of llama.cpp is committed. A second run finds the
# build and does nothing.
#
#   scripts/build-llama.sh [BUILD_DIR]             (default build)
#   scripts/build-llama.sh --patched [BUILD_DIR]
#
# --patched builds a second copy, with examples/llama.cpp/kvec-per-head.patch
# and kvec-server.patch applied, into BUILD_DIR/llama.cpp-patched: the
# libraries and llama-server with --kv-evict (compiled with this checkout's
# examples/llama.cpp/kvec_server.c; the web UI's assets are left out, as
# they would be downloaded). The stock build is left as it is, and its
# downloaded sdist reused. When a patch file changes, the old patches are
# reversed and the new ones applied, so that only the files they touch
# recompile.
#
# Prints the build directory as its last line.
set -euo pipefail

version=0.3.36   # vendors llama.cpp commit 0c1e570, ggml 0.25.3
sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
patched=0
if [ "${1:-}" = --patched ]; then patched=1; shift; fi
build=${1:-build}
repo=$(cd "$(dirname "$0")/.." && pwd)
patch_files="$repo/examples/llama.cpp/kvec-per-head.patch $repo/examples/llama.cpp/kvec-server.patch"
root=$build/llama.cpp
[ $patched = 1 ] && root=$build/llama.cpp-patched
src=$root/src
out=$root/build

# Instruction sets: this machine's own, less Intel AMX. ggml's AMX matrix
# product (reached through the CPU backend's extra buffer types whenever
# weights are repacked) crashes with SIGSEGV in ggml_backend_amx_mul_mat on
# some Xeons that have AMX (llama.cpp issue #20824, closed without a fix), so
# it is compiled out. GGML_NATIVE=ON cannot do that: ggml appends
# -march=native after CMAKE_C_FLAGS, and GCC expands -march=native into
# explicit -mamx-* flags, which would win over an earlier -mno-amx-*. So the
# build is native by our own flags, in an order we control, with ggml's own
# ISA switches off; the preprocessor is then asked whether AMX-INT8 (the macro
# that guards ggml's AMX code) is still defined, on this very machine.
arch_flags="-march=native"
case "$(uname -m)" in
    x86_64|amd64) arch_flags="$arch_flags -mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;;
esac
for compiler in "${CC:-cc}:c" "${CXX:-c++}:c++"; do
    if echo | ${compiler%:*} $arch_flags -x "${compiler##*:}" -dM -E - 2> /dev/null | grep -q '__AMX_INT8__'; then
        echo "build-llama: ${compiler%:*} still defines __AMX_INT8__ with '$arch_flags': refusing to build ggml's AMX path" >&2
        exit 1
    fi
done

# a build made with other flags (an older version of this script) is redone
stamp="flags: $arch_flags; rpc"
[ $patched = 1 ] && stamp="$stamp; server, kvec at $repo"
server_flags=
[ $patched = 1 ] && server_flags="-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF -DKVEC_DIR=$repo -DKVEC_PER_HEAD=ON"
if [ -f "$out/.built" ] && [ "$(cat "$out/.built")" != "$stamp" ]; then
    echo "build-llama: $out was built with other flags: rebuilding" >&2
    rm -f "$out/.built" "$out/CMakeCache.txt"
fi
# the patched copy is up to date when it was built with these very patches
# (a copy of each patch as applied is kept in $root/applied)
applied_dir=$root/applied
patches_current() {
    local p
    for p in $patch_files; do cmp -s "$p" "$applied_dir/$(basename "$p")" || return 1; done
}
if [ $patched = 1 ] && [ -f "$out/.built" ] && ! patches_current; then
    rm -f "$out/.built"
fi
if [ -f "$out/.built" ]; then
    # llama-server compiles this checkout's kvec sources (kvec.h,
    # examples/llama.cpp/kvec_*.c): the build tool sees their changes
    if [ $patched = 1 ]; then
        cmake --build "$out" -j "$(nproc 2> /dev/null || echo 2)" --target llama-server >> "$root/build.log" 2>&1 || {
            echo "build-llama: rebuilding llama-server failed, see $root/build.log" >&2; tail -20 "$root/build.log" >&2; exit 1; }
    fi
    echo "build-llama: llama.cpp already built in $out" >&2
    echo "$out"
    exit 0
fi
command -v cmake > /dev/null || { echo "build-llama: cmake is missing (apt-get install cmake)" >&2; exit 1; }
python3 -m pip --version > /dev/null 2>&1 || { echo "build-llama: pip is missing (apt-get install python3-pip)" >&2; exit 1; }
mkdir -p "$root"

sdist=$root/llama_cpp_python-$version.tar.gz
if [ $patched = 1 ] && [ ! -f "$sdist" ] && [ -f "$build/llama.cpp/llama_cpp_python-$version.tar.gz" ]; then
    cp "$build/llama.cpp/llama_cpp_python-$version.tar.gz" "$sdist"
fi
if [ ! -f "$sdist" ]; then
    echo "build-llama: downloading llama-cpp-python==$version (source) from PyPI" >&2
    python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$root" >&2 || {
        echo "build-llama: pip could not download llama-cpp-python==$version: is PyPI reachable?" >&2; exit 1; }
fi
got=$(sha256sum "$sdist" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
    echo "build-llama: refusing $sdist: sha256 $got, expected $sha" >&2
    rm -f "$sdist"
    exit 1
fi
if [ ! -f "$src/CMakeLists.txt" ]; then
    echo "build-llama: unpacking vendor/llama.cpp into $src" >&2
    rm -rf "$src" && mkdir -p "$src"
    tar xzf "$sdist" -C "$src" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp"
    rm -rf "$applied_dir" "$root/applied.patch"
fi
if [ $patched = 1 ] && ! patches_current; then
    command -v patch > /dev/null || { echo "build-llama: patch is missing (apt-get install patch)" >&2; exit 1; }
    # an older version of this script kept one copy of the per-head patch
    if [ -f "$root/applied.patch" ]; then
        echo "build-llama: reversing the patch applied by an older build-llama.sh" >&2
        patch -d "$src" -p1 -R --quiet < "$root/applied.patch" || {
            echo "build-llama: cannot reverse the old patch: remove $root and run again" >&2; exit 1; }
        rm -f "$root/applied.patch"
    fi
    mkdir -p "$applied_dir"
    for patch_file in $patch_files; do
        copy=$applied_dir/$(basename "$patch_file")
        cmp -s "$patch_file" "$copy" && continue
        if [ -f "$copy" ]; then
            echo "build-llama: $(basename "$patch_file") changed: reversing the one applied" >&2
            patch -d "$src" -p1 -R --quiet < "$copy" || {
                echo "build-llama: cannot reverse the old $(basename "$patch_file"): remove $root and run again" >&2; exit 1; }
            rm -f "$copy"
        fi
        echo "build-llama: applying $patch_file" >&2
        patch -d "$src" -p1 --quiet --forward < "$patch_file" || {
            echo "build-llama: $patch_file does not apply to llama-cpp-python $version: remove $root and run again" >&2; exit 1; }
        cp "$patch_file" "$copy"
    done
fi

jobs=$(nproc 2> /dev/null || echo 2)
echo "build-llama: configuring (CPU and RPC backends, Release, $arch_flags)" >&2
cmake -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_BMI2=OFF \
    -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DCMAKE_C_FLAGS="$arch_flags" -DCMAKE_CXX_FLAGS="$arch_flags" \
    -DGGML_OPENMP=ON -DGGML_RPC=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TOOLS=ON $server_flags > "$root/configure.log" 2>&1 || {
    echo "build-llama: cmake configure failed, see $root/configure.log" >&2; exit 1; }
targets="llama llama-bench ggml-rpc-server"
[ $patched = 1 ] && targets="llama llama-server"
echo "build-llama: building $targets (and ggml) with $jobs jobs (about 15 minutes on 2 cores; log in $root/build.log)" >&2
cmake --build "$out" -j "$jobs" --target $targets > "$root/build.log" 2>&1 || {
    echo "build-llama: build failed, see $root/build.log" >&2; tail -20 "$root/build.log" >&2; exit 1; }
echo "$stamp" > "$out/.built"
echo "build-llama: done" >&2
echo "$out"
