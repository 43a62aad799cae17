"""Triton kernels against a float64 reference with the flash-attn tolerance rule (error <= 2x PyTorch's own
same-precision error), outputs poisoned before the call. On CPU they run in Triton's interpreter (TRITON_INTERPRET=1
from conftest, small shapes); on a CUDA machine the same tests run on the GPU, plus larger `gpu`-marked shapes."""

import math
import types

import pytest
import torch
import torch.nn.functional as F

from sparse_diffusion import BlockSparseMask, ops
from sparse_diffusion.reference import (
    attention_reference,
    block_sparse_attention_reference,
    dense_attention_with_stats_reference,
)


triton = pytest.importorskip("triton")
launch = pytest.importorskip("sparse_diffusion.kernels.triton.launch")
DEVICE = "cpu" if launch.interpreting() else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():  # pragma: no cover - conftest sets the interpreter
    pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before kernels are imported", allow_module_level=True)


@pytest.fixture
def poisoned(monkeypatch):
    """Kernel outputs start as NaN, so any element the kernel does not write fails the comparison."""
    shim = types.SimpleNamespace(**{n: getattr(torch, n) for n in dir(torch) if not n.startswith("__")})
    shim.empty = lambda *a, **k: torch.empty(*a, **k).fill_(float("nan"))
    shim.empty_like = lambda *a, **k: torch.empty_like(*a, **k).fill_(float("nan"))
    monkeypatch.setattr(launch, "torch", shim)


def _inputs(b, h, hk, sq, sk, d, dtype, permuted):
    if permuted:  # diffusers' [B, S, H, D] viewed as [B, H, S, D]
        q = torch.randn(b, sq, h, d).transpose(1, 2)
        k, v = (torch.randn(b, sk, hk, d).transpose(1, 2) for _ in range(2))
    else:
        q = torch.randn(b, h, sq, d)
        k, v = (torch.randn(b, hk, sk, d) for _ in range(2))
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def _mask(b, h, sq, sk, block, seed):
    gen = torch.Generator().manual_seed(seed)
    qb, kb = -(-sq // block[0]), -(-sk // block[1])
    table = torch.rand(b, h, qb, kb, generator=gen) < 0.45
    table[0, -1, 0] = torch.rand(kb, generator=gen) < 0.8  # ragged
    table[0, 0, 0] = False  # empty row
    table[-1, -1, -1] = True  # full row, with the partial tail key block
    return BlockSparseMask.from_dense(table, block, (sq, sk)).to(DEVICE)


def _torch_error(q, k, v, token_mask, scale, ref):
    g = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(
        q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=token_mask, scale=scale
    )
    return float(((out.double() - ref) * token_mask.any(-1, keepdim=True)).abs().max())


def _ulp(dtype, ref):
    """One unit in the last place at the output's magnitude: the interpreter truncates fp32 -> bf16 stores."""
    return float(ref.abs().max()) * {torch.float32: 0.0, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]


CASES = [
    # b, h, hk, sq, sk, d, block, permuted
    (1, 2, 2, 97, 97, 64, (32, 32), False),
    (2, 4, 2, 300, 300, 64, (64, 64), True),
    (1, 2, 1, 200, 333, 128, (64, 32), False),  # Sq != Sk, GQA, head dim 128
    (1, 3, 3, 130, 130, 40, (32, 64), True),  # odd head dim padded to 64
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}h{c[1]}hk{c[2]}q{c[3]}k{c[4]}d{c[5]}")
def test_block_sparse_kernel_matches_float64(case, dtype, poisoned):
    b, h, hk, sq, sk, d, block, permuted = case
    q, k, v = _inputs(b, h, hk, sq, sk, d, dtype, permuted)
    mask = _mask(b, h, sq, sk, block, seed=d)
    out, lse = ops.block_sparse_attention(q, k, v, mask, backend="triton")
    ref, ref_lse = block_sparse_attention_reference(q, k, v, mask)
    token_mask = mask.to_token_mask()
    empty = ~token_mask.any(-1)
    assert empty.any()
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), "unwritten (poisoned) elements"
    assert (out[empty] == 0).all() and torch.isneginf(lse[empty]).all()
    err = float((out.double() - ref).abs().max())
    allowed = 2 * _torch_error(q, k, v, token_mask, 1 / math.sqrt(d), ref) + _ulp(dtype, ref) + 1e-6
    assert err <= allowed, (err, allowed)
    assert float((lse - ref_lse)[~empty].abs().max()) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: f"b{c[0]}h{c[1]}hk{c[2]}q{c[3]}k{c[4]}d{c[5]}")
def test_dense_stats_kernel_matches_float64(case, dtype, poisoned):
    b, h, hk, sq, sk, d, block, permuted = case
    q, k, v = _inputs(b, h, hk, sq, sk, d, dtype, permuted)
    out, lse, mass = ops.dense_attention_with_stats(q, k, v, block, backend="triton")
    ref, ref_lse, ref_mass = dense_attention_with_stats_reference(q, k, v, block)
    assert not any(torch.isnan(t).any() for t in (out, lse, mass)), "unwritten (poisoned) elements"
    full = torch.ones(b, h, sq, sk, dtype=torch.bool)
    allowed = 2 * _torch_error(q, k, v, full, 1 / math.sqrt(d), ref) + _ulp(dtype, ref) + 1e-6
    assert float((out.double() - ref).abs().max()) <= allowed
    assert float((lse - ref_lse).abs().max()) < 1e-4
    assert float((mass - ref_mass).abs().max()) < 1e-5
    assert torch.allclose(mass.sum(-1), torch.ones_like(mass[..., 0]), atol=1e-5)


# Per-batch valid key lengths: b, h, hk, s, d, block, permuted, seq_lens_k
VARLEN_CASES = [
    (2, 2, 2, 97, 64, (32, 32), False, [97, 40]),  # one full, one cut inside a block
    (3, 4, 2, 200, 64, (64, 32), True, [1, 200, 96]),  # a single valid key; cut on a block boundary; GQA
]


def _key_padding(lens, s):
    """Explicit bool key mask [B, 1, 1, Sk] on DEVICE: True below each batch element's valid length."""
    return (torch.arange(s)[None, :] < torch.tensor(lens)[:, None])[:, None, None, :].to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", VARLEN_CASES, ids=lambda c: f"b{c[0]}h{c[1]}hk{c[2]}s{c[3]}")
def test_block_sparse_kernel_with_seq_lens_k_matches_float64(case, dtype, poisoned):
    b, h, hk, s, d, block, permuted, lens = case
    q, k, v = _inputs(b, h, hk, s, s, d, dtype, permuted)
    mask = _mask(b, h, s, s, block, seed=s)
    token_mask = mask.to_token_mask() & _key_padding(lens, s)
    out, lse = ops.block_sparse_attention(q, k, v, mask, backend="triton", seq_lens_k=lens)
    ref, ref_lse = attention_reference(q, k, v, token_mask=token_mask)
    empty = ~token_mask.any(-1)
    assert empty[int(torch.tensor(lens).argmin())].any(), "rows whose kept blocks are all past the valid keys"
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), "unwritten (poisoned) elements"
    assert (out[empty] == 0).all() and torch.isneginf(lse[empty]).all()
    allowed = 2 * _torch_error(q, k, v, token_mask, 1 / math.sqrt(d), ref) + _ulp(dtype, ref) + 1e-6
    assert float((out.double() - ref).abs().max()) <= allowed
    assert float((lse - ref_lse)[~empty].abs().max()) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", VARLEN_CASES, ids=lambda c: f"b{c[0]}h{c[1]}hk{c[2]}s{c[3]}")
def test_dense_stats_kernel_with_seq_lens_k_matches_float64(case, dtype, poisoned):
    b, h, hk, s, d, block, permuted, lens = case
    q, k, v = _inputs(b, h, hk, s, s, d, dtype, permuted)
    out, lse, mass = ops.dense_attention_with_stats(q, k, v, block, backend="triton", seq_lens_k=lens)
    padding = _key_padding(lens, s)
    ref, ref_lse = attention_reference(q, k, v, token_mask=padding)
    lens_t = torch.tensor(lens, device=DEVICE)
    _, _, ref_mass = dense_attention_with_stats_reference(q, k, v, block, seq_lens_k=lens_t)  # checked in test_ops
    assert not any(torch.isnan(t).any() for t in (out, lse, mass)), "unwritten (poisoned) elements"
    allowed = 2 * _torch_error(q, k, v, padding.expand(b, h, s, s), 1 / math.sqrt(d), ref) + _ulp(dtype, ref) + 1e-6
    assert float((out.double() - ref).abs().max()) <= allowed
    assert float((lse - ref_lse).abs().max()) < 1e-4
    assert float((mass - ref_mass).abs().max()) < 1e-5
    past = torch.arange(mass.shape[-1], device=DEVICE)[None, :] * block[1] >= lens_t[:, None]
    assert past.any() and ((mass * past[:, None, None, :]) == 0).all(), "no mass in blocks past the valid keys"


def test_scale_and_batch_broadcast_mask(poisoned):
    q, k, v = _inputs(3, 2, 2, 128, 128, 64, torch.float32, False)
    mask = _mask(1, 2, 128, 128, (32, 32), seed=3)  # B=1 mask serves B=3
    out, lse = ops.block_sparse_attention(q, k, v, mask, scale=0.05, backend="triton")
    ref, ref_lse = block_sparse_attention_reference(q, k, v, mask, scale=0.05)
    assert float((out.double() - ref).abs().max()) < 1e-5


def test_custom_ops_trace_without_graph_breaks():
    q, k, v = _inputs(1, 2, 2, 64, 64, 32, torch.float32, False)
    mask = _mask(1, 2, 64, 64, (32, 32), seed=0)
    lens = torch.tensor([50], dtype=torch.int32, device=DEVICE)  # keys 50..63 are padding

    def fn(q, k, v, num, idx, lens):
        return torch.ops.sparse_diffusion.block_sparse_fwd(q, k, v, num, idx, lens, 32, 32, 0.125)

    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    out, lse = compiled(q, k, v, mask.kv_num_blocks, mask.kv_indices, lens)
    ref, _ = block_sparse_attention_reference(q, k, v, mask, scale=0.125, seq_lens_k=lens)
    assert float((out.double() - ref).abs().max()) < 1e-5
    torch.library.opcheck(
        torch.ops.sparse_diffusion.block_sparse_fwd.default,
        (q, k, v, mask.kv_num_blocks, mask.kv_indices, lens, 32, 32, 0.125),
        test_utils=("test_schema", "test_faketensor"),
    )
    torch.library.opcheck(
        torch.ops.sparse_diffusion.dense_fwd_stats.default,
        (q, k, v, lens, 32, 32, 0.125),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_triton_reasons_and_config_override(monkeypatch):
    assert launch.not_supported_reasons(torch.zeros(1, 1, 4, 512, device=DEVICE)) == ["head dim 512 > 256"]
    assert (
        "not supported"
        in launch.not_supported_reasons(torch.zeros(1, 1, 4, 64, dtype=torch.float64, device=DEVICE))[0]
    )
    assert "powers of two" in launch.not_supported_reasons(torch.zeros(1, 1, 4, 64, device=DEVICE), (48, 48))[0]
    q = torch.zeros(1, 1, 96, 64, device=DEVICE)
    with pytest.raises(Exception, match="powers of two"):
        ops.block_sparse_attention(q, q, q, _mask(1, 1, 96, 96, (48, 48), seed=0), backend="triton")
    monkeypatch.setenv("SPARSE_DIFFUSION_TRITON_CONFIG", "num_warps=8,num_stages=3")
    (config,) = launch._configs()
    assert config.num_warps == 8 and config.num_stages == 3
    monkeypatch.setenv("SPARSE_DIFFUSION_TRITON_CONFIG", "warps=8")
    with pytest.raises(Exception, match="num_warps=4,num_stages=2"):
        launch._configs()
    for bad in (
        "num_warps=3,num_stages=2",
        "num_warps=4,num_stages=0",
        "num_warps=4,num_stages=2,block_m=16,block_m=32",
    ):
        monkeypatch.setenv("SPARSE_DIFFUSION_TRITON_CONFIG", bad)
        with pytest.raises(Exception, match="SPARSE_DIFFUSION_TRITON_CONFIG"):
            launch._configs()


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="large shapes need a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_large_shapes_on_gpu_match_flex(dtype):
    """Wan-like heads at 8k tokens: the kernel against compiled flex_attention on the same mask, and against fp32."""
    from sparse_diffusion.benchmark import random_block_mask

    q, k, v = _inputs(1, 8, 8, 8190, 8190, 128, dtype, True)
    mask = random_block_mask(1, 8, 8190, 0.2, (128, 128), device=DEVICE)
    out, lse = ops.block_sparse_attention(q, k, v, mask, backend="triton")
    flex, flex_lse = ops.block_sparse_attention(q, k, v, mask, backend="flex")
    ref, ref_lse = ops.block_sparse_attention(q.float(), k.float(), v.float(), mask, backend="flex")
    assert float((out.float() - ref).abs().max()) <= 2 * float((flex.float() - ref).abs().max()) + 1e-3
    assert float((lse - ref_lse).abs().max()) < 1e-2


@pytest.mark.parametrize("lens", [None, [70, 128]])
def test_kernel_tiles_smaller_than_mask_blocks_match_float64(monkeypatch, poisoned, lens):
    """A 64x64 mask block served by 32-row query tiles and 16-wide key tiles (the GPU autotuner may pick tiles
    below the mask's blocks): same result as the float64 reference, for both kernels, with key padding."""
    monkeypatch.setenv("SPARSE_DIFFUSION_TRITON_CONFIG", "num_warps=4,num_stages=1,block_m=32,block_n=16")
    q, k, v = _inputs(2, 2, 1, 128, 128, 40, torch.float32, True)
    mask = _mask(2, 2, 128, 128, (64, 64), seed=5)
    seq = None if lens is None else torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out, lse = ops.block_sparse_attention(q, k, v, mask, backend="triton", seq_lens_k=seq)
    ref, ref_lse = block_sparse_attention_reference(q, k, v, mask, seq_lens_k=seq)
    assert float((out.double() - ref).abs().max()) < 1e-5
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    dense_out, dense_lse, mass = ops.dense_attention_with_stats(q, k, v, 64, backend="triton", seq_lens_k=seq)
    ref_out, ref_dlse, ref_mass = dense_attention_with_stats_reference(q, k, v, (64, 64), seq_lens_k=seq)
    assert float((dense_out.double() - ref_out).abs().max()) < 1e-5
    assert float((mass.double() - ref_mass).abs().max()) < 1e-6
    monkeypatch.setenv("SPARSE_DIFFUSION_TRITON_CONFIG", "num_warps=4,num_stages=1,block_n=48")
    with pytest.raises(Exception, match="block_n=48 must be a power of two"):
        ops.block_sparse_attention(q, k, v, mask, backend="triton")


def test_fake_kernels_report_the_real_strides_for_permuted_inputs():
    """diffusers hands permuted [B, S, H, D] views: the fake (meta) kernels must give the real, contiguous output
    strides, or torch.compile/Inductor miscompiles around the op (opcheck's fake-tensor test)."""
    q, k, v = _inputs(1, 2, 2, 64, 64, 32, torch.float32, True)
    assert not q.is_contiguous()
    mask = _mask(1, 2, 64, 64, (32, 32), seed=1)
    lens = torch.tensor([64], dtype=torch.int32, device=DEVICE)
    out, _ = torch.ops.sparse_diffusion.block_sparse_fwd(
        q, k, v, mask.kv_num_blocks, mask.kv_indices, lens, 32, 32, 0.2
    )
    assert out.is_contiguous()
    for op, args in [
        (
            torch.ops.sparse_diffusion.block_sparse_fwd.default,
            (q, k, v, mask.kv_num_blocks, mask.kv_indices, lens, 32, 32, 0.2),
        ),
        (torch.ops.sparse_diffusion.dense_fwd_stats.default, (q, k, v, lens, 32, 32, 0.2)),
    ]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
