#!/usr/bin/env bash
# The GPU rows of every benchmark, on random-weight Llama models of real shapes (speed only:
# the values mean nothing, the agreement checks still run), one after the other, each row's
# output in OUT/<row>.log and its results in OUT/<shape>/*.json, the time of each row in
# OUT/times.txt.
#
#   bench/gpu.sh                # one GPU: the Llama-3.2-1B and Llama-3.1-8B shapes, bf16/fp16
#   bench/gpu.sh --tiny         # the same rows on the CPU with a tiny shape (what the tests run)
#   bench/gpu.sh --out DIR      # where results go (bench/results/gpu, or bench/results/tiny)
#
# Sized to finish in under 8 minutes on one H100/H200 (model builds and loads included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
mode=gpu
out=
while [ $# -gt 0 ]; do
    case $1 in
        --tiny) mode=tiny ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        *) sed -n '2,11p' "$0" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-bench/results/$mode}
mkdir -p "$out"
: > "$out/times.txt"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

row() {  # row NAME COMMAND...: run one benchmark, keep its output and its time
    local name=$1 start=$SECONDS
    shift
    echo "== $name: $*"
    "$@" > "$out/$name.log" 2>&1 || { tail -20 "$out/$name.log" >&2; echo "$name failed" >&2; exit 1; }
    tail -12 "$out/$name.log"
    echo "$name $((SECONDS - start)) s" >> "$out/times.txt"
}

if [ "$mode" = gpu ]; then
    device=cuda shapes="llama-1b llama-8b" engines=hf,vllm
    problems=64 prompts=16 tokens=64 questions=16 pool=50 tests=10 shards=2
    pretrain=(--llm-size llama-16-16 --steps 150 --warmup-steps 20)
else
    device=cpu shapes=tiny engines=hf
    problems=8 prompts=2 tokens=4 questions=2 pool=6 tests=2 shards=2
    pretrain=(--llm-size llama-1-1 --steps 50 --warmup-steps 1 --batch-size 8)  # one 50-step chunk
fi

for shape in $shapes; do
    export ENTRAIN_BENCH_RESULTS="$out/$shape"
    model="$out/models/$shape"
    row "model-$shape" "$PY" bench/random_model.py "$shape" "$model" --device "$device"
    row "probe-$shape" "$PY" bench/bench_probe.py --model "$model" --device "$device" \
        --n-problems "$problems" --repeats 2
    row "correlate-$shape" "$PY" bench/bench_correlate.py --model "$model" --device "$device" \
        --engines "$engines" --n-prompts "$prompts" --max-tokens "$tokens" --check-tokens "$tokens"
    row "samples-$shape" "$PY" bench/bench_samples.py --model "$model" --device "$device" \
        --engines "$engines" --n-prompts "$prompts" --max-tokens "$tokens" --shots 2 \
        --repeats 1 --skip-probe
    row "robustness-$shape" "$PY" bench/bench_robustness.py --model "$model" --device "$device" \
        --n-questions "$questions"
    row "cot-$shape" "$PY" bench/bench_cot.py --model "$model" --device "$device" \
        --n-pool "$pool" --n-test "$tests" --repeats 1
    row "longreason-$shape" "$PY" bench/bench_longreason.py --model "$model" --device "$device" \
        --splits 8k --repeats 1
    row "scaling-$shape" "$PY" bench/bench_scaling.py --model "$model" --device "$device" \
        --shards "$shards" --n-problems "$problems" --max-tokens "$tokens"
    rm -rf "$model"  # an 8B model is 16 GB of disk
done
export ENTRAIN_BENCH_RESULTS="$out/pretrain"
row pretrain "$PY" bench/bench_pretrain.py --device "$device" "${pretrain[@]}"
echo "== times"
cat "$out/times.txt"
