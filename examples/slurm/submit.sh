#!/bin/bash
# Run one study as N shards on a SLURM cluster, then merge them:
#   examples/slurm/submit.sh N GPUS_PER_SHARD OUT STUDY [OPTIONS...]
# e.g. four shards on one GPU each:
#   examples/slurm/submit.sh 4 1 /scratch/rankmath qa rankmath --model Qwen/Qwen2.5-7B-Instruct
# or a 70B model, tensor parallel over 4 GPUs in each of 2 shards:
#   examples/slurm/submit.sh 2 4 /scratch/correlate correlate --model meta-llama/Llama-3.1-70B \
#       --engine vllm --dtype bfloat16 --limit 1000
# The merge job starts when every shard succeeded (afterok); OUT/merged is the run.
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n '2,11p' "$0" >&2
    exit 2
fi
n=$1 gpus=$2 out=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
array=$(sbatch --parsable --array=0-$((n - 1)) --gres=gpu:"$gpus" \
    "$here/shard.sbatch" "$out" "$@")
merge=$(sbatch --parsable --dependency=afterok:"$array" --gres=gpu:"$gpus" \
    "$here/merge.sbatch" "$out")
echo "shards: job $array (array 0-$((n - 1))), merge: job $merge -> $out/merged"
