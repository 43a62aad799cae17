"""Block-diffusion LMs: block-causal masks honoured per tile (diffusers' LLaDA2Pipeline with a tiny stand-in model)
and DiffusionGemma's decoder prefix attention (canvas queries over [encoder KV cache ; canvas] keys) run sparse."""

import pytest
import torch

from sparse_diffusion import (
    SparseAttentionConfig,
    SparseDiffusionError,
    accelerate_model,
    accelerate_pipeline,
    ops,
    reference,
)
from sparse_diffusion.attention_call import AttentionCall
from sparse_diffusion.controller import SparseController
from sparse_diffusion.interception import SDPAInterceptor, block_pattern
from sparse_diffusion.planning import plan_block_mask
from sparse_diffusion.testing.dlm import build_tiny_masked_lm


MASK = 63


def _block_causal(n, block, valid=None):
    ids = torch.arange(n) // block
    allowed = (ids[:, None] >= ids[None, :])[None, None]
    return allowed if valid is None else allowed & (torch.arange(n) < valid)[None, None, None, :]


def _additive(allowed, dtype=torch.float32):
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def test_block_pattern_turns_block_causal_and_padding_masks_into_tile_tables():
    # 96 tokens in LLaDA2 blocks of 32: tile (i, j) of 16 tokens is allowed when block i // 2 >= block j // 2
    expected = _block_causal(96, 32).view(96, 6, 16).any(-1).view(6, 16, 6).any(1)[None, None]
    masks = (_block_causal(96, 32), _additive(_block_causal(96, 32)), _additive(_block_causal(96, 32), torch.float64))
    assert torch.equal(expected[0, 0], torch.tensor([[i // 2 >= j // 2 for j in range(6)] for i in range(6)]))
    for mask in masks:
        length, allowed = block_pattern(mask, (96, 96), (16, 16))
        assert length == 96 and torch.equal(allowed, expected)
    # keys 90.. are padding for every query: cut off, the last key tile (80..89) is partial but whole
    length, allowed = block_pattern(_block_causal(96, 32, valid=90), (96, 96), (16, 16))
    assert length == 90 and torch.equal(allowed, expected)
    assert block_pattern(torch.arange(96)[None, None, None] < 70, (96, 96), (16, 16)) == (70, None)
    length, allowed = block_pattern(torch.ones(2, 1, 96, 96, dtype=torch.bool), (96, 96), (16, 16))
    assert (length, allowed) == (96, None)


@pytest.mark.parametrize(
    "mask, reason",
    [
        (_block_causal(96, 8), "not aligned to 16x16 tiles"),
        (torch.randn(1, 1, 96, 96), "an additive bias"),
        (torch.ones(1, 1, 96, 96, dtype=torch.bool).index_fill(2, torch.arange(16), False), "a query attends no key"),
        (torch.ones(1, 96, 96, dtype=torch.bool), "not a [B, H, Sq, Sk] mask"),
        (torch.ones(1, 1, 96, 96, dtype=torch.int64), "dtype torch.int64"),
    ],
)
def test_block_pattern_names_why_a_mask_cannot_be_honoured(mask, reason):
    assert reason in block_pattern(mask, (96, 96), (16, 16))


@pytest.mark.parametrize("heads, kv_heads, seq", [(4, 4, 96), (4, 2, 90)])
def test_dense_stats_with_a_tile_table_match_the_masked_reference(heads, kv_heads, seq):
    gen = torch.Generator().manual_seed(heads + seq)
    q = torch.randn(2, heads, seq, 32, generator=gen)
    k, v = (torch.randn(2, kv_heads, seq, 32, generator=gen) for _ in range(2))
    allowed = block_pattern(_block_causal(seq, 32), (seq, seq), (16, 16))[1]
    out, lse, mass = ops.dense_attention_with_stats(q, k, v, 16, allowed=allowed)
    token = _block_causal(seq, 32)
    ref_out, ref_lse = reference.attention_reference(q, k, v, token_mask=token)
    assert float((out.double() - ref_out).abs().max()) < 1e-5 and float((lse - ref_lse).abs().max()) < 1e-5
    _, _, ref_mass = reference.dense_attention_with_stats_reference(q, k, v, (16, 16), allowed=allowed)
    assert float((mass - ref_mass).abs().max()) < 1e-6
    assert not bool(mass.masked_select(~allowed.expand_as(mass)).any()), "masked tiles carry no mass"
    assert torch.allclose(mass.sum(-1), torch.ones(()), atol=1e-5)
    with pytest.raises(SparseDiffusionError, match="bool tile table"):
        ops.dense_attention_with_stats(q, k, v, 16, allowed=allowed[..., :-1])


def test_tile_tables_combine_with_per_sample_key_lengths():
    """`allowed` and `seq_lens_k` together: the build pass attends allowed tiles below each sample's valid keys, the
    planner keeps neither masked tiles nor blocks past the valid keys, and an empty row is refused."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, 96, 16, generator=gen) for _ in range(3))
    allowed = block_pattern(_block_causal(96, 32), (96, 96), (16, 16))[1]
    lens = torch.tensor([96, 70], dtype=torch.int32)
    token = _block_causal(96, 32) & (torch.arange(96) < lens[:, None])[:, None, None, :]
    ref_out, ref_lse = reference.attention_reference(q, k, v, token_mask=token)
    _, _, ref_mass = reference.dense_attention_with_stats_reference(
        q, k, v, (16, 16), allowed=allowed, seq_lens_k=lens
    )
    for backend in ("auto", "reference"):
        out, lse, mass = ops.dense_attention_with_stats(q, k, v, 16, allowed=allowed, seq_lens_k=lens, backend=backend)
        assert float((out.double() - ref_out).abs().max()) < 1e-5 and float((lse - ref_lse).abs().max()) < 1e-5
        assert float((mass - ref_mass).abs().max()) < 1e-6
    assert not bool(mass[1, :, :, 5].any()), "key block 5 (80..95) lies past the second sample's 70 keys"
    config = SparseAttentionConfig(block_size=16, policy="topk", topk_ratio=1.0)
    table = plan_block_mask(mass, config, (96, 96), seq_lens_k=lens, allowed=allowed).to_dense()
    assert torch.equal(table[0], allowed[0].expand(2, 6, 6))
    assert torch.equal(table[1, :, :, :5], allowed[0, :, :, :5].expand(2, 6, 5)) and not bool(table[1, :, :, 5].any())
    diagonal = torch.eye(6, dtype=torch.bool)[None, None]  # query blocks 3..5 of the second sample: no valid key
    with pytest.raises(SparseDiffusionError, match="no allowed key tile"):
        ops.dense_attention_with_stats(q, k, v, 16, allowed=diagonal, seq_lens_k=[96, 40])


@pytest.mark.parametrize("valid, honoured", [((96, 80), True), ((96, 70), False)])
def test_tile_patterns_with_per_sample_padding_need_tile_aligned_padding(valid, honoured):
    """A block-causal mask whose padding differs per batch element: honoured through a per-sample tile table when the
    padding ends on a tile boundary, passed through (with the reason) otherwise; the output is exact either way."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 96, 16, generator=gen) for _ in range(3))
    mask = _block_causal(96, 32) & (torch.arange(96) < torch.tensor(valid)[:, None])[:, None, None, :]
    config = SparseAttentionConfig(
        block_size=16, dense_steps=1, policy="topk", topk_ratio=1.0, sparse_density_limit=1.0
    )
    controller = SparseController(config, ["attn"], lambda: 4)
    controller.begin_forward(900.0, None)  # step 0 of 4 with one warm-up step: the build step
    with SDPAInterceptor(controller, "attn"):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert float((out - expected).abs().max()) < 1e-5
    if honoured:
        assert controller.passthrough == {} and controller.stats["attn"].calls == {"build": 1}
        table = controller.last_masks["attn"].to_dense()
        assert not bool(table[1, :, :, 5].any()) and torch.equal(table[0], table[0] & _block_causal(6, 2)[0])
    else:
        assert dict(controller.passthrough) == {("attn", "explicit attn_mask (not aligned to 16x16 tiles)"): 1}


def test_sparsed_selection_runs_key_padded_calls_dense_and_says_so():
    config = SparseAttentionConfig(block_size=16, dense_steps=1, policy="topk", sparsed_selection=True)
    controller = SparseController(config, ["attn"], lambda: 4)
    controller.begin_forward(900.0, None)
    q, k, v = torch.randn(2, 2, 64, 16), torch.randn(2, 2, 60, 16), torch.randn(2, 2, 60, 16)
    dense = torch.zeros(2, 2, 64, 16)
    assert controller.attention(AttentionCall("attn", q, k, v, None, lambda: dense, seq_lens_k=(60, 50))) is dense
    (reason,) = controller.stats["attn"].fallbacks
    assert "build failed, ran dense: sparsed_selection does not support masked attention" in reason


@pytest.fixture(scope="module")
def llada2():
    from diffusers import BlockRefinementScheduler, LLaDA2Pipeline

    model = build_tiny_masked_lm("llada2", block_length=32, dtype=torch.float64, locality=3.0, seed=4)
    pipe = LLaDA2Pipeline(model=model, scheduler=BlockRefinementScheduler(block_length=32))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _llada2(pipe, gen_length=76, steps=4):
    """Prompt 20 + 76 generated = 96 tokens: the canvas grows 32 -> 64 -> 96 over three blocks of 32. The scheduler
    commits 8 tokens per step, so the first block (12 masks) takes 2 steps and one more forward that finds it done;
    the others take 4: 11 forwards for `num_timesteps` = 12."""
    prompt = torch.randint(0, MASK, (1, 20), generator=torch.Generator().manual_seed(0))
    return pipe(
        input_ids=prompt,
        gen_length=gen_length,
        block_length=32,
        num_inference_steps=steps,
        mask_token_id=MASK,
        output_type="seq",
        eos_early_stop=False,
        editing_threshold=None,
        threshold=1.1,
    ).sequences


def test_llada2_all_dense_and_keep_all_masks_are_identical(llada2):
    baseline = _llada2(llada2)
    assert llada2.num_timesteps == 12 and not bool((baseline == MASK).any())
    with accelerate_pipeline(llada2, dense_steps=12, block_size=16) as handle:
        dense = _llada2(llada2)
        report = handle.report()
    assert torch.equal(dense, baseline)
    assert report["adapter"] == "llada2" and report["calls"] == {"dense": 22, "build": 0, "sparse": 0, "fallback": 0}
    with accelerate_pipeline(
        llada2, dense_steps=0.25, block_size=16, policy="topk", topk_ratio=1.0, sparse_density_limit=1.0
    ) as handle:
        keep_all = _llada2(llada2)
        report = handle.report()
        masks = handle.masks()
    assert torch.equal(keep_all, baseline)
    # steps 0-1 dense, step 2 builds on the 32-token canvas; steps 3 and 7 re-plan on the grown canvas
    assert report["runs"] == [
        {"total_steps": 12, "dense_steps": 3, "steps_run": 11, "sparse_steps": 6, "dense_fallback_steps": 2}
    ]
    assert report["calls"] == {"dense": 4, "build": 6, "sparse": 12, "fallback": 0}
    assert report["replans"] == {"input geometry changed": 4} and report["passthrough"] == []
    expected = block_pattern(_block_causal(96, 32), (96, 96), (16, 16))[1]
    for mask in masks.values():  # keep-all inside the block-causal pattern: exactly the allowed tiles
        assert mask.seq_lengths == (96, 96) and torch.equal(mask.to_dense(), expected.expand(1, 4, 6, 6))


def test_llada2_sparse_masks_stay_inside_the_block_causal_pattern(llada2):
    with accelerate_pipeline(
        llada2,
        dense_steps=0.25,
        block_size=16,
        policy="topk",
        topk_ratio=0.3,
        sparse_density_limit=1.0,
        refresh_threshold=0,
    ) as handle:
        out = _llada2(llada2)
        assert torch.equal(_llada2(llada2), out), "every call starts fresh (check_inputs marks it)"
        report = handle.report()
        masks = handle.masks()
    assert out.shape == (1, 76) and not bool((out == MASK).any()) and len(report["runs"]) == 2
    assert report["sparse_steps"] == 6 and report["calls"]["fallback"] == 0 and report["passthrough"] == []
    allowed = block_pattern(_block_causal(96, 32), (96, 96), (16, 16))[1]
    for name, mask in masks.items():
        table = mask.to_dense()
        assert not bool((table & ~allowed).any()), name
        assert bool(table.diagonal(dim1=-2, dim2=-1).all())
        assert float(mask.density().mean()) < float(allowed.float().mean())
    assert 0 < report["density"] < 1


def test_llada2_tail_padding_is_cut_and_misaligned_blocks_pass_through(llada2):
    baseline = _llada2(llada2, gen_length=70)  # 90 real tokens in a 96-token canvas: the last 6 keys are padding
    with accelerate_pipeline(
        llada2, dense_steps=0.25, block_size=16, policy="topk", topk_ratio=1.0, sparse_density_limit=1.0
    ) as handle:
        assert torch.equal(_llada2(llada2, gen_length=70), baseline)
        assert handle.masks()["layers.0.attn"].seq_lengths == (96, 90)
        assert handle.report()["passthrough"] == []
    with accelerate_pipeline(llada2, dense_steps=0.25, block_size=64, sparse_density_limit=1.0) as handle:
        assert torch.equal(_llada2(llada2, gen_length=70), baseline)
        report = handle.report()
    assert report["calls"] == {"dense": 0, "build": 0, "sparse": 0, "fallback": 0}
    assert {p["reason"] for p in report["passthrough"]} == {  # the first 32-token canvas is too short anyway
        "explicit attn_mask (not aligned to 64x64 tiles)",
        "sequence of 32 tokens is shorter than two key blocks of 64",
    }


@pytest.fixture(scope="module")
def gemma():
    """A tiny random float64 DiffusionGemma (canvas 32, sliding window 24: the sliding layer keeps 23 cached tokens),
    a 41-token prompt and its plain `generate()` output: 3 canvases of 12 denoising steps (prefixes 23 and 41..105,
    none a multiple of the 16-token tiles)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    text = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=16,
        sliding_window=24,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=32,
        layer_types=["sliding_attention", "full_attention"],
    )
    vision = dict(
        num_hidden_layers=1,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = (
            DiffusionGemmaForBlockDiffusion(
                DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=32)
            )
            .eval()
            .double()
        )
    model.set_experts_implementation("eager")  # grouped_mm has no float64 kernel
    prompt = torch.randint(3, 100, (1, 41), generator=torch.Generator().manual_seed(0))

    def generate(ids=prompt, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            return model.generate(ids, max_new_tokens=96, max_denoising_steps=12, **kwargs).sequences

    return model, generate, generate()


def _decoder_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in (model.model.encoder, model.model.decoder))


def test_diffusion_gemma_dense_warmup_over_all_steps_is_token_identical(gemma):
    model, generate, baseline = gemma
    with accelerate_model(model, block_size=16, dense_steps=1000) as handle:
        assert torch.equal(generate(), baseline)
        report = handle.report()
    assert report["calls"] == {"dense": 2 * 36, "build": 0, "sparse": 0, "fallback": 0} and report["passthrough"] == []
    assert [run["steps_run"] for run in report["runs"]] == [12, 12, 12]  # one call per canvas


@pytest.mark.parametrize(
    "keep_all",
    [
        dict(policy="mass", mass_threshold=1.0, cache_complement=False),
        dict(policy="topk", topk_ratio=1.0),  # with the adapter's default complement caching
    ],
    ids=["mass", "topk-complement"],
)
def test_diffusion_gemma_keep_all_sparse_decoder_attention_is_token_identical(gemma, keep_all):
    model, generate, baseline = gemma
    hooks = _decoder_hooks(model)
    with accelerate_model(model, block_size=16, sparse_density_limit=1.0, **keep_all) as handle:
        assert torch.equal(generate(), baseline)
        report = handle.report()
        masks = handle.masks()
        assert _decoder_hooks(model) > hooks
    assert handle.layer_names == ["model.decoder.layers.0.self_attn", "model.decoder.layers.1.self_attn"]
    # per canvas and layer: 3 dense warm-up steps, the build, 8 sparse steps; nothing passes through as cross-attention
    assert report["calls"] == {"dense": 18, "build": 6, "sparse": 48, "fallback": 0} and report["passthrough"] == []
    assert report["density"] == 1.0 and [run["sparse_steps"] for run in report["runs"]] == [8, 8, 8]
    assert masks["model.decoder.layers.0.self_attn"].seq_lengths == (32, 55)  # 23 cached tokens + canvas
    assert masks["model.decoder.layers.1.self_attn"].seq_lengths == (32, 137)  # prompt + 2 canvases + canvas
    assert _decoder_hooks(model) == hooks and torch.equal(generate(), baseline), "removed on exit"


def test_diffusion_gemma_defaults_run_sparse_prefix_attention(gemma):
    model, generate, baseline = gemma
    with accelerate_model(model, block_size=16) as handle:
        out = generate()
        report = handle.report()
        masks = handle.masks()
    config = handle.controller.config
    assert (config.policy, config.topk_ratio, config.cache_complement, config.dense_steps) == ("topk", 0.1, True, 4)
    assert out.shape == baseline.shape and report["passthrough"] == []
    calls = report["calls"]
    assert (calls["dense"], calls["build"], calls["sparse"] + calls["fallback"]) == (18, 6, 48) and calls[
        "sparse"
    ] >= 16
    reasons = {r for layer in handle.controller.stats.values() for r in layer.fallbacks}
    assert all(r.startswith("planned density above the sparse break-even 0.60 of backend gather") for r in reasons)
    assert 0.3 < report["density"] < 0.7
    table = masks["model.decoder.layers.1.self_attn"].to_dense()[0]  # [H, QB = 2, KB = 9], prefix 105
    assert not bool(table[:, :, :6].all()) and bool(
        table[:, :, 6:].all()
    )  # canvas key blocks 6-8 kept, prefix not all


def test_diffusion_gemma_static_cache_slots_are_cut_off_and_served(gemma):
    """A static cache gives keys [cache ; canvas ; unused slots] with the unused slots masked: they are cut off, which
    leaves the canvas queries as the last keys again, and the calls run sparse."""
    model, generate, _ = gemma
    static = dict(cache_implementation="static", disable_compile=True)
    baseline = generate(**static)
    keep_all = dict(policy="mass", mass_threshold=1.0, sparse_density_limit=1.0)
    with accelerate_model(model, block_size=16, **keep_all) as handle:
        assert torch.equal(generate(**static), baseline)
        report = handle.report()
        lengths = {name: mask.seq_lengths for name, mask in handle.masks().items()}
    assert report["calls"] == {"dense": 18, "build": 6, "sparse": 48, "fallback": 0} and report["passthrough"] == []
    assert lengths == {"model.decoder.layers.0.self_attn": (32, 55), "model.decoder.layers.1.self_attn": (32, 137)}


def test_diffusion_gemma_padding_masks_that_are_not_tile_patterns_pass_through(gemma):
    model, generate, _ = gemma
    prompts = torch.randint(3, 100, (2, 41), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones(2, 41, dtype=torch.long)
    attention_mask[1, :9] = 0  # left padding: the full layer's keys are masked per sample, not per tile
    baseline = generate(prompts, attention_mask=attention_mask)
    keep_all = dict(policy="mass", mass_threshold=1.0, sparse_density_limit=1.0)
    with accelerate_model(model, block_size=16, **keep_all) as handle:
        assert torch.equal(generate(prompts, attention_mask=attention_mask), baseline)
        report = handle.report()
    assert {(p["layer"], p["reason"]) for p in report["passthrough"]} == {
        ("model.decoder.layers.1.self_attn", "explicit attn_mask (not aligned to 16x16 tiles)")
    }
    assert handle.controller.stats["model.decoder.layers.0.self_attn"].calls["sparse"] > 0  # window past the padding


def test_diffusion_gemma_fractional_dense_steps_without_num_inference_steps_fail_at_accelerate_time(gemma):
    """The encoder opens each canvas's call without a step count, so a fraction cannot be resolved: say so up front,
    not in the middle of `generate()` after the encoder has run."""
    from sparse_diffusion.errors import SparseDiffusionError

    model, _, _ = gemma
    hooks = _decoder_hooks(model)
    with pytest.raises(SparseDiffusionError, match=r"dense_steps=0.25 is a fraction.*num_inference_steps"):
        accelerate_model(model, block_size=16, dense_steps=0.25)
    assert _decoder_hooks(model) == hooks
