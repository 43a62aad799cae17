"""GPU readiness without a GPU: the Triton kernels compiled ahead of time for sm_80 (A100) and sm_90 (H100) (issue 13).

Each case runs Triton's full pipeline down to a cubin (`sparse_diffusion.kernels.triton.aot`, in a subprocess with the
interpreter off, two compiles at a time) and asserts: it compiles; no register spills (no local memory or stack);
shared memory within the target's limit and within the launcher's estimate (which the prune rule uses); wgmma on
sm_90 for query tiles of 64 rows or more; async copies in the PTX (a software-pipelined K/V loop) for every config with num_stages >= 2 (the dense kernel at a padded head dim excepted).

Which cases (the full grid takes ~15 minutes here; this subset ~1-2): every config the prune rule keeps for the
production shape (bf16, D=128, 128x128 mask blocks) on both targets, for both kernels; and, per target, the
heaviest kept config (most stages, largest tile) of D=64, D=256, D=40 (padded to 64, 8-aligned rows) and 32x32
mask blocks, plus fp16 at D=128. Every kept config of the full grid was compiled once when the prune table was
measured (see `kernels/triton/tiles.py`). The prune rule's coverage (some config for every head dim and mask block) is
checked without compiling.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from sparse_diffusion.kernels.triton import aot


tiles = pytest.importorskip("sparse_diffusion.kernels.triton.tiles")
MISSING = aot.tools_missing()
ARCHS = (80, 90)


def _heaviest(configs):
    return max(configs, key=lambda c: (c["num_stages"], c["BLOCK_M"] * c["BLOCK_N"], c["num_warps"]))


def _cases() -> list[dict]:
    cases = []
    for arch in ARCHS:
        limit = aot.MAX_SHARED[arch]
        for kind in ("sparse", "dense"):
            for c in tiles.kept_configs(kind, 128, (128, 128), torch.bfloat16, arch, limit):
                cases.append(dict(kernel=kind, arch=arch, dtype="bfloat16", head_dim=128, block_size=[128, 128], **c))
            extra = [
                ("bfloat16", 64, 128, 16),
                ("bfloat16", 256, 128, 16),
                ("bfloat16", 40, 128, 8),
                ("bfloat16", 128, 32, 16),
                ("float16", 128, 128, 16),
            ]
            for dtype, d, block, align in extra:
                kept = tiles.kept_configs(kind, d, (block, block), getattr(torch, dtype), arch, limit)
                cases.append(
                    dict(
                        kernel=kind,
                        arch=arch,
                        dtype=dtype,
                        head_dim=d,
                        block_size=[block, block],
                        row_align=align,
                        **_heaviest(kept),
                    )
                )
    return cases


CASES = _cases()


def _case_id(c):
    return (
        f"{c['kernel']}-sm{c['arch']}-{c['dtype']}-d{c['head_dim']}-b{c['block_size'][0]}-"
        f"{c['BLOCK_M']}x{c['BLOCK_N']}-w{c['num_warps']}s{c['num_stages']}"
    )


@pytest.fixture(scope="module")
def compiled():
    if MISSING:
        pytest.skip(f"cannot compile for NVIDIA targets here: {MISSING}")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "sparse_diffusion.kernels.triton.aot", "2"],
        input=json.dumps(CASES),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(CASES)
    return {_case_id(r): r for r in results}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kernel_compiles_for_real_gpus_without_spills(compiled, case):
    r = compiled[_case_id(case)]
    assert "error" not in r, r.get("error")
    assert r["local_bytes"] == 0, f"register spills: {r['local_bytes']} bytes of local memory/stack per thread"
    assert r["shared_bytes"] <= aot.MAX_SHARED[r["arch"]]
    estimate = tiles.shared_bytes(
        r["BLOCK_M"],
        r["BLOCK_N"],
        tiles.padded_head_dim(r["head_dim"]),
        r["num_stages"],
        torch.empty(0, dtype=getattr(torch, r["dtype"])).element_size(),
        r["arch"],
    )
    assert r["shared_bytes"] <= estimate + tiles.SHARED_SLACK, "the prune rule's shared-memory estimate is low"
    if r["arch"] >= 90 and r["BLOCK_M"] >= 64:  # a warpgroup's wgmma covers 64 rows; smaller tiles use mma.sync
        assert r["wgmma"], "no wgmma on sm_90: the dots fell back to mma.sync"
    if r["num_stages"] >= 2 and (r["kernel"] == "sparse" or tiles.padded_head_dim(r["head_dim"]) == r["head_dim"]):
        # the dense kernel with masked head-dim columns (D=40) loads synchronously: it runs once per re-plan
        assert r["async_copies"], "no cp.async in the PTX: the K/V loop is not software-pipelined"


@pytest.mark.parametrize("arch", [80, 86, 90])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_head_dim_and_mask_block_keeps_a_config(arch, dtype):
    """The prune rule leaves each kernel at least one config for every supported head dim and mask block."""
    for d in (16, 32, 40, 64, 80, 96, 128, 160, 256):
        for block in (32, 64, 128, 256):
            for kind in ("sparse", "dense"):
                kept = tiles.kept_configs(kind, d, (block, block), dtype, arch, aot.MAX_SHARED[arch])
                assert kept, f"no {kind} config for D={d}, mask block {block}, sm_{arch}, {dtype}"
                for c in kept:
                    assert block % c["BLOCK_M"] == 0 and block % c["BLOCK_N"] == 0


def test_prune_rule_drops_what_spills_or_overflows():
    """Figures measured by compiling (see `tiles._SAFE`): 128x128 tiles at D=128 spill; D=256 with 64x64 tiles too;
    3 stages of 32x64 tiles at D=256 overflow an sm_86 GPU's 99 KiB (and, by the estimate, an A100's 163 KiB)."""
    assert not tiles.config_fits("sparse", 128, 128, 8, 2, 128, 2, 90, aot.MAX_SHARED[90])
    assert not tiles.config_fits("sparse", 64, 64, 8, 2, 256, 2, 90, aot.MAX_SHARED[90])
    assert tiles.config_fits("sparse", 128, 64, 8, 2, 128, 2, 90, aot.MAX_SHARED[90])
    assert tiles.config_fits("dense", 32, 64, 8, 3, 256, 2, 90, aot.MAX_SHARED[90])
    assert not tiles.config_fits("dense", 32, 64, 8, 3, 256, 2, 86, aot.MAX_SHARED[86])
