#!/usr/bin/env bash
# The demo's five questions about examples/demo/lighthouse.txt asked through
# llama.cpp (build/llama-example*/kvec-llama) with the question read after
# the eviction (--question-after): how many each policy answers at each
# budget. A reply is right when it contains the answer (ignoring case), as
# in `make demo`. Five questions are an anecdote, not a measurement: the
# 80-sample tables are build/quality's (docs/LEARNED.md, docs/REAL_TASKS.md).
#
#   bench/llama_questions.sh BIN MODEL [POLICIES] [BUDGETS]
#   BIN       build/llama-example-patched/kvec-llama (global budgets) or
#             build/llama-example/kvec-llama (stock: uniform budgets)
#   POLICIES  default full,learned,learned-kvec,kvec,keydiff,streaming
#   BUDGETS   default 0.25,0.1
# Environment: THREADS (default 1), MU (learned-kvec's, default 0.5).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
bin=$1 model=$2
policies=${3:-full,learned,learned-kvec,kvec,keydiff,streaming}
budgets=${4:-0.25,0.1}
threads=${THREADS:-1}
mu=${MU:-0.5}
questions=examples/demo/questions.tsv
[ -x "$bin" ] || { echo "llama_questions: $bin is not built (make llama-example, or llama-example-patched)" >&2; exit 1; }
[ -f "$model" ] || { echo "llama_questions: no model at $model (make model)" >&2; exit 1; }

echo "llama_questions: $(basename "$model"), $bin, question after the eviction, $threads thread(s), $(date -u +%F)"
printf '%-16s %7s %8s   %s\n' policy budget correct "per question (+ right, - wrong)"
IFS=, read -ra policy_list <<< "$policies"
IFS=, read -ra budget_list <<< "$budgets"
for policy in "${policy_list[@]}"; do
    for budget in "${budget_list[@]}"; do
        [ "$policy" = full ] && [ "$budget" != "${budget_list[0]}" ] && continue
        right=0 total=0 marks=""
        while IFS=$'\t' read -r question answer; do
            case "$question" in '#'*|'') continue ;; esac
            args=(--model "$model" --threads "$threads" --question-after --question "$question")
            case "$policy" in
            full) args+=(--full) ;;
            learned-kvec) args+=(--policy learned-kvec --mu "$mu" --budget "$budget") ;;
            *) args+=(--policy "$policy" --budget "$budget") ;;
            esac
            reply=$(OMP_NUM_THREADS=$threads "$bin" "${args[@]}" 2>&1 | sed -n 's/^reply ([^)]*): //p')
            total=$((total + 1))
            if printf '%s' "$reply" | grep -qiF -- "$answer"; then right=$((right + 1)); marks+="+"; else marks+="-"; fi
        done < "$questions"
        printf '%-16s %7s %5d/%d   %s\n' "$policy" "$([ "$policy" = full ] && echo 100% || echo "$budget")" "$right" "$total" "$marks"
    done
done
