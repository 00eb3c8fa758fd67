#!/usr/bin/env bash
# GPU readiness check (issue 16): train with AMP on CUDA, export fp16 (and fp32), predict with ONNX
# Runtime's CUDA provider and with PyTorch on CUDA, and print the figures and any fallback to the CPU.
#
# Every step asks for --device auto, so a missing GPU or CUDA library shows as a FALLBACK line (the step
# still runs, on the CPU) rather than as a failure.
#
# Usage: bash benchmarks/gpu_check.sh [DATA] [WORK]
#   DATA: a class-per-folder image tree or an ingested data set (default: sample_data)
#   WORK: where the run, exports and predictions go (default: runs/gpu_check)
# Environment: VPT (default: "python -m vptcli"), EPOCHS (default 10), NPROC (default: 1; >1 also trains
# with torchrun on NPROC GPUs and compares the prompt files).
# Exit code: 0 when every step ran on the GPU, 1 when one fell back to the CPU, 2 when a step failed.

set -euo pipefail

DATA=${1:-sample_data}
WORK=${2:-runs/gpu_check}
VPT=${VPT:-python -m vptcli}
EPOCHS=${EPOCHS:-10}
NPROC=${NPROC:-1}
fallback=0

say() { printf '\n== %s\n' "$*"; }
step() {  # step NAME CMD...: run, keep its output in WORK/NAME.log, print it, fail with exit 2
  local name=$1; shift
  say "$name: $*"
  local t0=$SECONDS
  if ! "$@" > "$WORK/$name.log" 2>&1; then
    cat "$WORK/$name.log"; echo "FAILED: $name"; exit 2
  fi
  cat "$WORK/$name.log"
  echo "$name: $((SECONDS - t0)) s"
}

mkdir -p "$WORK"
rm -rf "$WORK/data" "$WORK/run" "$WORK/run_ddp" "$WORK/export_fp16" "$WORK/export_fp32"

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "no nvidia-smi: no GPU here"; exit 2; }
python - <<'EOF'
import onnxruntime as ort, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("onnxruntime", ort.__version__, "providers", ort.get_available_providers())
EOF

# shellcheck disable=SC2086  # $VPT is a command line on purpose
step ingest $VPT ingest "$DATA" --out "$WORK/data"
# shellcheck disable=SC2086
step train $VPT train "$WORK/data" --out "$WORK/run" --method vpt-deep --device auto --amp --epochs "$EPOCHS" --batch-size 32
grep -E "cuda|bf16|float16|bfloat16" "$WORK/train.log" > /dev/null || { echo "FALLBACK: training did not report CUDA/AMP"; fallback=1; }

if [ "$NPROC" -gt 1 ]; then
  # Data-parallel training on NPROC GPUs (NCCL); its prompt file should equal the one-GPU run's within AMP noise.
  step train_ddp torchrun --nproc-per-node "$NPROC" -m vptcli train "$WORK/data" --out "$WORK/run_ddp" --method vpt-deep \
    --device cuda --amp --epochs "$EPOCHS" --batch-size 32
  python - "$WORK/run/prompts.safetensors" "$WORK/run_ddp/prompts.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
print("max |one GPU - DDP| per tensor:", {k: float((a[k] - b[k]).abs().max()) for k in a})
EOF
fi

# shellcheck disable=SC2086
step export_fp16 $VPT export "$WORK/run" --out "$WORK/export_fp16" --fp16
# shellcheck disable=SC2086
step export_fp32 $VPT export "$WORK/run" --out "$WORK/export_fp32"

for what in export_fp16 export_fp32; do
  # shellcheck disable=SC2086
  step "predict_onnx_${what#export_}" $VPT predict "$WORK/$what" "$DATA" --device auto --batch-size 32 \
    --out "$WORK/predictions_${what#export_}.csv"
  if ! grep -q "CUDAExecutionProvider" "$WORK/predict_onnx_${what#export_}.log"; then
    echo "FALLBACK: ONNX Runtime did not run on CUDAExecutionProvider (${what})"; fallback=1
  fi
done
# shellcheck disable=SC2086
step predict_torch $VPT predict "$WORK/run" "$DATA" --backend torch --device auto --batch-size 32 --out "$WORK/predictions_torch.csv"
grep -q "cuda" "$WORK/predict_torch.log" || { echo "FALLBACK: PyTorch did not predict on CUDA"; fallback=1; }

say "figures"
python - "$WORK" <<'EOF'
import csv, sys
from pathlib import Path
work = Path(sys.argv[1])
rows = {k: list(csv.DictReader(open(work / f"predictions_{k}.csv", newline=""))) for k in ("torch", "fp32", "fp16")}
n = len(rows["torch"])
for k in ("fp32", "fp16"):
    agree = sum(a["label"] == b["label"] for a, b in zip(rows["torch"], rows[k]))
    dconf = max((abs(float(a["confidence"] or 0) - float(b["confidence"] or 0)) for a, b in zip(rows["torch"], rows[k])), default=0)
    print(f"ONNX {k} vs PyTorch on {n} files: labels agree {agree}/{n}, max |confidence change| {dconf:.4f}")
for line in (work / "train.log").read_text().splitlines()[-8:]:
    print("train:", line)
EOF
grep -h -E "img/s|parity|files:" "$WORK"/*.log || true

if [ "$fallback" -ne 0 ]; then echo "RESULT: a step fell back to the CPU (see FALLBACK lines)"; exit 1; fi
echo "RESULT: every step ran on the GPU"
