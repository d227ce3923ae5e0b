#!/usr/bin/env bash
# The benchmarks on a GPU machine: bfloat16 compute with float32 parameters where a model
# trains or predicts, float32 for the attention-memory comparison (its 1e-5 check).
#
#   bash benchmarks/gpu.sh [OUTDIR]        # default OUTDIR: benchmarks/results-gpu
#
# Needs jax with CUDA, flax, optax, orbax; compare_torch.py also needs torch (CUDA) and timm
# (pip install timm, or put its source on PYTHONPATH). No TensorFlow is needed. Each table is
# printed and kept in OUTDIR/<script>.txt beside the GPU's name (nvidia-smi).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results-gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Allocate on demand so that peak-memory numbers are what a call uses, and so that the JAX and
# PyTorch processes of compare_torch.py do not compete for a preallocated pool.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
python=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$python" -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$out/gpu.txt"

# Parameters, FLOPs and the train step's fraction of the bf16 matmul peak (a Cityscapes crop,
# batch 8 as the recipe's global batch).
"$python" benchmarks/flops.py --dtype bfloat16 --mfu-size 512x1024 --mfu-batch 8 \
  --matmul-size 8192 --repeats 10 | tee "$out/flops.txt"
# and Swin-T UPerNet's (an ADE20K crop, batch 16 as its recipe's global batch)
"$python" benchmarks/flops.py --models upernet_swin_t --mfu-model upernet_swin_t \
  --num-classes 150 --dtype bfloat16 --mfu-size 512x512 --mfu-batch 16 \
  --matmul-size 8192 --repeats 10 | tee "$out/flops_swin_t.txt"

if "$python" -c "import torch, timm; assert torch.cuda.is_available()" 2>/dev/null; then
  "$python" benchmarks/compare_torch.py --device gpu --dtype bfloat16 --batches 2,8 \
    --repeats 10 | tee "$out/compare_torch.txt"
else
  echo "compare_torch.py skipped: needs torch with CUDA and timm" | tee "$out/compare_torch.txt"
fi

"$python" benchmarks/attention_memory.py --repeats 5 | tee "$out/attention_memory.txt"
# the big models' train step per device, plain / remat / scanned (compiled, not run; the fsdp
# rows need 8 devices: on the CPU's simulated ones, benchmarks/big_models.py without --variants)
"$python" benchmarks/big_models.py \
    --variants "plain;transformer=dots;transformer=nothing;transformer=nothing,head=nothing" \
    | tee "$out/big_models.txt"
"$python" benchmarks/whole_image.py --sizes 512x1024,1024x2048 | tee "$out/whole_image.txt"
