#!/usr/bin/env bash
# Fetches llama.cpp's source from the PyPI sdist of llama-cpp-python (pinned,
# sha256-checked), and builds its CPU libraries (ggml, llama) and llama-bench
# into build/llama.cpp. Nothing of llama.cpp is committed. A second run finds
# the build and does nothing.
#
#   scripts/build-llama.sh [BUILD_DIR]     (default build)
#
# Prints the build directory as its last line.
set -euo pipefail

version=0.3.36   # vendors llama.cpp commit 0c1e570, ggml 0.25.3
sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
build=${1:-build}
root=$build/llama.cpp
src=$root/src
out=$root/build

if [ -f "$out/.built" ]; then
    echo "build-llama: llama.cpp already built in $out" >&2
    echo "$out"
    exit 0
fi
command -v cmake > /dev/null || { echo "build-llama: cmake is missing (apt-get install cmake)" >&2; exit 1; }
python3 -m pip --version > /dev/null 2>&1 || { echo "build-llama: pip is missing (apt-get install python3-pip)" >&2; exit 1; }
mkdir -p "$root"

sdist=$root/llama_cpp_python-$version.tar.gz
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
fi

jobs=$(nproc 2> /dev/null || echo 2)
echo "build-llama: configuring (CPU only, native, Release)" >&2
cmake -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TOOLS=ON > "$root/configure.log" 2>&1 || {
    echo "build-llama: cmake configure failed, see $root/configure.log" >&2; exit 1; }
echo "build-llama: building ggml, llama and llama-bench with $jobs jobs (about 15 minutes on 2 cores; log in $root/build.log)" >&2
cmake --build "$out" -j "$jobs" --target llama llama-bench > "$root/build.log" 2>&1 || {
    echo "build-llama: build failed, see $root/build.log" >&2; tail -20 "$root/build.log" >&2; exit 1; }
touch "$out/.built"
echo "build-llama: done" >&2
echo "$out"
