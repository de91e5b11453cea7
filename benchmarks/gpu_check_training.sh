#!/usr/bin/env bash
# One prepared GPU check of the pipeline with the real SmolLM2-135M-Instruct student (run it on a CUDA
# machine; CI never does). Each step is a plain `python -m exp3rt` command under one shared deadline,
# so a slow step cannot starve the ones after it of a report:
#   method_gpu    experiment=method_cpu on one GPU (bf16, larger batches, more steps): the reasoning
#                 student against biased MF, both readouts, reranking LightGCN's top-20
#   zero2_bf16    DeepSpeed ZeRO-2, bf16, 1 GPU (a few steps, resumable checkpoint written)
#   zero3_bf16    DeepSpeed ZeRO-3, bf16, with validation generation (parameters gathered to generate)
#   zero2_fp16    DeepSpeed ZeRO-2 with fp16 loss scaling (fp16 needs a GPU)
#   release_imdb  the release preset (teacher=release, seeded 70/10/20 split, 1-10 written 0-9) with SmolLM2
#                 on the published layout (RELEASE_DIR=the release's data/ folder; else a made-up copy: a path
#                 check, not a score)
#   method_gpu_no_reasoning   the same budget without reasoning (the paper's ablation)
#
#   SMOLLM2_DIR=artifacts/models/smollm2-135m-instruct RELEASE_DIR=/path/to/EXP3RT/data \
#     bash benchmarks/gpu_check_training.sh [gpu|cpu] [seconds]
# `cpu` runs the same commands with a handful of steps on CPU (DeepSpeed steps as dry runs) to check
# that they compose before GPU time is spent. Writes summary.txt and results.tgz (logs, metrics.json
# of each run) into $OUT.
set -u
MODE=${1:-gpu}
BUDGET=${2:-540}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/exp3rt_gpu_check/out}
WORK=${WORK:-/tmp/exp3rt_gpu_check}
SMOL=${SMOLLM2_DIR:-$ROOT/artifacts/models/smollm2-135m-instruct}
RELEASE=${RELEASE_DIR:-/nonexistent}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK/logs" "$WORK/runs"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HYDRA_FULL_ERROR=1

if [ "$MODE" = cpu ]; then
  HW="trainer=cpu"; METHOD_STEPS=2; METHOD_BATCH=4; DEMO_STEPS=2; DS_STEPS=2; PAIRS=4; DS_DRY="dry_run=true"; REL_EPOCHS=1; GEN_BATCH=4; USERS=2
else
  HW="trainer=gpu"; METHOD_STEPS=${METHOD_STEPS:-300}; METHOD_BATCH=32; DEMO_STEPS=${DEMO_STEPS:-400}; DS_STEPS=30; PAIRS=${PAIRS:-200}; DS_DRY=""; REL_EPOCHS=4; GEN_BATCH=64; USERS=${USERS:-100}
fi
COMMON=(paths.artifacts_dir="$WORK/artifacts" student.model_path="$SMOL" logger.wandb=false progress=false)
DEMO=(experiment=demo_smollm train.micro_batch_size=8 train.warmup_steps=20 trainer.log_every_n_steps=20
      eval.max_pairs=$PAIRS eval.batch_size=$GEN_BATCH eval.rerank_max_users=$USERS)  # reasoning budget: from training

step() {  # step NAME MAX_SECONDS ARGS... : run one pipeline command under the shared deadline
  local name=$1 limit=$2; shift 2
  local now left t0 rc
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  now=$(date +%s); left=$((DEADLINE - now - 5))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 25 ]; then echo "$name skipped (no time left)" | tee -a "$OUT/summary.txt"; return; fi
  t0=$(date +%s)
  timeout -k 5 "$limit" "$PY" -m exp3rt "${COMMON[@]}" hydra.run.dir="$WORK/runs/$name" "$@" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc wall=$(( $(date +%s) - t0 ))s limit=${limit}s" | tee -a "$OUT/summary.txt"
  [ -f "$WORK/runs/$name/metrics.json" ] && cp "$WORK/runs/$name/metrics.json" "$WORK/logs/$name.metrics.json"
  grep -E "^\|" "$WORK/logs/$name.log" | tail -n 20 >>"$OUT/summary.txt"
  [ "$rc" -ne 0 ] && tail -n 15 "$WORK/logs/$name.log" | sed 's/^/    /' >>"$OUT/summary.txt"
}

{ echo "mode=$MODE budget=${BUDGET}s $(date -u +%FT%TZ)"
  "$PY" -c "import torch,transformers,peft,pytorch_lightning as pl;print('torch',torch.__version__,'cuda',torch.cuda.is_available(),torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-','transformers',transformers.__version__,'peft',peft.__version__,'lightning',pl.__version__)" 2>&1 | tail -n 1
} | tee "$OUT/summary.txt"

METHOD=(experiment=method_cpu $HW train.micro_batch_size=$METHOD_BATCH trainer.max_steps=$METHOD_STEPS
        eval.max_pairs=$PAIRS eval.batch_size=$GEN_BATCH eval.rerank_max_users=$USERS)
step method_gpu ${METHOD_LIMIT:-300} "${METHOD[@]}"
step zero2_bf16 80 "${DEMO[@]}" stages=[train] trainer=deepspeed_zero2 trainer.devices=1 trainer.max_steps=$DS_STEPS $DS_DRY
# experiment=release_imdb on the published layout: the real release when RELEASE_DIR names its data/ folder,
# else the made-up copy of that layout the tests use (tests/release_layout.py)
if [ ! -f "$RELEASE/imdb/rating_bias/test_helpful.json" ]; then
  RELEASE="$WORK/release"; rm -rf "$RELEASE"
  "$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); from release_layout import write_release; write_release(Path('$RELEASE'), n_users=60, variants=True)"
  echo "release_imdb on the made-up layout (tests/release_layout.py): set RELEASE_DIR=/path/to/EXP3RT/data for the real one" | tee -a "$OUT/summary.txt"
fi
step release_imdb 100 experiment=release_imdb student=smollm2_135m student.model_path="$SMOL" peft=lora $HW \
  student.quantization=null dataset.path="$RELEASE/imdb" \
  train.batch_size=8 train.micro_batch_size=4 train.val_generate=false trainer.max_epochs=$REL_EPOCHS \
  eval.batch_size=16
step zero3_bf16 ${ZERO3_LIMIT:-130} "${DEMO[@]}" stages=[train] trainer=deepspeed_zero3 trainer.devices=1 trainer.max_steps=$DS_STEPS \
  train.val_generate=true train.val_generate_samples=8 deepspeed.gather_for_generation=true $DS_DRY
step zero2_fp16 70 "${DEMO[@]}" stages=[train] trainer=deepspeed_zero2 trainer.devices=1 trainer.precision=16-mixed \
  trainer.max_steps=$DS_STEPS $DS_DRY
step method_gpu_no_reasoning 150 "${METHOD[@]}" ablation=no_reasoning

echo "total $(( $(date +%s) - START ))s" | tee -a "$OUT/summary.txt"
for d in "$WORK"/artifacts/students/*/; do  # each student's loss curve and train summary
  [ -f "$d/csv/version_0/metrics.csv" ] && cp "$d/csv/version_0/metrics.csv" "$WORK/logs/$(basename "$d").train.csv"
  [ -f "$d/train.json" ] && cp "$d/train.json" "$WORK/logs/$(basename "$d").train.json"
done
find "$WORK/runs" -name "report.md" -path "*method_gpu*" -exec cp {} "$WORK/logs/" \; 2>/dev/null
tar -C "$WORK" -czf "$OUT/results.tgz" logs
