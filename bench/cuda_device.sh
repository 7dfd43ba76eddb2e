#!/usr/bin/env bash
# cuda_device.sh - everything kvec_cuda.cu needs a GPU for, in one call.
#
#   bash bench/cuda_device.sh [check|speed|all]      (default: all)
#
# Within a 10-minute device call, run `check` and `speed` as two calls:
# the sanitizers alone may take most of one.
#
# check: build with nvcc for the GPU at hand; tests/test_cuda.cu against
#        the CPU path (every shape); compute-sanitizer memcheck, racecheck
#        and synccheck on the debug build (--quick shapes).
# speed: bench/speed_cuda at 8K, 32K and 128K tokens beside a
#        device-to-device copy, and bench/speed_torch.py (PyTorch SnapKV)
#        in the same call; then one table with the ratios.
#
# Logs and JSON go to $OUT (or build/device when OUT is unset). The last
# lines printed are the summary. Written for the lent H100/H200 machines
# (see bench/NOTES-cuda.md); any CUDA machine with nvcc and PyTorch works.
set -uo pipefail
cd "$(dirname "$0")/.."
phase="${1:-all}"
out="${OUT:-build/device}"
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

note "cuda_device.sh $phase: $(git rev-parse --short HEAD 2>/dev/null || echo no-git) $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee -a "$summary"
nvcc --version | tail -1 | tee -a "$summary"

# Hopper by default; the compute capability of the GPU at hand otherwise.
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
arch="-gencode=arch=compute_${cc},code=sm_${cc}"
if ! make -j8 cuda CUDA_ARCH="$arch" > "$out/build.log" 2>&1; then
    note "build: FAILED (tail of $out/build.log follows)"; tail -30 "$out/build.log"; exit 1
fi
note "build: ok ($arch)"
grep -E "spill|stack frame" "$out/build.log" | sort | uniq -c | head -5 >> "$out/build.log"

status=0
if [[ "$phase" == check || "$phase" == all ]]; then
    if timeout 240 build/test_cuda > "$out/test_cuda.log" 2>&1; then note "test_cuda: $(tail -1 "$out/test_cuda.log")"
    else status=1; note "test_cuda: FAILED: $(grep -c FAIL "$out/test_cuda.log") failures, $(tail -1 "$out/test_cuda.log")"
         grep FAIL "$out/test_cuda.log" | head -20; fi
    grep "note:" "$out/test_cuda.log" | head -10 | tee -a "$summary"
    for tool in memcheck racecheck synccheck; do
        if ! command -v compute-sanitizer > /dev/null; then note "compute-sanitizer: not found"; break; fi
        case $tool in racecheck) limit=240 ;; *) limit=150 ;; esac
        timeout $limit compute-sanitizer --tool "$tool" --error-exitcode 3 build/test_cuda_debug --quick \
            > "$out/sanitizer-$tool.log" 2>&1
        rc=$?
        if [[ $rc == 0 ]]; then note "compute-sanitizer $tool: clean ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer-$tool.log" | tail -1))"
        else status=1; note "compute-sanitizer $tool: rc $rc: $(grep -E 'SUMMARY' "$out/sanitizer-$tool.log" | tail -1)"
             grep -E "^=========" "$out/sanitizer-$tool.log" | head -12; fi
    done
fi

if [[ "$phase" == speed || "$phase" == all ]]; then
    timeout 300 build/speed_cuda --json "$out/speed_cuda.json" > "$out/speed_cuda.txt" 2>&1 || { status=1; note "speed_cuda: FAILED"; }
    cat "$out/speed_cuda.txt"
    PYTHONUNBUFFERED=1 timeout 240 python3 bench/speed_torch.py --json "$out/speed_torch.json" > "$out/speed_torch.txt" 2>&1 \
        || { status=1; note "speed_torch: FAILED"; }
    cat "$out/speed_torch.txt"
    python3 - "$out/speed_cuda.json" "$out/speed_torch.json" <<'EOF' | tee -a "$summary"
import json, sys
ours = json.load(open(sys.argv[1]))
torch = {r["tokens"]: r["evict_ms"] for r in json.load(open(sys.argv[2]))["results"]}
rows = {(r["tokens"], r["policy"]): r for r in ours["results"]}
print(f"{ours['device']}: copy {ours['copy_gbs']:.0f} GB/s")
print(f"{'tokens':>8} {'floor ms':>9} {'snapkv':>8} {'kvec':>8} {'kvec/snap':>9} {'torch':>8} {'torch/snap':>10} {'floor/kvec':>10} {'compact/cp':>10}")
for n in sorted({r["tokens"] for r in ours["results"]}):
    s, k = rows.get((n, "snapkv")), rows.get((n, "kvec"))
    if not s or not k: continue
    t = torch.get(n, float("nan"))
    print(f"{n:8d} {s['floor_ms']:9.3f} {s['evict_ms']:8.3f} {k['evict_ms']:8.3f} {k['evict_ms']/s['evict_ms']:9.2f} "
          f"{t:8.2f} {t/s['evict_ms']:10.1f} {k['floor_ms']/k['evict_ms']:10.3f} {100*s['compact_copy_share']:9.0f}%")
EOF
fi
echo
echo "== summary ($summary)"
cat "$summary"
exit $status
