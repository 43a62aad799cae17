"""A backend whose kernel fails on the user's machine is disabled once, loudly, and `auto` moves on (issue 13).

The Triton kernels run here in Triton's interpreter; the failure is forced the way a GPU user meets it: the kernel
raises Triton's own `OutOfResources` (shared memory) when launched. `auto` is given the CUDA order (triton first).
"""

import warnings

import numpy as np
import pytest
import torch
from pipeline_helpers import run_pipeline

from sparse_diffusion import SparseDiffusionError, accelerate_pipeline, backend_health, dispatch, ops
from sparse_diffusion.block_mask import BlockSparseMask
from sparse_diffusion.reference import block_sparse_attention_reference


triton = pytest.importorskip("triton")
launch = pytest.importorskip("sparse_diffusion.kernels.triton.launch")
from triton.runtime.errors import OutOfResources  # noqa: E402


@pytest.fixture
def broken_triton(monkeypatch):
    """Triton first in `auto` (as on CUDA) and a kernel that fails at launch; counts the launch attempts."""
    if not launch.interpreting():
        pytest.skip("needs the Triton interpreter (conftest sets it on CPU)")
    attempts = []

    class Failing:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                attempts.append(grid)
                raise OutOfResources(2 * 232448, 232448, "shared memory")

            return run

    monkeypatch.setattr(launch, "_kernels", lambda: (Failing(), Failing()))
    monkeypatch.setitem(dispatch._AUTO_ORDER, "cpu", ("triton", "gather", "flex", "reference"))
    backend_health.enable()
    yield attempts
    backend_health.enable()


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 96, 32, generator=gen) for _ in range(3))
    table = torch.rand(1, 2, 3, 3, generator=gen) < 0.5
    table[..., 0] = True
    return q, k, v, BlockSparseMask.from_dense(table, (32, 32), (96, 96))


def test_failing_kernel_is_disabled_once_and_auto_serves_with_the_next_backend(broken_triton):
    q, k, v, mask = _inputs()
    ref, ref_lse = block_sparse_attention_reference(q, k, v, mask)
    with pytest.warns(backend_health.BackendFailureWarning, match="OutOfResources.*pip install -U triton"):
        out, lse = ops.block_sparse_attention(q, k, v, mask)
    assert float((out.double() - ref).abs().max()) < 1e-5 and float((lse.double() - ref_lse).abs().max()) < 1e-5
    assert len(broken_triton) == 1
    assert "OutOfResources" in backend_health.disabled()["triton"]
    assert ops.sparse_backend_reasons(q, block_size=(32, 32))["triton"][0].startswith("disabled after it failed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        for _ in range(3):
            again, _ = ops.block_sparse_attention(q, k, v, mask)
            out2, lse2, mass = ops.dense_attention_with_stats(q, k, v, 32)
    assert len(broken_triton) == 1, "a disabled kernel is never retried"
    assert torch.equal(again, out)
    with pytest.raises(SparseDiffusionError, match="disabled after it failed"):
        ops.block_sparse_attention(q, k, v, mask, backend="triton")
    backend_health.enable("triton")
    assert backend_health.disabled_reason("triton") is None


def test_forced_triton_failure_raises_a_clear_error(broken_triton):
    q, k, v, mask = _inputs(1)
    with pytest.warns(backend_health.BackendFailureWarning):
        with pytest.raises(SparseDiffusionError, match="backend 'triton' failed .*OutOfResources.*disabled"):
            ops.block_sparse_attention(q, k, v, mask, backend="triton")
    backend_health.enable()
    with pytest.warns(backend_health.BackendFailureWarning):
        with pytest.raises(SparseDiffusionError, match="backend 'triton' failed"):
            ops.dense_attention_with_stats(q, k, v, 32, backend="triton")


def test_pipeline_finishes_on_the_next_backend_and_reports_the_failure(broken_triton):
    from sparse_diffusion.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="a red circle moving left", height=128, width=128, num_frames=9, guidance_scale=5.0)
    with accelerate_pipeline(
        pipe, dense_steps=1, block_size=32, policy="topk", topk_ratio=0.5, sparse_density_limit=1.0, backend="gather"
    ) as handle:
        expected = run_pipeline(pipe, call, 3)
        reference_report = handle.report()
    assert reference_report["calls"]["sparse"] > 0 and broken_triton == []

    with pytest.warns(backend_health.BackendFailureWarning):
        with accelerate_pipeline(
            pipe, dense_steps=1, block_size=32, policy="topk", topk_ratio=0.5, sparse_density_limit=1.0
        ) as handle:
            out = run_pipeline(pipe, call, 3)
            report = handle.report()
    assert len(broken_triton) == 1, "the kernel failed once and was not retried"
    assert report["calls"]["sparse"] == reference_report["calls"]["sparse"]
    assert set(report["backends"]) == {"gather"}
    assert np.abs(out.astype(np.float64) - expected).max() < 1e-4  # same masks, served by gather either way
    assert any(
        "backend triton disabled" in f["reason"] and "OutOfResources" in f["reason"] for f in report["fallbacks"]
    )
    assert "OutOfResources" in report["disabled_backends"]["triton"]


def test_out_of_memory_is_the_call_s_problem_not_the_kernel_s(monkeypatch, broken_triton):
    """A failed allocation raises a SparseDiffusionError for that call and disables nothing."""
    q, k, v, mask = _inputs(2)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1024.00 GiB")

    monkeypatch.setattr(dispatch.REGISTRY["gather"], "forward", oom)
    with pytest.raises(SparseDiffusionError, match="ran out of memory"):
        ops.block_sparse_attention(q, k, v, mask, backend="gather")
    assert backend_health.disabled() == {}
