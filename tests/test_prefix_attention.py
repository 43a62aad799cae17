"""Prefix attention (queries = the last Sq of Sk keys, DiffusionGemma's decoder): the forced diagonal offset by the
prefix, every sparse backend against float64 attention restricted to the kept blocks, the interceptor serving such
calls only for adapters that declare them, masks honoured only as exact tile patterns, re-plans on a grown prefix."""

import pytest
import torch
import torch.nn.functional as F

from sparse_diffusion import SparseAttentionConfig, ops
from sparse_diffusion.controller import SparseController
from sparse_diffusion.interception import SDPAInterceptor
from sparse_diffusion.planning import forced_blocks, plan_block_mask
from sparse_diffusion.reference import attention_reference


SQ, PREFIX, BLOCK = 45, 37, (16, 16)  # a prefix that is not a block multiple; partial tail blocks on both sides
SK = PREFIX + SQ


def _qkv(dtype, b=2, h=4, hk=2, d=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, SQ, d, generator=gen)
    k, v = (torch.randn(b, hk, SK, d, generator=gen) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _token_mask(table: torch.Tensor) -> torch.Tensor:
    """Bool [.., Sq, Sk] from a tile table [.., QB, KB], built by hand (not through BlockSparseMask)."""
    return table.repeat_interleave(BLOCK[0], -2).repeat_interleave(BLOCK[1], -1)[..., :SQ, :SK]


def test_forced_diagonal_is_the_key_blocks_holding_each_query_blocks_own_tokens():
    forced = forced_blocks(BLOCK, (SQ, SK), query_offset=PREFIX)
    # query block 0 holds queries 0..15 = keys 37..52 (key blocks 2, 3); block 1: keys 53..68 (3, 4); block 2: 69..81
    expected = torch.zeros(3, 6, dtype=torch.bool)
    expected[0, 2:4] = expected[1, 3:5] = expected[2, 4:6] = True
    assert torch.equal(forced, expected)
    columns = forced_blocks(BLOCK, (SQ, SK), keep_diagonal=False, query_offset=PREFIX, dense_key_ranges=[(PREFIX, SK)])
    assert torch.equal(columns, torch.tensor([[False, False, True, True, True, True]] * 3))
    rows = forced_blocks(BLOCK, (SQ, SK), [(60, 70)], keep_diagonal=False, query_offset=PREFIX)  # queries 23..32
    assert bool(rows[1:].all()) and torch.equal(rows[0], torch.tensor([False, False, False, True, True, False]))
    assert torch.equal(forced_blocks(BLOCK, (64, 64)), torch.eye(4, dtype=torch.bool))  # self-attention unchanged


@pytest.mark.parametrize(
    "backend, dtype, tol",
    [
        ("cpu", torch.float32, 2e-5),
        ("gather", torch.float32, 2e-5),
        ("gather", torch.float64, 1e-12),
        ("reference", torch.float64, 2e-5),
        ("triton", torch.float32, 2e-5),
    ],
)
def test_prefix_attention_backends_match_float64_restricted_to_kept_blocks(backend, dtype, tol):
    device = "cpu"
    if backend == "triton":
        pytest.importorskip("triton")
        launch = pytest.importorskip("sparse_diffusion.kernels.triton.launch")
        device = "cpu" if launch.interpreting() else "cuda"  # the interpreter (conftest) or a GPU
        if device == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before kernels are imported")
    q, k, v = (t.to(device) for t in _qkv(dtype))
    stats_backend = "triton" if backend == "triton" else "auto"
    out, lse, mass = ops.dense_attention_with_stats(q, k, v, BLOCK, backend=stats_backend)
    full, full_lse = attention_reference(q, k, v)  # float64
    assert float((out.double() - full).abs().max()) < tol and float((lse - full_lse).abs().max()) < 1e-5
    probs = torch.softmax((q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2)) / 32**0.5, -1)
    blocks = F.pad(probs, (0, 6 * 16 - SK, 0, 3 * 16 - SQ)).unflatten(-1, (6, 16)).unflatten(-3, (3, 16)).sum((-3, -1))
    rows = torch.tensor([16.0, 16.0, 13.0], dtype=torch.float64, device=device)[:, None]
    assert float((mass.double() - blocks / rows).abs().max()) < 1e-5

    config = SparseAttentionConfig(block_size=BLOCK, policy="topk", topk_ratio=0.2)
    mask = plan_block_mask(mass, config, (SQ, SK), query_offset=PREFIX)
    table = mask.to_dense().expand(2, 4, 3, 6)
    forced = forced_blocks(BLOCK, (SQ, SK), query_offset=PREFIX, device=device)
    assert bool((table | ~forced).all())  # the offset diagonal is kept on every head
    assert 0.3 < mask.density().mean() < 0.7
    sparse, sparse_lse = ops.block_sparse_attention(q, k, v, mask, backend=backend)
    expected, expected_lse = attention_reference(q, k, v, token_mask=_token_mask(table))
    assert float((sparse.double() - expected).abs().max()) < tol
    assert float((sparse_lse - expected_lse).abs().max()) < 1e-5
    assert float((sparse.double() - full).abs().max()) > 1e-3  # dropping blocks changes the result

    keep_all = plan_block_mask(mass, SparseAttentionConfig(block_size=BLOCK, policy="topk", topk_ratio=1.0), (SQ, SK))
    dense, dense_lse = ops.block_sparse_attention(q, k, v, keep_all, backend=backend)
    assert keep_all.density().min() == 1.0
    assert float((dense.double() - full).abs().max()) < tol and float((dense_lse - full_lse).abs().max()) < 1e-5


def _controller(flag: bool, **config) -> SparseController:
    config = SparseAttentionConfig(**{"block_size": BLOCK, "dense_steps": 1, "sparse_density_limit": 1.0, **config})
    controller = SparseController(config, ["attn"], lambda: None, step_per_forward=True, query_is_key_suffix=flag)
    controller.begin_call(total_steps=4)
    return controller


def _intercepted(controller, q, k, v, mask=None):
    controller.begin_forward(None, None)
    with SDPAInterceptor(controller, "attn"):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    controller.end_forward()
    return out


def test_only_adapters_declaring_query_suffix_serve_non_square_calls():
    q, k, v = _qkv(torch.float64)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    generic = _controller(False)
    assert torch.equal(_intercepted(generic, q, k, v), expected)
    assert dict(generic.passthrough) == {("attn", "cross-attention (Sq != Sk)"): 1}

    prefix = _controller(
        True, policy="topk", topk_ratio=0.1, keep_generated_tokens=False, cache_complement=True, refresh_threshold=0.0
    )
    outs = [_intercepted(prefix, q, k, v) for _ in range(3)]  # build, then two sparse steps
    assert prefix.passthrough == {} and prefix.stats["attn"].calls == {"build": 1, "sparse": 2}
    assert float((outs[0] - expected).abs().max()) < 1e-12
    mask = prefix.last_masks["attn"]
    assert mask.seq_lengths == (SQ, SK) and float(mask.density().mean()) < 0.7
    assert bool((mask.to_dense() | ~forced_blocks(BLOCK, (SQ, SK), query_offset=PREFIX)).all())  # offset diagonal kept
    # same inputs: the cached complement makes the sparse step reproduce the build's dense output (float32 LSE)
    assert float((outs[1] - expected).abs().max()) < 1e-6

    more_queries = _controller(True)  # Sq > Sk: not a prefix call
    assert torch.equal(
        _intercepted(more_queries, k.repeat(1, 2, 1, 1), q[:, :2], q[:, :2]),
        F.scaled_dot_product_attention(k.repeat(1, 2, 1, 1), q[:, :2], q[:, :2], enable_gqa=True),
    )
    assert dict(more_queries.passthrough) == {("attn", "cross-attention (Sq != Sk)"): 1}
    cut = _controller(True)  # a mask leaving fewer keys than queries: the queries cannot be the last keys
    short = (torch.arange(SK) < 40)[None, None, None, :]
    assert torch.equal(
        _intercepted(cut, q, k, v, short), F.scaled_dot_product_attention(q, k, v, attn_mask=short, enable_gqa=True)
    )
    assert dict(cut.passthrough) == {("attn", "prefix attention with fewer keys than queries (Sq=45, Sk=40)"): 1}


def test_prefix_masks_are_honoured_only_as_exact_tile_patterns():
    q, k, v = _qkv(torch.float64, b=1)
    pos = torch.arange(SK)
    # 11 masked trailing key slots (a static cache's unused tail): cut off, the tile table is all-allowed
    padded_k, padded_v = (torch.cat([t, torch.randn(1, 2, 11, 32, dtype=t.dtype)], 2) for t in (k, v))
    trailing = (torch.arange(SK + 11) < SK)[None, None, None, :].expand(1, 1, SQ, SK + 11)
    controller = _controller(True, policy="topk", topk_ratio=1.0)
    out = _intercepted(controller, q, padded_k, padded_v, trailing)
    expected = F.scaled_dot_product_attention(q, padded_k, padded_v, attn_mask=trailing, enable_gqa=True)
    assert float((out - expected).abs().max()) < 1e-12
    assert controller.passthrough == {} and controller.last_masks["attn"].seq_lengths == (SQ, SK)

    band = (pos[None, :] > PREFIX + torch.arange(SQ)[:, None] - 24)[None, None]  # a sliding window of 24 keys
    controller = _controller(True)
    out = _intercepted(controller, q, k, v, band)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=band, enable_gqa=True))
    assert dict(controller.passthrough) == {("attn", "explicit attn_mask (not aligned to 16x16 tiles)"): 1}

    aligned = torch.ones(1, 1, SQ, SK, dtype=torch.bool)
    aligned[..., 16:32, 0:16] = False  # query block 1 may not see key block 0: a tile pattern
    controller = _controller(True, policy="topk", topk_ratio=1.0)
    out = _intercepted(controller, q, k, v, aligned)
    assert (
        float((out - F.scaled_dot_product_attention(q, k, v, attn_mask=aligned, enable_gqa=True)).abs().max()) < 1e-12
    )
    assert controller.passthrough == {} and not bool(controller.last_masks["attn"].to_dense()[0, :, 1, 0].any())


def test_a_grown_prefix_is_replanned_within_a_call():
    q, k, v = _qkv(torch.float32, b=1)
    controller = _controller(True, policy="topk", topk_ratio=0.3)
    _intercepted(controller, q, k, v)  # build
    _intercepted(controller, q, k, v)  # sparse
    grown_k, grown_v = (torch.cat([torch.randn(1, 2, 16, 32), t], 2) for t in (k, v))
    out = _intercepted(controller, q, grown_k, grown_v)
    stats = controller.stats["attn"]
    assert stats.calls == {"build": 2, "sparse": 1} and stats.replans == {"input geometry changed": 1}
    assert controller.last_masks["attn"].seq_lengths == (SQ, SK + 16)
    assert float((out - F.scaled_dot_product_attention(q, grown_k, grown_v, enable_gqa=True)).abs().max()) < 1e-5


def test_sparsed_selection_runs_prefix_calls_dense_and_says_so():
    q, k, v = _qkv(torch.float32, b=1)
    controller = _controller(True, policy="topk", sparsed_selection=True)
    out = _intercepted(controller, q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    (reason,) = controller.stats["attn"].fallbacks
    assert reason.startswith("build failed, ran dense: sparsed_selection does not support prefix attention (Sq=45")


def test_dense_ranges_of_prefix_calls_are_key_positions():
    controller = SparseController(
        SparseAttentionConfig(block_size=BLOCK), ["attn"], lambda: None, text_position="first"
    )
    # canvas key columns only: every query is a canvas token; joint text (query positions 0..4) moves to keys 37..41
    assert controller._dense_ranges((SQ, SK), 5, query_offset=PREFIX) == ([(37, 42)], [(PREFIX, SK)])
    assert controller._dense_ranges((SQ, SQ), 5) == ([(0, 5)], [])  # self-attention unchanged
    off = SparseController(
        SparseAttentionConfig(block_size=BLOCK, keep_generated_tokens=False), ["attn"], lambda: None
    )
    assert off._dense_ranges((SQ, SK), 0, query_offset=PREFIX) == ([], [])


def test_effective_density_counts_each_call_after_the_warm_up_once():
    """A re-plan whose build fails is one full-work call (not a re-plan plus a fallback), and a build that fails
    inside the warm-up is warm-up work, not a call after it."""
    from types import SimpleNamespace

    from sparse_diffusion.report import build_report

    q, k, v = _qkv(torch.float32, b=1)
    square_q = k.repeat_interleave(2, 1)  # Sq = Sk: sparsed_selection can plan it; the prefix calls cannot
    adapter = SimpleNamespace(family="test", token_layout="tokens")
    for first_prefix in (False, True):
        controller = _controller(True, policy="topk", topk_ratio=0.3, sparsed_selection=True)
        controller.begin_call(total_steps=4)
        order = ["prefix", "square", "square", "square"] if first_prefix else ["square", "prefix", "square", "square"]
        for kind in order:
            _intercepted(controller, q if kind == "prefix" else square_q, k, v)
        stats = controller.stats["attn"]
        report = build_report(controller, adapter, model_class="Test")
        density, n_sparse = report["density"], stats.calls["sparse"]
        full_after = 3 - n_sparse  # steps 1..3 are after the one-step warm-up; each ran one call
        assert n_sparse >= 1 and density is not None
        expected = (density * n_sparse + full_after) / 3
        assert report["effective_density"] == pytest.approx(expected, abs=1e-5), (first_prefix, dict(stats.calls))
        assert density <= report["effective_density"] <= 1


def test_effective_density_counts_passed_through_calls_after_the_warm_up_as_full_work():
    from types import SimpleNamespace

    from sparse_diffusion.report import build_report

    q, k, v = _qkv(torch.float32, b=1)
    band = (torch.arange(SK)[None, :] > PREFIX + torch.arange(SQ)[:, None] - 24)[None, None]  # not a tile pattern
    controller = _controller(True, policy="topk", topk_ratio=0.3)
    for mask in (None, band, None, None):  # build, a passed-through call, two sparse steps
        _intercepted(controller, q, k, v, mask)
    report = build_report(controller, SimpleNamespace(family="test", token_layout="tokens"), model_class="Test")
    assert controller.stats["attn"].calls == {"build": 1, "sparse": 2}
    assert report["effective_density"] == pytest.approx((2 * report["density"] + 1) / 3, abs=1e-5)
