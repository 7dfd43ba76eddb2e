#!/usr/bin/env bash
# build/generate, build/demo, build/quality --tasks and build/train_gates on a real GGUF model,
# and on bad input: a
# truncated or foreign file, invalid UTF-8, a prompt past the model's
# context, bad flags. Each bad input must end in a message and exit status 1
# or 2, never a signal. Usage: tests/test_cli.sh BUILD_DIR MODEL.gguf
set -u
build=$1
model=$2
passed=0
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() { # name, condition (0 = holds)
    if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $1"; fi
}

# Runs a command expecting failure: status 1 or 2 (not a crash) and stderr
# containing the given text.
refuses() { # name, expected text, command...
    local name=$1 text=$2
    shift 2
    "$@" > "$tmp/out" 2> "$tmp/err" < "${STDIN:-/dev/null}"
    local status=$?
    if [ $status -ne 1 ] && [ $status -ne 2 ]; then
        failed=$((failed + 1)); echo "FAIL: $name: exit status $status"; sed 's/^/    /' "$tmp/err" | tail -3; return
    fi
    grep -qi -- "$text" "$tmp/err"
    check "$name: message mentions '$text' (got: $(tail -1 "$tmp/err"))" $?
}

if [ ! -f "$model" ]; then
    echo "test_cli: skipped: no model at $model (run make model)"
    exit 0
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# Inspection flags.
ids=$(printf 'Hello, world! 12345' | "$build/generate" --model "$model" --tokenize)
check "--tokenize prints ids on one line" $([[ "$ids" =~ ^[0-9]+( [0-9]+)*$ ]]; echo $?)
check "--tokenize splits digits one by one (5 digits, 5+ ids)" $([ "$(echo "$ids" | wc -w)" -ge 9 ]; echo $?)
top=$(printf 'The capital of France is' | "$build/generate" --model "$model" --top-logits 5)
check "--top-logits 5 prints 5 lines" $([ "$(echo "$top" | wc -l)" -eq 5 ]; echo $?)
check "--top-logits lines are 'id logit', largest first" \
    $(echo "$top" | awk 'NF != 2 || $1 !~ /^[0-9]+$/ || (NR > 1 && $2 > prev) {bad = 1} {prev = $2} END {exit bad}'; echo $?)

# Text to text, with and without compression.
out=$(echo "What is the capital of France?" | "$build/generate" --model "$model" --policy none --max-tokens 16 2> /dev/null)
check "full cache answers 'Paris' (got: $(echo "$out" | grep answer:))" $(echo "$out" | grep -q "^answer:.*Paris"; echo $?)
out=$("$build/generate" --model "$model" --prompt-file examples/demo/lighthouse.txt \
      --question "What was the name of Agnes Pellow's dog?" --policy kvec --budget 0.5 --max-tokens 24 2> /dev/null)
check "compressed to 50% and answered: budget line" $(echo "$out" | grep -q "kvec: [0-9]* of [0-9]* prompt tokens kept"; echo $?)
check "compressed: cache memory before and after printed" $(echo "$out" | grep -q "MB after prefill, .* MB after compression"; echo $?)
check "compressed: the time of each stage printed" $(echo "$out" | grep -q "time: prefill .* eviction .* ms"; echo $?)

# The reconstruction pass (kvzip): the model repeats the document, then the
# scores select under one model-wide budget.
out=$("$build/generate" --model "$model" --prompt-file examples/demo/lighthouse.txt \
      --question "What was the name of Agnes Pellow's dog?" --policy kvzip --budget 0.25 --max-tokens 24 2> /dev/null)
check "kvzip: evicted to 25% (mean over heads) and answered" \
    $(echo "$out" | grep -q "kvzip: [0-9]* of [0-9]* prompt tokens kept per KV head (the mean over heads)" &&
      echo "$out" | grep -q "^answer: ."; echo $?)
check "kvzip: the pass's time printed beside the prefill's" \
    $(echo "$out" | grep -q "reconstruction pass (kvzip's scores): .* s, .*x the prefill"; echo $?)
refuses "generate: kvzip on a model without a tokenizer" "needs a .gguf model" "$build/generate" --policy kvzip
refuses "generate: expected attention on a model without a tokenizer" "needs a .gguf model" "$build/generate" --policy expected

# Expected attention (statistics of the prompt's queries) and K-VEC's
# coverage over the pass's scores.
out=$("$build/generate" --model "$model" --prompt-file examples/demo/lighthouse.txt \
      --question "What was the name of Agnes Pellow's dog?" --policy expected --budget 0.25 --max-tokens 8 2> /dev/null)
check "expected: evicted to 25% and its time printed beside the prefill's" \
    $(echo "$out" | grep -q "expected: [0-9]* of [0-9]* prompt tokens kept per KV head" &&
      echo "$out" | grep -q "expected attention (query statistics and scores): .* s, .*x the prefill"; echo $?)
out=$("$build/generate" --model "$model" --prompt-file examples/demo/lighthouse.txt \
      --question "What was the name of Agnes Pellow's dog?" --policy kvzip-kvec:mu=0.5 --budget 0.25 --max-tokens 8 2> /dev/null)
check "kvzip-kvec:mu=0.5: evicted to 25%" \
    $(echo "$out" | grep -q "kvzip-kvec:mu=0.5: [0-9]* of [0-9]* prompt tokens kept per KV head"; echo $?)
refuses "generate: a rank union over given scores" "only mu and budget apply" \
    "$build/generate" --model "$model" --policy kvzip-kvec:terms=rank-union --prompt-file examples/demo/lighthouse.txt
refuses "generate: a share over given scores" "only mu and budget apply" \
    "$build/generate" --model "$model" --policy expected-kvec:share=0.5 --prompt-file examples/demo/lighthouse.txt
refuses "generate: mu on expected attention without K-VEC" "K-VEC weight" \
    "$build/generate" --model "$model" --policy expected:mu=2 --prompt-file examples/demo/lighthouse.txt
"$build/quality" --model "$model" --tasks examples/demo/lighthouse.jsonl --limit 1 --policies full,kvzip,kvzip:budget=uniform \
    --budgets 0.25 --settings agnostic --max-tokens 16 --out "$tmp/kvzip.json" > "$tmp/kvzip.txt" 2> /dev/null
check "quality --tasks: kvzip rows, global and uniform, and the pass's time against the prefill's" \
    $(grep -q "^kvzip .*25%" "$tmp/kvzip.txt" && grep -q "^kvzip:budget=uniform .*25%" "$tmp/kvzip.txt" &&
      grep -q "reconstruction passes .* s more, .*x the prefill" "$tmp/kvzip.txt" &&
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['pass_seconds'] > 0 and r['prefill_seconds'] > 0" \
      "$tmp/kvzip.json" 2> /dev/null; echo $?)

# A learned scorer (scorers/NAME.kvs, trained by make scorer): scores from
# the prefill itself; files for another model, or not scorers, refused.
out=$("$build/generate" --model "$model" --prompt-file examples/demo/lighthouse.txt \
      --question "What was the name of Agnes Pellow's dog?" --policy learned --budget 0.25 --max-tokens 8 2> /dev/null)
check "learned: evicted to 25% and the scorer's time printed beside the prefill's" \
    $(echo "$out" | grep -q "learned: [0-9]* of [0-9]* prompt tokens kept per KV head" &&
      echo "$out" | grep -q "learned scorer (.*): .* s inside the prefill, .*x it"; echo $?)
refuses "generate: learned on a model without a tokenizer" "needs a .gguf model" "$build/generate" --policy learned
refuses "generate: a scorer file that is missing" "cannot open the scorer" \
    "$build/generate" --model "$model" --policy learned --scorer "$tmp/none.kvs" --prompt-file examples/demo/lighthouse.txt
refuses "generate: a file that is not a scorer" "not a kvec scorer" \
    "$build/generate" --model "$model" --policy learned --scorer examples/demo/lighthouse.txt \
    --prompt-file examples/demo/lighthouse.txt
for other in scorers/*.kvs; do
    case "$other" in *"$(basename "$model" .gguf)".kvs) continue ;; esac
    refuses "generate: a scorer for another model ($(basename "$other"))" "trained for another model" \
        "$build/generate" --model "$model" --policy learned --scorer "$other" --prompt-file examples/demo/lighthouse.txt
done
head -c 1000 "scorers/$(basename "$model" .gguf).kvs" > "$tmp/short.kvs"
refuses "generate: a truncated scorer" "truncated" \
    "$build/generate" --model "$model" --policy learned --scorer "$tmp/short.kvs" --prompt-file examples/demo/lighthouse.txt
root=$PWD
refuses "quality: learned where no scorer is found says how to train one" "make scorer" \
    bash -c 'cd "$1" && "$2/quality" --model "$3" --tasks "$4/examples/demo/lighthouse.jsonl" --limit 1 \
             --policies learned --budgets 0.25' _ "$tmp" "$(cd "$build" && pwd)" \
    "$(cd "$(dirname "$model")" && pwd)/$(basename "$model")" "$root"

# A long run in parts: --skip keeps the file's sample numbers.
"$build/quality" --model "$model" --tasks examples/demo/lighthouse.jsonl --limit 3 --skip 2 --policies full \
    --settings agnostic --max-tokens 8 --per-sample > "$tmp/skip.txt" 2> /dev/null
check "quality --tasks --skip 2 --limit 3: sample 3 alone, numbered as in the file" \
    $(grep -q "^per-sample 3 agnostic full " "$tmp/skip.txt" && [ "$(grep -c '^per-sample' "$tmp/skip.txt")" = 1 ]; echo $?)
refuses "quality --tasks: --skip past every sample" "no samples left" \
    "$build/quality" --model "$model" --tasks examples/demo/lighthouse.jsonl --limit 2 --skip 2
refuses "quality --tasks: a negative --skip" "skip" \
    "$build/quality" --model "$model" --tasks examples/demo/lighthouse.jsonl --skip -1

# Your own documents: build/quality on a task file.
"$build/quality" --model "$model" --tasks examples/demo/lighthouse.jsonl --limit 1 --policies full,kvec \
    --budgets 0.5 --settings aware --max-tokens 16 --out "$tmp/result.json" > "$tmp/quality.txt" 2> /dev/null
check "quality --tasks runs a task file" $?
check "quality --tasks: a full-cache row and a 50% row" \
    $(grep -q "^full .*100%" "$tmp/quality.txt" && grep -q "^kvec .*50%" "$tmp/quality.txt"; echo $?)
check "quality --tasks: RESULT.json holds results, stderr and sample counts" \
    $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['samples'] == 1; \
assert set(r['results']) == {'full', 'kvec'}; assert '1.0' in r['results']['full']['aware']; \
assert '0.5' in r['stderr']['kvec']['aware']" "$tmp/result.json" 2> /dev/null; echo $?)
printf '{"context": "a", "question": "b"}\n' > "$tmp/bad.jsonl"
refuses "quality: a task without an answer" "bad.jsonl:1" "$build/quality" --model "$model" --tasks "$tmp/bad.jsonl"
printf '{"context": "a", \n' > "$tmp/broken.jsonl"
refuses "quality: a broken JSON line" "broken.jsonl:1" "$build/quality" --model "$model" --tasks "$tmp/broken.jsonl"
refuses "quality: missing task file" "cannot read" "$build/quality" --model "$model" --tasks "$tmp/none.jsonl"
refuses "quality: an unknown policy" "unknown policy" "$build/quality" --model "$model" \
    --tasks examples/demo/lighthouse.jsonl --policies full,nosuch
refuses "quality: a budget of 1" "budgets must be fractions" "$build/quality" --model "$model" \
    --tasks examples/demo/lighthouse.jsonl --policies kvec --budgets 1
refuses "quality: an unknown setting" "unknown setting" "$build/quality" --model "$model" \
    --tasks examples/demo/lighthouse.jsonl --settings agnostic,sideways

# K-VEC options in a policy name (text_policy_parse): each bad one refused
# with a message that names what is wrong.
for bad in "kvec:mu=0|mu must be" "kvec:mu=-1|mu must be" "kvec:mu=x|mu must be" "kvec:beta=2|beta must be" \
    "kvec:gamma|not key=value" "kvec:colour=red|unknown option" "kvec:terms=uniqueness+sideways|unknown term" \
    "kvec:terms=none+uniqueness|goes alone" "snapkv:mu=2|K-VEC weight" "snapkv:terms=uniqueness|K-VEC's" \
    "kvec:budget=wide|unknown budget" "kvec:budget=global:terms=cross-layer|refuses this combination" \
    "kvec:budget=adaptive:terms=cross-head|refuses this combination" "kvzip:window=0|whole number" \
    "snapkv:window=5000|whole number" "kvzip:window=8.5|whole number" "kvzip-kvec:beta=0.5|only mu and budget"; do
    refuses "quality: policy option ${bad%%|*}" "${bad#*|}" "$build/quality" --model "$model" \
        --tasks examples/demo/lighthouse.jsonl --policies "full,${bad%%|*}"
done
refuses "generate: a bad policy option" "unknown term" "$build/generate" --model "$model" --policy kvec:terms=all \
    --question "Who?" --prompt-file examples/demo/lighthouse.txt
"$build/quality" --model "$model" --tasks examples/demo/lighthouse.jsonl --limit 1 \
    --policies kvec:mu=2:terms=uniqueness+rank-union+cross-layer:gamma=1 --budgets 0.5 --settings agnostic,aware \
    --max-tokens 8 --per-sample > "$tmp/per-sample.txt" 2> /dev/null
check "quality --tasks --per-sample: a K-VEC variant by name, one 0/1 line per sample and setting" \
    $(awk '$1 == "per-sample" {n++; if ($2 != 1 || $4 != "kvec:mu=2:terms=uniqueness+rank-union+cross-layer:gamma=1" || \
($6 != 0 && $6 != 1)) bad = 1} END {exit bad || n != 2}' "$tmp/per-sample.txt"; echo $?)

# Held text: next-token KL to the full cache (build/quality --kl).
python3 -c "import json; t=open('examples/demo/lighthouse.txt').read(); \
print(json.dumps({'text': t, 'prefix': 160, 'forced': 8}))" > "$tmp/kl.jsonl"
"$build/quality" --model "$model" --kl "$tmp/kl.jsonl" \
    --policies full,kvec,snapkv,kvec:mu=1:terms=uniqueness+rank-union,kvec:terms=none --budgets 0.4,0.99 \
    --out "$tmp/kl.json" > "$tmp/kl.txt" 2> /dev/null
check "quality --kl runs a sample file" $?
check "quality --kl: RESULT.json: full at KL 0 and top-1 1; KL >= 0, top-1 in [0, 1]; kvec's paired difference 0" \
    $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['samples'] == 1 and r['forced'] == [8, 8]; \
assert r['kl']['full']['1.0'] == 0 and r['top1']['full']['1.0'] == 1; \
assert all(0 <= r['kl'][p][b] and 0 <= r['top1'][p][b] <= 1 for p in ('kvec', 'snapkv') for b in ('0.4', '0.99')); \
assert r['kl_minus_kvec']['kvec']['0.4'] == 0 and len(r['per_sample_kl']['snapkv']['0.4']) == 1" "$tmp/kl.json" 2> /dev/null; echo $?)
check "quality --kl: K-VEC options by name: the default spelled out is kvec, terms=none is snapkv" \
    $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); k=r['per_sample_kl']; \
assert all(k['kvec:mu=1:terms=uniqueness+rank-union'][b] == k['kvec'][b] and k['kvec:terms=none'][b] == k['snapkv'][b] \
for b in ('0.4', '0.99'))" "$tmp/kl.json" 2> /dev/null; echo $?)
check "quality --kl: dropping one token in 160 moves the distributions less than dropping 60%" \
    $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); \
assert all(r['kl'][p]['0.99'] < r['kl'][p]['0.4'] for p in ('kvec', 'snapkv'))" "$tmp/kl.json" 2> /dev/null; echo $?)
# Eviction during decoding (--decode): the cache held at the budget while
# the forced tokens run in groups; budgets that are not uniform are left out.
"$build/quality" --model "$model" --kl "$tmp/kl.jsonl" --decode 4 \
    --policies full,kvec,kvec:share=0.25,streaming,h2o,pyramidkv --budgets 0.5 \
    --out "$tmp/kl-decode.json" > "$tmp/kl-decode.txt" 2> "$tmp/kl-decode.err"
check "quality --kl --decode runs, and says which policies it leaves out" \
    $([ $? -eq 0 ] && grep -q "left out: pyramidkv" "$tmp/kl-decode.err"; echo $?)
check "quality --kl --decode: grouping alone moves nothing (full under 1e-6 nats); the default spelled with share=0.25 is kvec" \
    $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['decode_every'] == 4; \
assert 0 <= r['kl']['full']['1.0'] < 1e-6 and 'pyramidkv' not in r['kl']; \
assert r['per_sample_kl']['kvec:share=0.25']['0.5'] == r['per_sample_kl']['kvec']['0.5']; \
assert all(r['kl'][p]['0.5'] >= 0 for p in ('kvec', 'streaming', 'h2o'))" "$tmp/kl-decode.json" 2> /dev/null; echo $?)
refuses "quality --kl: --decode 0" "decode" "$build/quality" --model "$model" --kl "$tmp/kl.jsonl" --decode 0
refuses "quality --kl: --decode with only non-uniform budgets" "no policy left" "$build/quality" --model "$model" \
    --kl "$tmp/kl.jsonl" --decode 4 --policies pyramidkv,kvec-global --budgets 0.5
refuses "quality: a rank-union share of 1" "share must be in (0, 1)" "$build/quality" --model "$model" \
    --kl "$tmp/kl.jsonl" --policies kvec:share=1 --budgets 0.5
printf '{"text": "Some words.", "prefix": 8}\n' > "$tmp/kl-noforced.jsonl"
refuses "quality --kl: a sample without forced" "kl-noforced.jsonl:1" "$build/quality" --model "$model" --kl "$tmp/kl-noforced.jsonl"
printf '{"text": "Some words.", "prefix": 8.5, "forced": 4}\n' > "$tmp/kl-half.jsonl"
refuses "quality --kl: a prefix that is not a whole number" "kl-half.jsonl:1" "$build/quality" --model "$model" --kl "$tmp/kl-half.jsonl"
printf '{"text": "", "prefix": 8, "forced": 4}\n' > "$tmp/kl-empty.jsonl"
refuses "quality --kl: an empty text" "kl-empty.jsonl:1" "$build/quality" --model "$model" --kl "$tmp/kl-empty.jsonl"
printf '{"text": "Some words.", "prefix": 8, "forced": 2000}\n' > "$tmp/kl-long.jsonl"
refuses "quality --kl: forced past 1024" "kl-long.jsonl:1" "$build/quality" --model "$model" --kl "$tmp/kl-long.jsonl"
printf 'not json\n' > "$tmp/kl-broken.jsonl"
refuses "quality --kl: a broken JSON line" "kl-broken.jsonl:1" "$build/quality" --model "$model" --kl "$tmp/kl-broken.jsonl"
printf '{"text": "Only a few words here.", "prefix": 400, "forced": 8}\n' > "$tmp/kl-short.jsonl"
refuses "quality --kl: a text shorter than prefix + forced" "fewer than prefix + forced" "$build/quality" --model "$model" \
    --kl "$tmp/kl-short.jsonl" --policies kvec --budgets 0.5
refuses "quality --kl: a budget that keeps only the window" "no more than the window" "$build/quality" --model "$model" \
    --kl "$tmp/kl.jsonl" --policies kvec --budgets 0.1
refuses "quality --kl: missing sample file" "cannot read" "$build/quality" --model "$model" --kl "$tmp/none.jsonl"
refuses "quality --kl: a bad --limit" "limit" "$build/quality" --model "$model" --kl "$tmp/kl.jsonl" --limit many
refuses "quality --kl: an unknown flag" "usage" "$build/quality" --model "$model" --kl "$tmp/kl.jsonl" --forced 3

# Bad files.
head -c 1000000 "$model" > "$tmp/truncated.gguf"
refuses "truncated GGUF" "truncated\|past the end" "$build/generate" --model "$tmp/truncated.gguf" --tokenize
head -c 100 /dev/urandom > "$tmp/noise.gguf"
refuses "not a GGUF" "not a GGUF" "$build/generate" --model "$tmp/noise.gguf" --tokenize
refuses "missing file" "cannot open" "$build/generate" --model "$tmp/absent.gguf" --tokenize
for seed in tests/corpus/gguf/*.gguf; do
    refuses "a GGUF without model tensors ($seed)" "tensor\|architecture" "$build/generate" --model "$seed" --tokenize
done
: > "$tmp/empty.gguf"
refuses "empty file" "not a GGUF" "$build/generate" --model "$tmp/empty.gguf" --tokenize

# Bad prompts.
printf 'caf\xe9 au lait' > "$tmp/latin1.txt"
STDIN=$tmp/latin1.txt refuses "invalid UTF-8 prompt" "UTF-8" "$build/generate" --model "$model" --policy none
awk 'BEGIN { for (i = 0; i < 9000; i++) printf "word "; }' > "$tmp/long.txt"
refuses "prompt past the model's context" "context" "$build/generate" --model "$model" --prompt-file "$tmp/long.txt"
refuses "missing prompt file" "cannot open" "$build/generate" --model "$model" --prompt-file "$tmp/none.txt"

# Bad flags.
refuses "--budget 2" "budget" "$build/generate" --model "$model" --budget 2
refuses "--budget abc" "budget" "$build/generate" --model "$model" --budget abc
refuses "unknown policy" "unknown policy" "$build/generate" --model "$model" --policy nope
refuses "unknown flag" "usage" "$build/generate" --model "$model" --frobnicate 1
refuses "flag without its value" "usage" "$build/generate" --model "$model" --budget
refuses "demo: bad budget list" "budgets" "$build/demo" --model "$model" --budgets 0.5,x
refuses "demo: unknown policy" "unknown policy" "$build/demo" --model "$model" --policies kvec,nope
printf 'no tab here\n' > "$tmp/q.tsv"
refuses "demo: malformed questions file" "question" "$build/demo" --model "$model" --questions "$tmp/q.tsv"
refuses "demo: missing document" "cannot read" "$build/demo" --model "$model" --document "$tmp/none.txt"

# Retention gates distilled against the full cache (build/train_gates): the
# gradient the training follows against central differences, a few steps
# on the demo's document, and the file they write read back by the engine.
out=$(OMP_NUM_THREADS=1 "$build/train_gates" --model "$model" --corpus examples/demo/lighthouse.txt --out "$tmp/g.kvs" \
      --windows 2 --chars 1500 --check-gradient 2> /dev/null)
check "train_gates: the analytic gradient matches central differences ($(echo "$out" | tail -1))" \
    $(echo "$out" | tail -1 | grep -q ": ok$"; echo $?)
out=$("$build/train_gates" --model "$model" --corpus examples/demo/lighthouse.txt --out "$tmp/g.kvs" \
      --windows 2 --chars 1500 --steps 4 --capacity 64 2> /dev/null)
check "train_gates: a short training writes a gate file" $([ -s "$tmp/g.kvs" ] && echo "$out" | grep -q "^wrote"; echo $?)
out=$("$build/generate" --model "$model" --prompt-file examples/demo/lighthouse.txt --scorer "$tmp/g.kvs" \
      --question "What was the name of Agnes Pellow's dog?" --policy learned --budget 0.25 --max-tokens 8 2> /dev/null)
check "generate evicts by the gates' decayed retention" $(echo "$out" | grep -q "policy learned: [0-9]* of [0-9]* prompt tokens kept"; echo $?)
refuses "train_gates: a corpus that is missing" "cannot read" \
    "$build/train_gates" --model "$model" --corpus "$tmp/none.txt" --out "$tmp/g2.kvs"
refuses "train_gates: windows that would overlap" "overlap" \
    "$build/train_gates" --model "$model" --corpus examples/demo/lighthouse.txt --out "$tmp/g2.kvs" --windows 20
refuses "train_gates: a bad capacity" "usage" \
    "$build/train_gates" --model "$model" --corpus examples/demo/lighthouse.txt --out "$tmp/g2.kvs" --capacity 0

echo "test_cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
