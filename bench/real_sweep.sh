#!/usr/bin/env bash
# The real-model sweep: every policy of kvec.h on held-text KL and on the
# retrieval tasks, on SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct,
# reported on seed 2 (docs/REAL_TASKS.md). Writes bench/results/real-*.json
# and .txt and prints each step's wall time.
#
#   bench/real_sweep.sh [--quick] [smollm2|qwen|both]   (default both)
#
# --quick: 4 KL samples and 2 samples per task, five policies, results in
# build/real-quick/. Runs under `nice -n 15`; the thread count is
# OMP_NUM_THREADS (default 2; on a machine shared with other jobs 1 thread
# per process wastes less time in OpenMP's barriers). The sample counts are
# small (docs/REAL_TASKS.md gives the CPU time of each step). The models come from
# scripts/fetch-model.sh (fetched once into ~/.cache/kvec).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
which=both
for arg in "$@"; do
    case "$arg" in
    --quick) quick=1 ;;
    smollm2 | qwen | both) which=$arg ;;
    *) echo "real_sweep: unknown argument '$arg' ([--quick] [smollm2|qwen|both])" >&2; exit 2 ;;
    esac
done
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
make -s build/quality
out=bench/results
[ $quick = 1 ] && out=build/real-quick && mkdir -p $out
started=$(date +%s)

step() { # name, command...
    local name=$1 t0
    shift
    t0=$(date +%s)
    echo "== $name: $*"
    nice -n 15 "$@" | tee "$out/$name.txt"
    echo "== $name: $(( $(date +%s) - t0 )) s wall"
}

# `all` is the full cache and every name of TEXT_POLICY_NAMES: the eleven
# policies, the budget modes (pyramidkv, adakv, kvec-ada, snap-global,
# kvec-global, laprox-global) and the output-aware ones (criticalkv, laprox).
few=full,kvec,snapkv,keydiff,streaming
# kvec:share=0.5 is K-VEC as it was before version 0.4 (attention's share of
# the rank union 0.5), beside the default (0.25) in every table.
old=kvec:share=0.5
if [ "$which" != qwen ]; then
    M=$(scripts/fetch-model.sh smollm2 | tail -1)
    if [ $quick = 1 ]; then
        step real-smollm2-kl build/quality --model "$M" --kl bench/tasks/kl-seed2-2048.jsonl --quick \
            --out $out/real-smollm2-kl.json
        step real-smollm2-tasks build/quality --model "$M" --tasks bench/tasks/seed2-1024.jsonl --quick \
            --settings agnostic,aware,both --out $out/real-smollm2-tasks.json
    else
        step real-smollm2-kl build/quality --model "$M" --kl bench/tasks/kl-seed2-2048.jsonl --policies all,$old \
            --budgets 0.1,0.25,0.5 --limit 8 --out $out/real-smollm2-kl.json
        # The headline retrieval table: 40 samples, both settings, 25 and 50%.
        step real-smollm2-tasks-n40 build/quality --model "$M" --tasks bench/tasks/seed2-1024.jsonl \
            --policies full,kvec,$old,snapkv,keydiff,streaming,tova,h2o,snap-global --budgets 0.25,0.5 \
            --settings agnostic,aware --out $out/real-smollm2-tasks-n40.json
        # The question both before and after the context, eight policies.
        step real-smollm2-tasks-both build/quality --model "$M" --tasks bench/tasks/seed2-1024.jsonl \
            --policies full,kvec,$old,snapkv,keydiff,tova,h2o,streaming --budgets 0.25,0.5 --settings both \
            --out $out/real-smollm2-tasks-both.json
        # Every policy and budget mode, question-agnostic at 50%, 12 samples.
        step real-smollm2-tasks build/quality --model "$M" --tasks bench/tasks/seed2-1024.jsonl --policies all \
            --budgets 0.5 --settings agnostic --per-task 3 --max-tokens 24 --out $out/real-smollm2-tasks.json
        # Eviction during decoding: a 512-token prefix, then 1,024 forced
        # tokens with the cache held at the budget, re-evicted every 32.
        step real-smollm2-kl-decode build/quality --model "$M" --kl bench/tasks/kl-seed2-decode.jsonl --decode 32 \
            --policies full,kvec,$old,snapkv,h2o,tova,streaming,keydiff,knorm --budgets 0.1,0.25,0.5 --limit 8 \
            --out $out/real-smollm2-kl-decode.json
    fi
fi
if [ "$which" != smollm2 ]; then
    Q=$(scripts/fetch-model.sh qwen | tail -1)
    if [ $quick = 1 ]; then
        step real-qwen-kl-2048 build/quality --model "$Q" --kl bench/tasks/kl-seed2-2048.jsonl --quick --limit 2 \
            --out $out/real-qwen-kl-2048.json
    else
        step real-qwen-kl-2048 build/quality --model "$Q" --kl bench/tasks/kl-seed2-2048.jsonl \
            --policies $few,$old,tova,knorm --budgets 0.1,0.25,0.5 --limit 4 --out $out/real-qwen-kl-2048.json
        step real-qwen-kl-4096 build/quality --model "$Q" --kl bench/tasks/kl-seed2-4096.jsonl --policies $few,$old \
            --budgets 0.1,0.25,0.5 --limit 3 --out $out/real-qwen-kl-4096.json
        step real-qwen-tasks-4096 build/quality --model "$Q" --tasks bench/tasks/seed2-4096.jsonl --policies $few,$old \
            --budgets 0.5 --settings agnostic --per-task 2 --max-tokens 24 --out $out/real-qwen-tasks-4096.json
        # 8K, past SmolLM2's reach (the report prose is too short for 8K of held text).
        step real-qwen-tasks-8192 build/quality --model "$Q" --tasks bench/tasks/seed2-8192.jsonl --policies $few,$old \
            --budgets 0.25,0.5 --settings agnostic --per-task 2 --max-tokens 24 --out $out/real-qwen-tasks-8192.json
    fi
fi
echo "real_sweep: $(( $(date +%s) - started )) s wall in all, OMP_NUM_THREADS=$OMP_NUM_THREADS, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
