#!/usr/bin/env bash
# Finds OpenBLAS for the speed benchmark's matrix-product yardstick and
# prints, as its last line, the compiler flags that build against it.
#
#   scripts/find-openblas.sh CC
#
# 1. The system's OpenBLAS (Debian: libopenblas-dev), when CC can compile and
#    link a call to cblas_sgemm with <cblas.h> and -lopenblas.
# 2. Otherwise OpenBLAS from PyPI: the wheel scipy-openblas32 (pinned,
#    sha256-checked, BSD-3-Clause; the build NumPy and SciPy ship), unpacked
#    into $KVEC_CACHE once. Its symbols carry a scipy_ prefix, which
#    bench/speed.c maps when KVEC_BENCH_SCIPY_OPENBLAS is defined; the library
#    path is baked into the binary (rpath).
# 3. Otherwise one line saying what to install, and exit status 1.
set -euo pipefail

cc=${1:-cc}
cache=${KVEC_CACHE:-$HOME/.cache/kvec}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Compiles and links a program that calls sgemm and the configuration query
# bench/speed.c prints, with the flags given; true when it runs.
links() {
    cat > "$work/probe.c" <<'EOF'
#ifdef KVEC_BENCH_SCIPY_OPENBLAS
#define cblas_sgemm scipy_cblas_sgemm
#define openblas_get_config scipy_openblas_get_config
#endif
#include <cblas.h>
int main(void) {
    float a = 1.0f, b = 2.0f, c = 0.0f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, 1, 1, 1.0f, &a, 1, &b, 1, 0.0f, &c, 1);
    return c == 2.0f && openblas_get_config() != 0 ? 0 : 1;
}
EOF
    # shellcheck disable=SC2086
    $cc -o "$work/probe" "$work/probe.c" $1 > /dev/null 2>&1 && "$work/probe"
}

if links "-lopenblas"; then
    echo "find-openblas: the system's OpenBLAS" >&2
    echo "-lopenblas"
    exit 0
fi

version=0.3.34.481.3
wheel=scipy_openblas32-$version-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
sha=0595f94cd58c1f8a0d90c975621f4587337a003916b1979e834ebdf2cb5d9504
dir=$cache/scipy-openblas32-$version
flags="-DKVEC_BENCH_SCIPY_OPENBLAS -I$dir/scipy_openblas32/include -L$dir/scipy_openblas32/lib -lscipy_openblas -Wl,-rpath,$dir/scipy_openblas32/lib"
need="make bench needs OpenBLAS: apt-get install libopenblas-dev (or pip and PyPI, to fetch scipy-openblas32==$version)"

if [ ! -f "$dir/.checked" ]; then
    if [ "$(uname -m)" != x86_64 ] || ! python3 -m pip --version > /dev/null 2>&1; then
        echo "$need" >&2
        exit 1
    fi
    echo "find-openblas: no system OpenBLAS; downloading scipy-openblas32==$version from PyPI into $cache" >&2
    if ! python3 -m pip download --quiet --no-deps --only-binary :all: --platform manylinux_2_28_x86_64 \
            -d "$work" "scipy-openblas32==$version" >&2 || [ ! -f "$work/$wheel" ]; then
        echo "$need" >&2
        exit 1
    fi
    got=$(sha256sum "$work/$wheel" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
        echo "find-openblas: refusing $wheel: sha256 $got, expected $sha" >&2
        exit 1
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$work/$wheel" "$dir"
    touch "$dir/.checked"
fi
if ! links "$flags"; then
    echo "find-openblas: scipy-openblas32 in $dir does not link with $cc; $need" >&2
    exit 1
fi
echo "find-openblas: OpenBLAS $version from PyPI (scipy-openblas32) in $dir" >&2
echo "$flags"
