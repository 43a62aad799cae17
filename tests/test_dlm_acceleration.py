"""Block-sparse attention for masked diffusion LMs: one step per forward, dense warm-up as a share of the sampler's
steps, SparseD's isolated top-k selection, GQA without repeated K/V."""

import math

import pytest
import torch
from pipeline_helpers import spy_attention
from sparse_diffusion.pipelines import dlm

from sparse_diffusion import SparseAttentionConfig, SparseDiffusionError, accelerate_model
from sparse_diffusion.attention_call import AttentionCall
from sparse_diffusion.controller import SparseController
from sparse_diffusion.testing.dlm import build_tiny_masked_lm


MASK = 63
CALL = dict(gen_length=64, steps=16, block_length=32, mask_id=MASK)


@pytest.fixture(scope="module")
def models():
    return {kind: build_tiny_masked_lm(kind, dtype=torch.float64, locality=3.0, seed=1) for kind in ("llada", "dream")}


def _prompt(length=32):
    return torch.randint(0, MASK, (1, length), generator=torch.Generator().manual_seed(2))


def _run(model, kind, **extra):
    kwargs = dict(CALL, shift_logits=kind == "dream", cfg_scale=0.5, return_history=True) | extra
    return dlm.generate(model, _prompt(), **kwargs)[1]


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_all_dense_steps_and_keep_all_masks_give_identical_canvases(models, kind):
    model = models[kind]
    baseline = _run(model, kind)
    with accelerate_model(model, dense_steps=CALL["steps"], block_size=16) as handle:
        dense = _run(model, kind)
        report = handle.report()
    assert report["adapter"] == "dlm" and report["total_steps"] == 16 and report["sparse_steps"] == 0
    assert report["calls"] == {"dense": 16 * 2, "build": 0, "sparse": 0, "fallback": 0}, "CFG batched: one forward"
    with accelerate_model(
        model, dense_steps=0.25, block_size=16, policy="topk", topk_ratio=1.0, sparse_density_limit=1.0
    ) as handle:
        keep_all = _run(model, kind)
        report = handle.report()
    assert report["dense_steps"] == 4 and report["sparse_steps"] == 12 and report["density"] == 1.0
    assert report["calls"] == {"dense": 3 * 2, "build": 2, "sparse": 12 * 2, "fallback": 0}
    for i, (a, b, c) in enumerate(zip(baseline, dense, keep_all)):
        assert torch.equal(a, b) and torch.equal(a, c), f"step {i}"


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_sparse_steps_report_consistent_densities(models, kind):
    model = models[kind]
    with accelerate_model(
        model,
        dense_steps=0.25,
        block_size=16,
        policy="topk",
        topk_ratio=0.3,
        sparse_density_limit=1.0,
        refresh_threshold=0,
        keep_generated_tokens=False,
    ) as handle:
        calls = spy_attention(handle)
        history = _run(model, kind)
        report = handle.report()
        masks = handle.masks()
    assert not bool((history[-1] == MASK).any())
    assert report["runs"] == [
        {"total_steps": 16, "dense_steps": 4, "steps_run": 16, "sparse_steps": 12, "dense_fallback_steps": 0}
    ]
    assert [c[0] for c in calls] == [s for s in range(16) for _ in range(2)], "one step per forward"
    heads, kv_heads = (4, 4) if kind == "llada" else (4, 2)
    assert {(c[3], c[5].shape[1]) for c in calls} == {((2, heads, 96, 16), kv_heads)}, "K/V keep their HK heads"
    # 96 tokens = 6 key blocks: ceil(0.3 * 6) = 2 chosen, plus the diagonal when it was not chosen
    densities = []
    for name, layer in report["layers"].items():
        table = masks[name].to_dense()
        assert bool(table.diagonal(dim1=-2, dim2=-1).all())
        assert set(table.sum(-1).flatten().tolist()) <= {2, 3}
        assert layer["head_density"] == pytest.approx(masks[name].density().mean(0).tolist(), abs=1e-6)
        assert layer["density"] == pytest.approx(layer["planned_density"], abs=1e-6)
        densities.append(layer["density"])
    assert report["density"] == pytest.approx(sum(densities) / len(densities), abs=1e-6)
    assert 2 / 6 - 1e-6 <= report["density"] <= 0.5
    assert report["fallbacks"] == [] and report["passthrough"] == [] and report["backends"] == {"gather": 24}


def test_steps_restart_per_call_and_without_a_sampler(models):
    model = models["llada"]
    with accelerate_model(model, dense_steps=2, block_size=16, sparse_density_limit=1.0) as handle:
        _run(model, "llada", steps=8)
        _run(model, "llada", steps=4, gen_length=32)
        runs = handle.report()["runs"]
    assert [(r["total_steps"], r["dense_steps"], r["sparse_steps"]) for r in runs] == [(8, 2, 6), (4, 2, 2)]
    ids = torch.randint(0, MASK, (1, 48))
    with accelerate_model(model, num_inference_steps=3, dense_steps=0.5, block_size=16, sparse_density_limit=1.0) as h:
        with torch.no_grad():
            for _ in range(6):  # no begin_call: a new call after every 3 forwards
                model(ids)
        runs = h.report()["runs"]
    assert [(r["total_steps"], r["dense_steps"], r["sparse_steps"]) for r in runs] == [(3, 2, 1), (3, 2, 1)]


def test_fraction_without_a_step_count_says_how_to_fix_it(models):
    with accelerate_model(models["llada"], dense_steps=0.25, block_size=16) as handle:
        with pytest.raises(SparseDiffusionError, match="begin_call"), torch.no_grad():
            models["llada"](torch.randint(0, MASK, (1, 48)))
        with pytest.raises(SparseDiffusionError, match="total_steps=0"):
            handle.begin_call(0)
    with pytest.raises(SparseDiffusionError, match="needs policy='topk'"):
        SparseAttentionConfig(sparsed_selection=True)


def sparsed_reference(q, k, scale, block, prompt_len, ratio):
    """SparseD's isolated selection in float64 from the paper's description, one (head, query block) at a time."""
    b, h, sq, _ = q.shape
    k = k.repeat_interleave(h // k.shape[1], dim=1)
    sk = k.shape[2]
    qb, kb = math.ceil(sq / block), math.ceil(sk / block)
    last = min(kb, math.ceil(prompt_len / block))
    table = torch.zeros(b, h, qb, kb, dtype=torch.bool)

    def tile_means(probs):  # mean probability of every (row block, key block) tile, partial tiles included
        return torch.stack(
            [probs[:, j * block : (j + 1) * block].mean() for j in range(math.ceil(probs.shape[1] / block))]
        )

    for bi in range(b):
        for hi in range(h):
            scores = (q[bi, hi] @ k[bi, hi].T) * scale
            for qi in range(qb):
                rows = scores[qi * block : (qi + 1) * block]
                means = tile_means(rows.softmax(-1))
                for j in means.topk(min(kb, int(kb * ratio) + 1)).indices.tolist():
                    table[bi, hi, qi, j] = j < last
                if last < kb:
                    gen = tile_means(rows[:, last * block :].softmax(-1))
                    for j in gen.topk(min(kb - last, int((kb - last) * ratio) + 1)).indices.tolist():
                        table[bi, hi, qi, last + j] = True
    return table


@pytest.mark.parametrize(
    "heads, kv_heads, seq, prompt_len, ratio",
    [
        (4, 4, 100, 37, 0.3),  # prompt ends inside block 2 (straddling block counts as prompt); partial tail blocks
        (6, 2, 128, 64, 0.5),  # GQA, aligned prompt
        (2, 1, 80, 0, 0.3),  # no prompt: only the generated pass
        (2, 2, 64, 64, 0.2),  # prompt only: no generated keys
    ],
)
def test_sparsed_selection_matches_a_float64_reimplementation(heads, kv_heads, seq, prompt_len, ratio):
    gen = torch.Generator().manual_seed(seq + heads)
    q = torch.randn(2, heads, seq, 32, dtype=torch.float64, generator=gen) * 1.5
    k = torch.randn(2, kv_heads, seq, 32, dtype=torch.float64, generator=gen) * 1.5
    v = torch.randn(2, kv_heads, seq, 32, dtype=torch.float64, generator=gen)
    config = SparseAttentionConfig(
        dense_steps=1, block_size=16, policy="topk", topk_ratio=ratio, sparsed_selection=True, sparse_density_limit=1.0
    )
    controller = SparseController(config, ["attn"], lambda: None, step_per_forward=True)
    controller.begin_call(total_steps=3, prompt_length=prompt_len)
    controller.begin_forward(None, None)
    out = controller.attention(AttentionCall("attn", q, k, v, None, lambda: None))  # step 0 = the build step
    expected = sparsed_reference(q, k, 1 / math.sqrt(32), 16, prompt_len, ratio)
    assert torch.equal(controller.last_masks["attn"].to_dense(), expected)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=heads != kv_heads)
    assert float((out - dense).abs().max()) < 1e-12, "the build step itself stays dense"


def test_sparsed_selection_end_to_end_uses_the_prompt_length(models):
    model, prompt_len = models["dream"], 32
    seen = {}
    with accelerate_model(
        model,
        dense_steps=0.25,
        block_size=16,
        policy="topk",
        topk_ratio=0.3,
        sparsed_selection=True,
        sparse_density_limit=1.0,
        refresh_threshold=0,
    ) as handle:
        original = handle.controller._build

        def build(call, *args, **kwargs):
            seen[call.layer] = (call.q, call.k)
            return original(call, *args, **kwargs)

        handle.controller._build = build
        history = _run(model, "dream", cfg_scale=0.0)
        report = handle.report()
        masks = handle.masks()
    assert report["sparse_steps"] == 12 and report["calls"]["build"] == 2 and not bool((history[-1] == MASK).any())
    for layer, (q, k) in seen.items():
        assert torch.equal(masks[layer].to_dense(), sparsed_reference(q, k, 1 / math.sqrt(16), 16, prompt_len, 0.3))


def test_generated_tokens_stay_dense_and_dlm_defaults_apply_without_a_config(models):
    model = models["llada"]
    with accelerate_model(
        model, dense_steps=0.25, block_size=16, sparse_density_limit=1.0, refresh_threshold=0
    ) as handle:
        config = handle.config
        _run(model, "llada")  # prompt 32 + 64 generated = 96 tokens: blocks 2..5 hold generated tokens
        masks = handle.masks()
    assert (config.policy, config.topk_ratio, config.cache_complement, config.keep_generated_tokens) == (
        "topk",
        0.1,
        True,
        True,
    ) and config.refresh_threshold == 0.0
    for mask in masks.values():
        table = mask.to_dense()
        assert bool(table[..., 2:, :].all()) and bool(table[..., :, 2:].all())
        assert not bool(table[..., :2, :2].all()), "prompt rows stay sparse among prompt keys"
    with accelerate_model(model, SparseAttentionConfig()) as handle:
        assert handle.config.policy == "mass", "an explicit config is used as it is"
