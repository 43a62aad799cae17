#!/usr/bin/env bash
# One prepared GPU run for a lent CUDA machine (torch 2.11 + triton 3.6 there), under 8 minutes, every part writing
# its files to $OUT as it finishes. The machine has no diffusers: carry its wheel (prepare once here:
# `echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
# --implementation cp --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1`, then run with carry [".whl"]);
# step 4 installs it into /tmp/site.
#   1) env.json: GPU, torch, triton;
#   2) tests.txt + tests.xml: the Triton kernel tests on the GPU (interpreter cases + `gpu`-marked large shapes);
#   3) bench_*.json, bench.txt: block-sparse vs dense SDPA (flash) vs compiled flex, and the build kernel, at
#      B=1 H=40 D=128 bf16, N in {32760, 75600}, density 0.1/0.2/0.3 (scripts/gpu_bench.py, one process);
#   4) bench_dlm.json: diffusion-LM sampling dense vs sparse at 16k and 64k tokens.
# `--dry-run` (run by CI on CPU, tests/test_gpu_check.py): the same steps in Triton's interpreter with tiny shapes and
# no nvidia-smi, so imports, arguments and output files are checked on every commit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
export HF_HUB_OFFLINE=1 TRITON_DEFAULT_FP_FUSION=1
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1 DEVICE=cpu
  T_TESTS=300; T_BENCH=240; T_DLM=240
  BENCH_ARGS=(--device cpu --seq-lens 256 --densities 0.5 --heads 2 --head-dim 64 --block-size 64 --dtype float32 --backends dense,triton,gather,build --repeats 1)
  DLM_ARGS=(--device cpu --dtype float32 --context 256 --heads 2 --head-dim 32 --layers 1 --gen-length 32 --steps 2)
  TESTS=(tests/test_triton_kernels.py -k "test_block_sparse_kernel_matches_float64 and b1h2")
else
  unset TRITON_INTERPRET
  export DEVICE=cuda
  T_TESTS=150; T_BENCH=240; T_DLM=60
  BENCH_ARGS=(--device cuda --budget-s 200)
  DLM_ARGS=(--device cuda --dtype bfloat16 --context 16384,65536 --heads 32 --head-dim 128 --layers 2 --gen-length 128 --steps 16)
  TESTS=(tests/test_triton_kernels.py)
fi

if [ "$DRY" = 1 ] && ! "$PY" -c "import triton, pytest" 2>/dev/null; then
  echo "the dry run needs triton and pytest: pip install '.[test]'" >&2; exit 2
fi

# 1) environment
"$PY" - "$OUT/env.json" "$DRY" <<'PYEOF'
import json, subprocess, sys
import torch
info = {"dry_run": sys.argv[2] == "1", "torch": torch.__version__, "cuda": torch.version.cuda}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError as exc:
    info["triton"] = f"missing: {exc}"
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["capability"] = list(torch.cuda.get_device_capability(0))
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                                        capture_output=True, text=True).stdout
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info))
PYEOF

# 2) kernel tests on the device (one pinned config per shape: no autotuning across dozens of test shapes)
"$PY" -c "import pytest" 2>/dev/null || "$PY" -m pip install -q pytest > "$OUT/install.log" 2>&1  # bare GPU image
SPARSE_DIFFUSION_TRITON_CONFIG="num_warps=4,num_stages=2" timeout "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider \
  "${TESTS[@]}" --junitxml="$OUT/tests.xml" > "$OUT/tests.txt" 2>&1
echo "tests exit $?" | tee -a "$OUT/tests.txt"; tail -5 "$OUT/tests.txt"

# 3) attention benchmark (autotuned kernels), JSON per point as it finishes
timeout "$T_BENCH" "$PY" scripts/gpu_bench.py --out "$OUT" "${BENCH_ARGS[@]}" > "$OUT/bench.txt" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench.txt"; grep -E "summary|budget|error" "$OUT/bench.txt" | tail -8

# 4) diffusion-LM sampling (accelerate_model: needs diffusers, from the carried wheels when the image lacks it)
if ! "$PY" -c "import diffusers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$OUT/install.log" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# diffusion-LM sampling, dense vs sparse (random LLaDA-8B-like heads, 20% top-k density)
timeout "$T_DLM" "$PY" -m sparse_diffusion.cli bench dlm "${DLM_ARGS[@]}" --density 0.2 --json "$OUT/bench_dlm.json" \
  > "$OUT/bench_dlm.txt" 2>&1
echo "dlm exit $?" | tee -a "$OUT/bench_dlm.txt"; tail -4 "$OUT/bench_dlm.txt"
echo "done" | tee "$OUT/done.txt"
