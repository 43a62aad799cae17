#!/usr/bin/env bash
# One prepared GPU run for a lent CUDA machine (torch + triton there, no diffusers): < 10 minutes.
# 1) installs this package without dependencies (the kernels and ops need only torch + triton),
# 2) runs the Triton kernel tests on the GPU (same cases as the interpreter tests, plus `gpu`-marked large shapes),
# 3) runs the kernel benchmark (Wan-14B-like heads) and writes tables + JSON to $OUT (or ./gpu-results),
# 4) times diffusion-LM sampling dense vs sparse at 16k and 64k tokens (`sparse-diffusion bench dlm`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python -m pip install -q --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1 || echo "pip install failed" | tee -a "$OUT/gpu.txt"
python -m pip install -q pytest >> "$OUT/install.log" 2>&1 || true

timeout 240 python -m pytest -q tests/test_triton_kernels.py -x -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/tests.txt"

for N in 32760 75600; do
  for D in 0.1 0.2 0.3; do
    timeout 90 python scripts/bench_attention.py --device cuda --dtype bfloat16 --batch 1 --heads 40 --head-dim 128 \
      --seq-len "$N" --density "$D" --block-size 128 --backends dense,flash_attn,triton,flex,build --repeats 5 \
      --json "$OUT/bench_N${N}_d${D}.json" 2>&1 | tee -a "$OUT/bench.txt"
  done
done
# 4) diffusion-LM sampling, dense vs sparse (random LLaDA-8B-like heads: 32 x 128, fixed 20% top-k density), 16k and
#    64k canvas; without diffusers the bench attaches the controller with plain torch hooks
timeout 180 python -m sparse_diffusion.cli bench dlm --device cuda --dtype bfloat16 --context 16384,65536 --heads 32 \
  --head-dim 128 --layers 2 --gen-length 128 --steps 16 --density 0.2 --json "$OUT/bench_dlm.json" 2>&1 \
  | tee "$OUT/bench_dlm.txt"
echo "done" | tee -a "$OUT/gpu.txt"
