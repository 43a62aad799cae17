"""Every op against a float64 reference: odd lengths, GQA, head dims 64/128/odd, empty and full rows, dtypes."""

import math

import pytest
import torch
import torch.nn.functional as F

from sparse_diffusion import BlockSparseMask, SparseDiffusionError, ops
from sparse_diffusion.reference import (
    attention_reference,
    block_sparse_attention_reference,
    dense_attention_with_stats_reference,
)


def _qkv(b, h, hk, s, d, dtype, permuted=False):
    if permuted:  # diffusers layout [B, S, H, D] viewed as [B, H, S, D]
        q = torch.randn(b, s, h, d).transpose(1, 2)
        k = torch.randn(b, s, hk, d).transpose(1, 2)
        v = torch.randn(b, s, hk, d).transpose(1, 2)
    else:
        q, k, v = torch.randn(b, h, s, d), torch.randn(b, hk, s, d), torch.randn(b, hk, s, d)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _random_mask(b, h, s, block, density=0.4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qb, kb = -(-s // block[0]), -(-s // block[1])
    table = torch.rand(b, h, qb, kb, generator=gen) < density
    table[0, 0, 0] = False  # an empty row
    table[0, -1, -1] = True  # a full row (includes the partial tail block)
    return BlockSparseMask.from_dense(table, block, (s, s))


def _same_precision_error(q, k, v, token_mask, ref):
    """Error of PyTorch's own attention at the input precision (the tolerance yardstick)."""
    groups = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=token_mask)
    valid = token_mask.any(-1, keepdim=True)
    return float(((out.double() - ref) * valid).abs().max())


CASES = [
    # b, h, hk, s, d, block
    (1, 2, 2, 97, 64, (32, 32)),
    (2, 4, 2, 300, 64, (64, 64)),
    (1, 4, 1, 1000, 128, (128, 64)),
    (1, 2, 2, 257, 40, (64, 64)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["cpu", "gather", "reference"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}h{c[1]}hk{c[2]}s{c[3]}d{c[4]}")
def test_block_sparse_matches_float64_reference(case, backend, dtype):
    b, h, hk, s, d, block = case
    q, k, v = _qkv(b, h, hk, s, d, dtype, permuted=(s == 300))
    mask = _random_mask(b, h, s, block)
    ref_out, ref_lse = block_sparse_attention_reference(q, k, v, mask)
    out, lse = ops.block_sparse_attention(q, k, v, mask, backend=backend)
    assert out.dtype == dtype and out.shape == (b, h, s, d)
    assert lse.dtype == torch.float32 and lse.shape == (b, h, s)
    token_mask = mask.to_token_mask()
    empty = ~token_mask.any(-1)
    assert empty.any(), "the test mask must contain an empty row"
    assert torch.isinf(lse[empty]).all() and (lse[empty] < 0).all()
    assert (out[empty] == 0).all() and torch.isfinite(out).all()
    torch_err = _same_precision_error(q, k, v, token_mask, ref_out)
    err = float((out.double() - ref_out).abs().max())
    assert err <= 2 * torch_err + 1e-6, (err, torch_err)
    lse_err = float((lse - ref_lse)[~empty].abs().max())
    assert lse_err <= (1e-5 if dtype == torch.float32 else 2e-2), lse_err


def test_keep_all_mask_equals_dense_sdpa():
    q, k, v = _qkv(1, 4, 4, 333, 64, torch.float32)
    full = BlockSparseMask.from_dense(torch.ones(1, 4, 6, 6, dtype=torch.bool), 64, (333, 333))
    dense = F.scaled_dot_product_attention(q, k, v)
    ref, ref_lse = attention_reference(q, k, v)
    for backend in ("cpu", "gather", "reference"):
        out, lse = ops.block_sparse_attention(q, k, v, full, backend=backend)
        assert torch.allclose(out, dense, atol=2e-6), backend
        assert torch.allclose(lse.double(), ref_lse.double(), atol=1e-5)


def test_flex_backend_matches_reference():
    """Compiled flex_attention (no LSE on CPU) with odd length, GQA and an empty row."""
    q, k, v = _qkv(1, 4, 2, 300, 64, torch.float32)
    mask = _random_mask(1, 4, 300, (64, 64))
    ref_out, _ = block_sparse_attention_reference(q, k, v, mask)
    out, lse = ops.block_sparse_attention(q, k, v, mask, backend="flex", return_lse=False)
    assert lse is None
    assert float((out.double() - ref_out).abs().max()) < 1e-5
    with pytest.raises(SparseDiffusionError, match="cannot return the LSE"):
        ops.block_sparse_attention(q, k, v, mask, backend="flex")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}h{c[1]}hk{c[2]}s{c[3]}d{c[4]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_with_stats_matches_reference(case, dtype):
    b, h, hk, s, d, block = case
    q, k, v = _qkv(b, h, hk, s, d, dtype)
    out, lse, mass = ops.dense_attention_with_stats(q, k, v, block)
    ref_out, ref_lse, ref_mass = dense_attention_with_stats_reference(q, k, v, block)
    qb, kb = -(-s // block[0]), -(-s // block[1])
    assert mass.shape == (b, h, qb, kb) and mass.dtype == torch.float32
    assert torch.allclose(mass.sum(-1), torch.ones(b, h, qb), atol=1e-5)
    assert float((mass - ref_mass).abs().max()) < 1e-5
    tol_lse = 1e-5 if dtype == torch.float32 else 2e-2
    assert float((lse - ref_lse).abs().max()) < tol_lse
    full = torch.ones(b, h, s, s, dtype=torch.bool)
    torch_err = _same_precision_error(q, k, v, full, ref_out)
    assert float((out.double() - ref_out).abs().max()) <= 2 * torch_err + 1e-6


def test_dense_with_stats_chunks_match_unchunked(monkeypatch):
    """Chunking over query blocks gives the same numbers as one chunk."""
    from sparse_diffusion import backends

    q, k, v = _qkv(1, 2, 2, 500, 64, torch.float32)
    whole = ops.dense_attention_with_stats(q, k, v, 64)
    monkeypatch.setattr(backends, "_STATS_CHUNK_BYTES", 1)  # one query block per chunk
    chunked = ops.dense_attention_with_stats(q, k, v, 64)
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=1e-6)


def test_gather_chunking_matches(monkeypatch):
    from sparse_diffusion import backends

    q, k, v = _qkv(2, 2, 1, 400, 64, torch.float32)
    mask = _random_mask(1, 2, 400, (64, 64))  # batch-1 mask broadcast over B=2
    whole = ops.block_sparse_attention(q, k, v, mask, backend="gather")
    monkeypatch.setattr(backends, "_GATHER_CHUNK_BYTES", 1)
    chunked = ops.block_sparse_attention(q, k, v, mask, backend="gather")
    assert torch.allclose(whole[0], chunked[0], atol=1e-6)
    ref, _ = block_sparse_attention_reference(q, k, v, mask)
    assert float((whole[0].double() - ref).abs().max()) < 1e-5


def test_float64_inputs_are_exact():
    q, k, v = _qkv(1, 2, 2, 130, 32, torch.float64)
    mask = _random_mask(1, 2, 130, (32, 32))
    ref, ref_lse = block_sparse_attention_reference(q, k, v, mask)
    out, lse = ops.block_sparse_attention(q, k, v, mask, backend="gather")
    assert float((out - ref).abs().max()) < 1e-12


def test_scale_argument():
    q, k, v = _qkv(1, 2, 2, 128, 64, torch.float32)
    full = BlockSparseMask.from_dense(torch.ones(1, 2, 2, 2, dtype=torch.bool), 64, (128, 128))
    out, _ = ops.block_sparse_attention(q, k, v, full, scale=0.3, backend="gather")
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=2e-6)
    default, _ = ops.block_sparse_attention(q, k, v, full, backend="gather")
    assert torch.allclose(default, F.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(64)), atol=2e-6)
    assert not torch.allclose(out, default, atol=1e-3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda q, k, v, m: (q[0], k, v, m), "4-D"),
        (lambda q, k, v, m: (q, k.double(), v, m), "dtype"),
        (lambda q, k, v, m: (q, k[:, :1].expand(1, 1, 128, 64)[:, :, :100], v, m), "K/V shapes"),
        (
            lambda q, k, v, m: (torch.randn(1, 3, 128, 64), torch.randn(1, 2, 128, 64), torch.randn(1, 2, 128, 64), m),
            "multiple",
        ),
        (lambda q, k, v, m: (q[:, :, :100], k[:, :, :100], v[:, :, :100], m), "seq_lengths"),
        (lambda q, k, v, m: (q, k, v, "mask"), "BlockSparseMask"),
    ],
)
def test_bad_inputs_raise_clear_errors(make, match):
    q, k, v = _qkv(1, 2, 2, 128, 64, torch.float32)
    mask = _random_mask(1, 2, 128, (64, 64))
    with pytest.raises(SparseDiffusionError, match=match):
        ops.block_sparse_attention(*make(q, k, v, mask), backend="gather")


def test_unknown_backend_and_forced_unavailable_backend():
    q, k, v = _qkv(1, 2, 2, 128, 64, torch.float32)
    mask = _random_mask(1, 2, 128, (64, 64))
    with pytest.raises(SparseDiffusionError, match="not known"):
        ops.block_sparse_attention(q, k, v, mask, backend="cuda-magic")
    q3, k3, v3 = _qkv(1, 2, 2, 128, 40, torch.float32)
    with pytest.raises(SparseDiffusionError, match="power-of-two"):
        ops.block_sparse_attention(q3, k3, v3, mask, backend="flex", return_lse=False)


def test_head_dim_strided_inputs_are_exact():
    """q/k/v whose last dim is not stride 1 (e.g. a transposed view) must not reach fused kernels as-is."""
    q = torch.randn(1, 2, 64, 96).transpose(2, 3)  # [1, 2, 96, 64] with stride(-1) == 96
    k = torch.randn(1, 2, 64, 96).transpose(2, 3)
    v = torch.randn(1, 2, 64, 96).transpose(2, 3)
    ref, ref_lse, ref_mass = dense_attention_with_stats_reference(q, k, v, (32, 32))
    out, lse, mass = ops.dense_attention_with_stats(q, k, v, 32)
    assert float((out.double() - ref).abs().max()) < 1e-5 and float((mass - ref_mass).abs().max()) < 1e-6
    mask = _random_mask(1, 2, 96, (32, 32))
    out, lse = ops.block_sparse_attention(q, k, v, mask, backend="gather")
    assert float((out.double() - block_sparse_attention_reference(q, k, v, mask)[0]).abs().max()) < 1e-5


def test_corrupt_masks_are_rejected():
    q, k, v = _qkv(1, 2, 2, 128, 64, torch.float32)
    for corrupt in ("out of range", "duplicate", "negative"):
        mask = BlockSparseMask.from_dense(torch.ones(1, 2, 2, 2, dtype=torch.bool), 64, (128, 128))
        if corrupt == "out of range":
            mask.kv_indices[0, 0, 0, 1] = 2
        elif corrupt == "duplicate":
            mask.kv_indices[0, 0, 0, 1] = 0
        else:
            mask.kv_num_blocks[0, 0, 0] = -1
        with pytest.raises(SparseDiffusionError, match="kv_"):
            ops.block_sparse_attention(q, k, v, mask, backend="gather")


@pytest.mark.parametrize("block", [0, -16, 16.0, "16", (16,), (16, 16, 16), True])
def test_bad_block_sizes(block):
    q, k, v = _qkv(1, 2, 2, 64, 32, torch.float32)
    with pytest.raises(SparseDiffusionError, match="block_size"):
        ops.dense_attention_with_stats(q, k, v, block)
    with pytest.raises(SparseDiffusionError, match="block_size"):
        BlockSparseMask.from_dense(torch.ones(1, 1, 4, 4, dtype=torch.bool), block, (64, 64))


def test_reference_keeps_nan_and_zeroes_only_empty_rows():
    q, k, v = _qkv(1, 1, 1, 64, 16, torch.float32)
    q[0, 0, 3] = float("nan")
    table = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    table[0, 0, 1] = False
    out, lse = block_sparse_attention_reference(q, k, v, BlockSparseMask.from_dense(table, 32, (64, 64)))
    assert torch.isnan(out[0, 0, 3]).all() and not torch.isnan(out[0, 0, :3]).any()
    assert (out[0, 0, 32:] == 0).all() and torch.isneginf(lse[0, 0, 32:]).all()


def test_non_finite_scale_is_rejected():
    q, k, v = _qkv(1, 1, 1, 64, 16, torch.float32)
    with pytest.raises(SparseDiffusionError, match="scale"):
        ops.dense_attention_with_stats(q, k, v, 32, scale=float("nan"))


def test_auto_picks_the_native_cpu_kernel_and_it_handles_strided_gqa():
    q = torch.randn(1, 300, 4, 64).transpose(1, 2)  # [B, S, H, D] viewed as [B, H, S, D]
    k = torch.randn(1, 300, 2, 64).transpose(1, 2)
    v = torch.randn(1, 300, 2, 64).transpose(1, 2)
    mask = _random_mask(1, 4, 300, (64, 32))
    assert ops.choose_sparse_backend(q) == "cpu"
    out, lse = ops.block_sparse_attention(q, k, v, mask)
    ref, ref_lse = block_sparse_attention_reference(q, k, v, mask)
    assert float((out.double() - ref).abs().max()) < 1e-5
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse)) and float((lse - ref_lse)[finite].abs().max()) < 1e-5


@pytest.mark.parametrize("backend", ["cpu", "gather"])
def test_nan_inputs_give_nan_not_silent_values(backend):
    q, k, v = _qkv(1, 2, 2, 128, 64, torch.float32)
    q[0, 1, 5] = float("nan")
    full = BlockSparseMask.from_dense(torch.ones(1, 2, 2, 2, dtype=torch.bool), 64, (128, 128))
    out, lse = ops.block_sparse_attention(q, k, v, full, backend=backend)
    assert torch.isnan(out[0, 1, 5]).all() and torch.isnan(lse[0, 1, 5])
    assert torch.isfinite(out[0, 0]).all()


@pytest.mark.parametrize("backend", ["cpu", "gather"])
def test_expanded_and_degenerate_kv_strides(backend):
    """K/V whose sequence stride is below D (expanded views, Sk=1 transposes) must still be exact."""
    q = torch.randn(1, 4, 200, 64)
    v = torch.randn(1, 4, 200, 64)
    k = torch.randn(1, 4, 1, 64).expand(1, 4, 200, 64)  # stride(2) == 0
    full = BlockSparseMask.from_dense(torch.ones(1, 4, 4, 4, dtype=torch.bool), 64, (200, 200))
    for kk, vv in ((k, v), (v, k)):
        out, lse = ops.block_sparse_attention(q, kk, vv, full, backend=backend)
        ref, ref_lse = block_sparse_attention_reference(q, kk, vv, full)
        assert float((out.double() - ref).abs().max()) < 1e-5 and float((lse - ref_lse).abs().max()) < 1e-4
    k1 = torch.randn(1, 4, 64, 1).transpose(-1, -2)  # Sk = 1 with strides (256, 64, 1, 1)
    one = BlockSparseMask.from_dense(torch.ones(1, 4, 4, 1, dtype=torch.bool), 64, (200, 1))
    out, _ = ops.block_sparse_attention(q, k1, k1, one, backend=backend)
    ref, _ = block_sparse_attention_reference(q, k1, k1, one)
    assert float((out.double() - ref).abs().max()) < 1e-5


# Per-batch valid key lengths (varlen key padding): b, h, hk, s, d, block, seq_lens_k
VARLEN_CASES = [
    (2, 2, 2, 97, 64, (32, 32), [97, 40]),  # one full, one cut inside a block
    (3, 4, 2, 300, 64, (64, 64), [1, 300, 129]),  # a single valid key; GQA; permuted layout
    (2, 2, 1, 257, 40, (64, 32), [64, 200]),  # cut on a block boundary; odd head dim; rectangular tiles
]


def _varlen_mask(b, h, s, block, lens, seed=0):
    """Random tiles, plus rows that keep only blocks past the valid length (empty after padding) and a full row."""
    gen = torch.Generator().manual_seed(seed)
    qb, kb = -(-s // block[0]), -(-s // block[1])
    table = torch.rand(b, h, qb, kb, generator=gen) < 0.4
    table[0, -1, -1] = True  # a full row
    short = min(range(b), key=lambda i: lens[i])
    table[short, 0, 0] = False
    table[short, 0, 0, -1] = True  # only the last block: entirely past the short element's keys
    return BlockSparseMask.from_dense(table, block, (s, s))


def _key_padding(lens, s):
    """Explicit bool key mask [B, 1, 1, Sk]: True below each batch element's valid length."""
    return (torch.arange(s)[None, :] < torch.tensor(lens)[:, None])[:, None, None, :]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["cpu", "gather", "reference"])
@pytest.mark.parametrize("case", VARLEN_CASES, ids=lambda c: f"b{c[0]}h{c[1]}hk{c[2]}s{c[3]}d{c[4]}")
def test_block_sparse_with_seq_lens_k_matches_masked_float64(case, backend, dtype):
    b, h, hk, s, d, block, lens = case
    q, k, v = _qkv(b, h, hk, s, d, dtype, permuted=(s == 300))
    mask = _varlen_mask(b, h, s, block, lens)
    token_mask = mask.to_token_mask() & _key_padding(lens, s)
    ref_out, ref_lse = attention_reference(q, k, v, token_mask=token_mask)
    out, lse = ops.block_sparse_attention(
        q, k, v, mask, backend=backend, seq_lens_k=torch.tensor(lens, dtype=torch.int32)
    )
    assert out.dtype == dtype and lse.shape == (b, h, s)
    empty = ~token_mask.any(-1)
    assert empty[min(range(b), key=lambda i: lens[i]), 0, : block[0]].all(), "kept blocks past the valid length only"
    assert torch.isneginf(lse[empty]).all() and (out[empty] == 0).all() and torch.isfinite(out).all()
    torch_err = _same_precision_error(q, k, v, token_mask, ref_out)
    err = float((out.double() - ref_out).abs().max())
    assert err <= 2 * torch_err + 1e-6, (err, torch_err)
    lse_err = float((lse - ref_lse)[~empty].abs().max())
    assert lse_err <= (1e-5 if dtype == torch.float32 else 2e-2), lse_err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", VARLEN_CASES, ids=lambda c: f"b{c[0]}h{c[1]}hk{c[2]}s{c[3]}d{c[4]}")
def test_dense_with_stats_and_seq_lens_k_match_masked_float64(case, backend, dtype):
    b, h, hk, s, d, block, lens = case
    q, k, v = _qkv(b, h, hk, s, d, dtype)
    out, lse, mass = ops.dense_attention_with_stats(q, k, v, block, backend=backend, seq_lens_k=lens)
    # float64 PyTorch with an explicit boolean key mask
    g = h // hk
    scores = (q.double() @ k.double().repeat_interleave(g, 1).transpose(-1, -2)) / math.sqrt(d)
    scores = scores.masked_fill(~_key_padding(lens, s), float("-inf"))
    probs = scores.softmax(-1)
    ref_out = probs @ v.double().repeat_interleave(g, 1)
    qb, kb = -(-s // block[0]), -(-s // block[1])
    padded = F.pad(probs, (0, kb * block[1] - s, 0, qb * block[0] - s))
    rows = torch.full((qb,), float(block[0]))
    rows[-1] = s - (qb - 1) * block[0]
    ref_mass = padded.reshape(b, h, qb, block[0], kb, block[1]).sum((3, 5)) / rows[:, None]
    assert mass.shape == (b, h, qb, kb) and mass.dtype == torch.float32
    assert float((mass - ref_mass).abs().max()) < 1e-5
    past = torch.arange(kb)[None, :] * block[1] >= torch.tensor(lens)[:, None]  # [B, KB] blocks past the valid keys
    assert past.any() and (mass.permute(0, 2, 3, 1)[past[:, None].expand(b, qb, kb)] == 0).all()
    assert float((lse - scores.logsumexp(-1)).abs().max()) < (1e-5 if dtype == torch.float32 else 2e-2)
    full_err = _same_precision_error(q, k, v, _key_padding(lens, s).expand(b, h, s, s), ref_out)
    assert float((out.double() - ref_out).abs().max()) <= 2 * full_err + 1e-6


@pytest.mark.parametrize(
    "lens, match",
    [
        (torch.tensor([64.0, 64.0]), "integer tensor"),
        (torch.tensor([64]), r"expected \[B\] = \[2\]"),
        ([64, 0], r"\[1, Sk=128\]"),
        ([64, 129], r"\[1, Sk=128\]"),
    ],
)
def test_bad_seq_lens_k_raise_clear_errors(lens, match):
    q, k, v = _qkv(2, 2, 2, 128, 64, torch.float32)
    mask = _random_mask(2, 2, 128, (64, 64))
    with pytest.raises(SparseDiffusionError, match=match):
        ops.block_sparse_attention(q, k, v, mask, backend="gather", seq_lens_k=lens)
    with pytest.raises(SparseDiffusionError, match=match):
        ops.dense_attention_with_stats(q, k, v, 64, seq_lens_k=lens)


def test_flex_refuses_seq_lens_k_and_auto_skips_it():
    q, k, v = _qkv(2, 2, 2, 128, 64, torch.float32)
    mask = _random_mask(2, 2, 128, (64, 64))
    with pytest.raises(SparseDiffusionError, match="seq_lens_k"):
        ops.block_sparse_attention(q, k, v, mask, backend="flex", return_lse=False, seq_lens_k=[128, 100])
    assert "flex" != ops.choose_sparse_backend(q, need_lse=False, varlen=True)


def test_odd_inputs_get_clear_errors_not_wrapped_values():
    """Breaker findings: seq_lens_k beyond int32 must not wrap to a valid length; D=0 and an int block size."""
    q = torch.randn(1, 2, 64, 16)
    mask = BlockSparseMask.from_dense(torch.ones(1, 2, 2, 2, dtype=torch.bool), 32, (64, 64))
    for lens in (torch.tensor([2**32 + 40]), [2**32 + 40], torch.tensor([-(2**32) + 40])):
        with pytest.raises(SparseDiffusionError, match="must lie in"):
            ops.block_sparse_attention(q, q, q, mask, seq_lens_k=lens)
    empty = torch.randn(1, 2, 64, 0)
    with pytest.raises(SparseDiffusionError, match="head dim D must be >= 1"):
        ops.dense_attention_with_stats(empty, empty, empty, 32)
    assert ops.sparse_backend_reasons(q, block_size=32)["reference"] == []
