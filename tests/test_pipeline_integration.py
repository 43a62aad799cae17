"""accelerate_pipeline on real (tiny, random-weight) diffusers pipelines against the untouched dense pipeline."""

import json

import numpy as np
import pytest
import torch
from pipeline_helpers import run_pipeline, spy_attention

from sparse_diffusion import SparseAttentionConfig, SparseDiffusionError, accelerate_model, accelerate_pipeline
from sparse_diffusion.api import count_denoising_steps
from sparse_diffusion.attention_call import AttentionCall
from sparse_diffusion.hooks import ATTENTION_HOOK, DENOISER_HOOK
from sparse_diffusion.testing import (
    build_tiny_cogvideox_pipeline,
    build_tiny_flux_pipeline,
    build_tiny_wan_pipeline,
)


STEPS = 4
CALLS = {
    "wan": dict(prompt="a red circle moving left", height=128, width=128, num_frames=9, guidance_scale=5.0),
    "cogvideox": dict(prompt="a blue square", height=64, width=64, num_frames=9, guidance_scale=6.0),
    "flux": dict(prompt="a green triangle", height=64, width=64, guidance_scale=3.5, max_sequence_length=32),
}
BUILDERS = {
    "wan": build_tiny_wan_pipeline,
    "cogvideox": build_tiny_cogvideox_pipeline,
    "flux": build_tiny_flux_pipeline,
}
# Forwards of the denoiser per step: Wan runs CFG as two passes, CogVideoX batches it, Flux has no CFG pass.
FORWARDS_PER_STEP = {"wan": 2, "cogvideox": 1, "flux": 1}


def _run(pipe, family, steps=STEPS, seed=0, **extra):
    return run_pipeline(pipe, CALLS[family], steps, seed, **extra)


@pytest.fixture(scope="module")
def pipes():
    built = {}
    for family, build in BUILDERS.items():
        pipe = build()
        pipe.set_progress_bar_config(disable=True)
        built[family] = (pipe, _run(pipe, family))
    return built


@pytest.mark.parametrize("family", ["wan", "cogvideox", "flux"])
def test_all_dense_steps_is_identical_to_untouched_pipeline(pipes, family):
    pipe, baseline = pipes[family]
    with accelerate_pipeline(pipe, dense_steps=STEPS, block_size=16, sparse_density_limit=1.0) as handle:
        out = _run(pipe, family)
        report = handle.report()
    assert np.array_equal(out, baseline)
    assert report["dense_steps"] == STEPS and report["sparse_steps"] == 0
    with accelerate_pipeline(pipe, dense_steps=STEPS + 5, block_size=16) as handle:
        _run(pipe, family)
        assert handle.report()["dense_steps"] == STEPS, "warm-up longer than the call is clamped in the report"
    assert report["calls"]["build"] == 0 and report["calls"]["sparse"] == 0 and report["calls"]["dense"] > 0
    assert np.array_equal(_run(pipe, family), baseline), "leaving the context manager must remove the hooks"


@pytest.mark.parametrize("family", ["wan", "cogvideox", "flux"])
def test_sparse_run_report_is_consistent_and_remove_restores(pipes, family):
    pipe, baseline = pipes[family]
    handle = accelerate_pipeline(
        pipe,
        dense_steps=1,
        block_size=16,
        sparse_density_limit=1.0,
        policy="topk",
        topk_ratio=0.5,
        refresh_threshold=0,
    )
    calls = spy_attention(handle)
    out = _run(pipe, family)
    report = json.loads(json.dumps(handle.report()))
    n_layers = len(handle.layer_names)
    per_step = n_layers * FORWARDS_PER_STEP[family]
    assert np.isfinite(out).all() and out.shape == baseline.shape
    assert report["total_steps"] == STEPS and report["dense_steps"] == 1 and report["sparse_steps"] == STEPS - 1
    assert report["calls"] == {"dense": 0, "build": per_step, "sparse": per_step * (STEPS - 1), "fallback": 0}
    assert report["dense_fallback_steps"] == 0
    assert sorted({c[0] for c in calls}) == list(range(STEPS))
    assert 0 < report["density"] < 1
    assert 0 < report["kept_mass"] <= 1.05 and 0 < report["build_kept_mass"] <= 1.0
    for layer in report["layers"].values():
        assert len(layer["head_density"]) == pipe.transformer.config.num_attention_heads
        assert layer["calls"]["sparse"] == FORWARDS_PER_STEP[family] * (STEPS - 1)
    assert report["fallbacks"] == [] and report["passthrough"] == []
    assert report["weights"] == "random" and report["adapter"] == family
    handle.remove()
    assert (
        not hasattr(pipe.transformer._diffusers_hook, "hooks")
        or DENOISER_HOOK not in pipe.transformer._diffusers_hook.hooks
    )
    assert np.array_equal(_run(pipe, family), baseline)


def test_keep_all_sparse_path_equals_dense_and_partial_masks_stay_close(pipes):
    pipe, baseline = pipes["wan"]
    with accelerate_pipeline(
        pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0, mass_threshold=1.0
    ) as handle:
        out = _run(pipe, "wan")
        report = handle.report()
    assert report["calls"]["sparse"] > 0 and report["density"] == 1.0
    assert float(np.abs(out - baseline).max()) < 1e-5, "keep-all masks must reproduce dense attention"
    with accelerate_pipeline(
        pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0, mass_threshold=0.9
    ) as handle:
        out = _run(pipe, "wan")
        report = handle.report()
    assert report["density"] < 1.0
    assert abs(report["kept_mass"] - report["build_kept_mass"]) < 0.05
    assert float(np.abs(out - baseline).mean()) < 0.01


def test_split_and_batched_cfg_give_the_same_step_indices(pipes):
    seen = {}
    for family in ("wan", "cogvideox"):
        pipe, _ = pipes[family]
        with accelerate_pipeline(pipe, dense_steps=2, block_size=16, sparse_density_limit=1.0) as handle:
            calls = spy_attention(handle)
            _run(pipe, family)
            report = handle.report()
        steps = [c[0] for c in calls]
        per_step = len(handle.layer_names) * FORWARDS_PER_STEP[family]
        assert steps == sorted(steps)
        assert [steps.count(s) for s in range(STEPS)] == [per_step] * STEPS
        seen[family] = (sorted(set(steps)), report["dense_steps"], report["sparse_steps"])
        if family == "wan":
            assert {c[1][0] for c in calls} == {"cond", "uncond"}
        else:
            assert {c[3][0] for c in calls} == {2}, "CogVideoX batches CFG: B=2 in one call"
    assert seen["wan"] == seen["cogvideox"] == (list(range(STEPS)), 2, 2)


def test_second_order_scheduler_counts_steps_not_forwards(pipes):
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe, _ = pipes["wan"]
    original = pipe.scheduler
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(original.config)
    try:
        with accelerate_pipeline(pipe, dense_steps=2, block_size=16, sparse_density_limit=1.0) as handle:
            calls = spy_attention(handle)
            out = _run(pipe, "wan", steps=3)
            report = handle.report()
        assert len(pipe.scheduler.timesteps) == 5  # Heun: 2N - 1 model evaluations
    finally:
        pipe.scheduler = original
    assert np.isfinite(out).all()
    assert report["total_steps"] == 3 and report["dense_steps"] == 2 and report["sparse_steps"] == 1
    assert sorted({c[0] for c in calls}) == [0, 1, 2]
    assert count_denoising_steps([999, 500, 500, 10, 10]) == 3


def test_only_denoiser_self_attention_is_intercepted(pipes):
    pipe, _ = pipes["wan"]
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0) as handle:
        calls = spy_attention(handle)
        _run(pipe, "wan")
    assert {c[2] for c in calls} == {"blocks.0.attn1", "blocks.1.attn1"}
    assert all(c[3][2] == 3 * 8 * 8 for c in calls)  # video tokens only; text/VAE/cross-attention untouched
    # the generic adapter hooks attn2 too, but cross-attention (Sq != Sk) passes through and is reported
    with accelerate_pipeline(
        pipe, adapter="generic", dense_steps=1, block_size=16, sparse_density_limit=1.0
    ) as handle:
        _run(pipe, "wan")
        report = handle.report()
    reasons = {(p["layer"], p["reason"]) for p in report["passthrough"]}
    assert ("blocks.0.attn2", "cross-attention (Sq != Sk)") in reasons
    assert report["calls"]["sparse"] > 0


def test_fraction_dense_layers_refresh_and_identical_repeat_calls(pipes):
    pipe, _ = pipes["wan"]
    with accelerate_pipeline(
        pipe, dense_steps=0.5, block_size=16, sparse_density_limit=1.0, dense_layers=(0,), refresh_threshold=1.0
    ) as handle:
        first = _run(pipe, "wan")
        second = _run(pipe, "wan")
        report = handle.report()
    assert np.array_equal(first, second), "state must reset between calls"
    assert [r["dense_steps"] for r in report["runs"]] == [2, 2]
    assert report["layers"]["blocks.0.attn1"]["always_dense"]
    assert report["layers"]["blocks.0.attn1"]["calls"].get("sparse", 0) == 0
    # refresh_threshold=1.0: every sparse step's estimate falls short, so the next step re-plans
    assert report["replans"].get("kept-mass estimate below refresh_threshold", 0) > 0
    # effective density: re-plans (and fallbacks) after the warm-up ran the full attention and count as density 1
    layer = report["layers"]["blocks.1.attn1"]
    n_sparse, n_full = layer["calls"]["sparse"], sum(layer["replans"].values()) + layer["calls"].get("fallback", 0)
    expected = (layer["density"] * n_sparse + n_full) / (n_sparse + n_full)
    assert layer["effective_density"] == pytest.approx(expected, abs=1e-5)
    assert layer["density"] < layer["effective_density"] < 1
    assert report["density"] < report["effective_density"] < 1
    assert report["layers"]["blocks.0.attn1"]["effective_density"] == 1.0  # a dense layer counts as full work


def test_accelerate_twice_reconfigures_instead_of_stacking(pipes):
    pipe, baseline = pipes["wan"]
    first = accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0)
    second = accelerate_pipeline(pipe, SparseAttentionConfig(dense_steps=STEPS, block_size=32))
    assert first.removed and not second.removed
    registry = pipe.transformer.blocks[0].attn1._diffusers_hook
    assert list(registry.hooks) == [ATTENTION_HOOK]
    assert np.array_equal(_run(pipe, "wan"), baseline)
    second.remove()


def test_clear_errors_for_unsupported_models_and_bad_config(pipes):
    pipe, _ = pipes["wan"]
    with pytest.raises(SparseDiffusionError, match="not a supported denoiser"):
        accelerate_model(pipe.vae)
    with pytest.raises(SparseDiffusionError, match="dense_layers entry"):
        accelerate_pipeline(pipe, dense_layers=("nope",))
    with pytest.raises(SparseDiffusionError, match="unknown SparseAttentionConfig fields"):
        accelerate_pipeline(pipe, dense_step=3)
    with pytest.raises(SparseDiffusionError, match="no `transformer`"):
        accelerate_pipeline(object())
    with pytest.raises(SparseDiffusionError, match="fraction"):
        accelerate_model(pipe.transformer, dense_steps=0.5, block_size=16)
    with pytest.raises(SparseDiffusionError, match="cannot return the LSE"):
        accelerate_pipeline(pipe, backend="flex")
    with pytest.raises(SparseDiffusionError, match="adapter"):
        accelerate_pipeline(pipe, adapter=123)
    assert DENOISER_HOOK not in pipe.transformer._diffusers_hook.hooks, "failed calls leave no hooks"


def test_accelerate_model_counts_calls_from_timesteps(pipes):
    pipe, baseline = pipes["wan"]
    with accelerate_model(
        pipe.transformer, num_inference_steps=STEPS, dense_steps=STEPS, block_size=16, sparse_density_limit=1.0
    ) as handle:
        assert np.array_equal(_run(pipe, "wan"), baseline)
        _run(pipe, "wan")
        assert len(handle.report()["runs"]) == 2


def test_dense_masks_above_break_even_run_dense_and_say_so(pipes):
    pipe, baseline = pipes["wan"]
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, mass_threshold=1.0, sparse_density_limit=0.5) as h:
        out = _run(pipe, "wan")
        report = h.report()
    assert report["calls"]["sparse"] == 0 and report["sparse_steps"] == 0
    assert report["calls"]["fallback"] == report["calls"]["build"] * (STEPS - 1)
    assert report["dense_steps"] + report["dense_fallback_steps"] == STEPS and report["planned_density"] == 1.0
    assert all(layer["planned_density"] == 1.0 for layer in report["layers"].values())
    assert {f["reason"] for f in report["fallbacks"]} == {
        "planned density above the sparse break-even 0.50 of backend cpu; ran dense"
    }
    assert float(np.abs(out - baseline).max()) < 1e-5


@pytest.mark.parametrize("family, text_len", [("cogvideox", 226), ("flux", 32)])
def test_joint_text_tokens_are_dense_rows_and_columns(pipes, family, text_len):
    pipe, _ = pipes[family]
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, policy="topk", topk_ratio=0.1) as handle:
        _run(pipe, family)
        masks = handle.masks()
    text_blocks = -(-text_len // 16)
    for name, mask in masks.items():
        table = mask.to_dense()
        assert table[:, :, :text_blocks, :].all() and table[:, :, :, :text_blocks].all(), name
        assert not table[:, :, text_blocks:, text_blocks:].all(), "video/image tiles must be sparse"


def test_interrupted_call_or_direct_forward_does_not_leak_into_the_next_call(pipes):
    pipe, _ = pipes["wan"]
    with accelerate_pipeline(pipe, dense_steps=2, block_size=16, sparse_density_limit=1.0) as handle:
        expected = _run(pipe, "wan")

        def stop(p, i, t, kwargs):
            if i == 1:
                raise KeyboardInterrupt
            return kwargs

        with pytest.raises(KeyboardInterrupt):
            _run(pipe, "wan", callback_on_step_end=stop)
        assert np.array_equal(_run(pipe, "wan"), expected)
        latents = torch.randn(1, 16, 3, 16, 16)
        pipe.transformer(latents, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 8, 32))
        assert np.array_equal(_run(pipe, "wan"), expected)
        runs = handle.report()["runs"]
    assert [r["sparse_steps"] for r in runs][-1] == STEPS - 2 and runs[-1]["dense_steps"] == 2
    assert [r["steps_run"] for r in runs][:2] == [STEPS, 2], "the interrupted call shows the steps it ran"


def test_model_cpu_offload_keeps_the_sparse_path(pipes):
    pipe = build_tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    expected = None
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0) as handle:
        expected = _run(pipe, "wan")
    pipe.enable_model_cpu_offload(device="cpu")
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0) as handle:
        first, second = _run(pipe, "wan"), _run(pipe, "wan")
        report = handle.report()
    assert [r["sparse_steps"] for r in report["runs"]] == [STEPS - 1, STEPS - 1]
    assert np.array_equal(first, second) and float(np.abs(first - expected).max()) < 1e-5


def test_batch_of_prompts_matches_each_prompt_alone():
    """Masks, LSE and kept-mass estimates are per batch element: each sample equals its own batch-1 run."""
    pipe = build_tiny_wan_pipeline(locality=3.0)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle moving left", "a blue square"]
    kwargs = dict(CALLS["wan"], num_inference_steps=STEPS, output_type="np")
    kwargs.pop("prompt")

    def run(idx):
        gens = [torch.Generator().manual_seed(i) for i in idx]
        return pipe(prompt=[prompts[i] for i in idx], generator=gens, **kwargs).frames

    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0) as handle:
        batch = run([0, 1])
        report = handle.report()
        single = [run([i])[0] for i in (0, 1)]
    assert report["sparse_steps"] == STEPS - 1 and report["density"] < 0.9
    for i in (0, 1):
        assert float(np.abs(batch[i] - single[i]).max()) < 1e-5


def test_consecutive_calls_with_other_geometry_and_dtype_match_fresh_runs(pipes):
    pipe, _ = pipes["wan"]
    small = dict(height=96, width=96)
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0) as handle:
        first = _run(pipe, "wan")
        other = _run(pipe, "wan", **small)
        again = _run(pipe, "wan")
        assert [r["total_steps"] for r in handle.report()["runs"]] == [STEPS] * 3
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0):
        fresh_other = _run(pipe, "wan", **small)
    assert np.array_equal(first, again) and np.array_equal(other, fresh_other)
    assert other.shape[1:3] == (96, 96)


def test_combines_with_first_block_cache(pipes):
    from diffusers.hooks import FirstBlockCacheConfig

    pipe, _ = pipes["wan"]
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    try:
        with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0) as handle:
            out = _run(pipe, "wan")
            report = handle.report()
    finally:
        pipe.transformer.disable_cache()
    assert np.isfinite(out).all() and report["sparse_steps"] >= 1 and report["fallbacks"] == []


def test_wan22_two_experts_get_separate_plans():
    from diffusers import WanPipeline

    base = build_tiny_wan_pipeline(locality=3.0)
    expert_2 = build_tiny_wan_pipeline(seed=1, locality=3.0).transformer
    pipe = WanPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=base.vae,
        scheduler=base.scheduler,
        transformer=base.transformer,
        transformer_2=expert_2,
        boundary_ratio=0.9,
    )
    pipe.set_progress_bar_config(disable=True)
    steps = 6
    baseline = _run(pipe, "wan", steps=steps)
    with accelerate_pipeline(pipe, dense_steps=steps, block_size=16) as handle:
        assert np.array_equal(_run(pipe, "wan", steps=steps), baseline)
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0) as handle:
        calls = spy_attention(handle)
        out = _run(pipe, "wan", steps=steps)
        report = handle.report()
    assert np.isfinite(out).all()
    first = {c[0] for c in calls if not c[2].startswith("transformer_2.")}
    second = {c[0] for c in calls if c[2].startswith("transformer_2.")}
    assert first and second and max(first) < min(second), "the expert switch happens at the boundary timestep"
    layers = report["layers"]
    assert set(layers) == {
        "blocks.0.attn1",
        "blocks.1.attn1",
        "transformer_2.blocks.0.attn1",
        "transformer_2.blocks.1.attn1",
    }
    for name in ("transformer_2.blocks.0.attn1", "transformer_2.blocks.1.attn1"):
        assert layers[name]["calls"]["build"] == 2 and layers[name]["calls"]["sparse"] > 0
        assert layers[name]["replans"] == {"no plan for this context": 2}
    # the switch step re-plans every layer of the second expert, so no layer runs sparse in that step
    assert report["sparse_steps"] == steps - 2 and report["dense_fallback_steps"] == 1
    assert "WanTransformer3DModel" in report["model"]
    assert np.array_equal(_run(pipe, "wan", steps=steps), baseline), "remove() restores both experts"


def test_compiled_transformer_runs_hooked_attention_eagerly_without_recompiles():
    from torch._dynamo.utils import counters

    pipe = build_tiny_wan_pipeline(locality=3.0)
    pipe.set_progress_bar_config(disable=True)
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0):
        expected = _run(pipe, "wan")
    handle = accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0)
    pipe.transformer.compile(backend="eager")
    torch._dynamo.reset()
    first = _run(pipe, "wan")
    graphs = counters["stats"]["unique_graphs"]
    second = _run(pipe, "wan")
    assert counters["stats"]["unique_graphs"] == graphs, "no recompilation once warm"
    assert np.array_equal(first, second) and float(np.abs(first - expected).max()) < 1e-5
    assert handle.report()["calls"]["sparse"] == 2 * 2 * 2 * (STEPS - 1)
    handle.remove()


def test_flux_true_cfg_counts_two_forwards_as_one_step(pipes):
    pipe, _ = pipes["flux"]
    with accelerate_pipeline(pipe, dense_steps=2, block_size=64, sparse_density_limit=1.0) as handle:
        calls = spy_attention(handle)
        out = _run(pipe, "flux", negative_prompt="blurry", true_cfg_scale=2.0)
        report = handle.report()
    steps = [c[0] for c in calls]
    per_step = len(handle.layer_names) * 2
    assert [steps.count(s) for s in range(STEPS)] == [per_step] * STEPS
    assert {c[1][0] for c in calls} == {"cond", "uncond"}
    assert np.isfinite(out).all() and report["dense_steps"] == 2 and report["sparse_steps"] == STEPS - 2


def test_context_parallel_models_are_refused(pipes):
    pipe, _ = pipes["wan"]
    pipe.transformer._parallel_config = object()  # what diffusers' enable_parallelism() sets
    try:
        with pytest.raises(SparseDiffusionError, match="parallelism"):
            accelerate_pipeline(pipe)
    finally:
        pipe.transformer._parallel_config = None


def test_wan_image_to_video():
    from PIL import Image

    from sparse_diffusion.testing import build_tiny_wan_i2v_pipeline

    pytest.importorskip("ftfy")
    pipe = build_tiny_wan_i2v_pipeline()
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    call = dict(CALLS["wan"], image=image)
    baseline = run_pipeline(pipe, call, STEPS)
    with accelerate_pipeline(pipe, dense_steps=STEPS, block_size=16) as handle:
        assert np.array_equal(run_pipeline(pipe, call, STEPS), baseline)
        assert handle.adapter.family == "wan"
    with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0) as handle:
        calls = spy_attention(handle)
        out = run_pipeline(pipe, call, STEPS)
        report = handle.report()
    assert np.isfinite(out).all() and report["sparse_steps"] == STEPS - 1
    assert {c[2] for c in calls} == {"blocks.0.attn1", "blocks.1.attn1"}, "image cross-attention attn2 stays dense"
    assert report["fallbacks"] == [] and report["passthrough"] == []
    assert np.array_equal(run_pipeline(pipe, call, STEPS), baseline)


def test_token_tiles_keep_exact_attention_and_change_the_mask_layout(pipes):
    pipe, baseline = pipes["wan"]
    with accelerate_pipeline(
        pipe, dense_steps=1, block_size=16, mass_threshold=1.0, sparse_density_limit=1.0, token_tile=(1, 4, 4)
    ) as handle:
        out = _run(pipe, "wan")
        report = handle.report()
    assert report["calls"]["sparse"] > 0 and float(np.abs(out - baseline).max()) < 1e-5
    tables = {}
    for tile in (None, (1, 4, 4)):
        with accelerate_pipeline(pipe, dense_steps=1, block_size=16, sparse_density_limit=1.0, token_tile=tile) as h:
            tiled = _run(pipe, "wan")
            tables[tile] = h.masks()["blocks.0.attn1"].to_dense()
        assert np.isfinite(tiled).all()
    assert not torch.equal(tables[None], tables[(1, 4, 4)]), "blocks are tiles, not raster slices"


class _ToyAttention(torch.nn.Module):
    """Self-attention whose padded text keys are masked (bool [B, 1, 1, N])."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(32, 96)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 16)).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)


class _ToyDenoiser(torch.nn.Module):
    """[video | text] with the text padding at the end (HunyuanVideo), or [text | video] with the padded text first
    (Qwen-Image); `valid` holds each batch element's valid text tokens."""

    def __init__(self, text_first: bool = False):
        super().__init__()
        self.attn = _ToyAttention()
        self.text_first = text_first

    def forward(self, hidden_states, timestep, encoder_hidden_states, valid):
        text = torch.arange(encoder_hidden_states.shape[1]) < valid[:, None]
        video = torch.ones(hidden_states.shape[:2], dtype=torch.bool)
        parts = [(encoder_hidden_states, text), (hidden_states, video)]
        if not self.text_first:
            parts.reverse()
        x = torch.cat([p[0] for p in parts], dim=1)
        mask = torch.cat([p[1] for p in parts], dim=1)[:, None, None, :]
        return self.attn(x, mask) * (timestep / 1000)


def _record_layout(controller) -> list:
    """Every `AttentionCall` the controller serves (call index, seq_lens_k, rotation, ...)."""
    seen, original = [], controller.attention

    def attention(call):
        seen.append(call)
        return original(call)

    controller.attention = attention
    return seen


@pytest.mark.parametrize("text_first", [False, True], ids=["text_last", "text_first"])
def test_key_padding_masks_run_sparse_with_per_sample_lengths(text_first):
    """Padded text keys, one length for the batch or one per sample, text last or first: the masked calls run
    sparse (padded keys moved to the end, cut, and excluded per sample) and keep-all masks match the dense output."""
    from sparse_diffusion.pipelines.base import Adapter

    toy = _ToyDenoiser(text_first).eval()
    position = "first" if text_first else "last"
    adapter = Adapter(
        family="toy", transformer_classes=("_ToyDenoiser",), self_attention="attn", text_position=position
    )
    video, text = torch.randn(2, 90, 32), torch.randn(2, 20, 32)

    def run(valid):
        with torch.no_grad():
            return [toy(video, torch.tensor(float(t)), text, valid) for t in (900, 600, 300, 100)]

    for valid, seq_lens in (([10, 10], None), ([10, 3], (100, 93))):
        baseline = run(torch.tensor(valid))
        with accelerate_model(
            toy,
            adapter=adapter,
            num_inference_steps=4,
            dense_steps=1,
            block_size=16,
            policy="topk",
            topk_ratio=1.0,
            sparse_density_limit=1.0,
        ) as handle:
            seen = _record_layout(handle.controller)
            outs = run(torch.tensor(valid))
            report = handle.report()
            mask = handle.masks()["attn"]
        assert report["passthrough"] == [] and report["calls"] == {"dense": 0, "build": 1, "sparse": 3, "fallback": 0}
        assert mask.seq_lengths == (110, 100), "padded keys moved to the end and cut to the longest valid length"
        assert {(call.seq_lens_k, call.rotation) for call in seen} == {(seq_lens, 20 if text_first else 0)}
        for a, b in zip(outs, baseline):
            assert float((a - b).abs().max()) < 1e-5
    table = mask.to_dense()  # per-sample lengths 100 and 93: key block 6 (96..99) is past the second sample's keys
    assert table[0].all() and table[1, :, :, :6].all() and not table[1, :, :, 6].any()


def test_other_masks_pass_through():
    """A key mask whose padding is not one run per sample ending at a shared position, nor a tile pattern, cannot be
    honoured."""
    from sparse_diffusion.controller import SparseController
    from sparse_diffusion.interception import SDPAInterceptor

    toy = _ToyAttention().eval()
    x = torch.randn(2, 110, 32)
    mask = torch.ones(2, 1, 1, 110, dtype=torch.bool)
    mask[0, ..., 5] = False  # a hole, then valid keys, then more padding at the end
    mask[0, ..., 100:] = False
    with torch.no_grad():
        baseline = toy(x, mask)
    controller = SparseController(SparseAttentionConfig(block_size=16, dense_steps=1), ["attn"], lambda: 4)
    controller.begin_forward(900.0, None)
    with torch.no_grad(), SDPAInterceptor(controller, "attn"):
        out = toy(x, mask)
    assert torch.equal(out, baseline) and dict(controller.passthrough) == {
        ("attn", "explicit attn_mask (not aligned to 16x16 tiles)"): 1
    }


def test_forced_backend_without_seq_lens_k_support_runs_dense_and_says_so():
    from sparse_diffusion.controller import SparseController

    config = SparseAttentionConfig(block_size=16, dense_steps=1, backend="flex")
    controller = SparseController(config, ["attn"], lambda: 4)
    controller.begin_forward(900.0, None)  # step 0 of 4 with one warm-up step: the build step
    q, k, v = torch.randn(2, 2, 64, 16), torch.randn(2, 2, 60, 16), torch.randn(2, 2, 60, 16)
    dense = torch.zeros(2, 2, 64, 16)
    out = controller.attention(AttentionCall("attn", q, k, v, None, lambda: dense, seq_lens_k=(60, 50)))
    assert out is dense and controller.stats["attn"].calls == {"fallback": 1}
    (reason,) = controller.stats["attn"].fallbacks
    assert "build failed, ran dense" in reason and "seq_lens_k" in reason


@pytest.mark.parametrize("steps, dense_steps, expected_dense", [(2, 0.25, 1), (3, 0.5, 2), (1, 0.5, 1)])
def test_few_step_schedules_count_dense_steps_in_steps(pipes, steps, dense_steps, expected_dense):
    from diffusers import UniPCMultistepScheduler

    pipe, _ = pipes["wan"]
    original = pipe.scheduler
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    try:
        with accelerate_pipeline(pipe, dense_steps=dense_steps, block_size=16, sparse_density_limit=1.0) as handle:
            out = _run(pipe, "wan", steps=steps)
            report = handle.report()
    finally:
        pipe.scheduler = original
    assert np.isfinite(out).all()
    assert report["total_steps"] == steps and report["dense_steps"] == expected_dense
    assert report["sparse_steps"] == steps - expected_dense


def test_complement_cache_restores_the_dense_output_when_inputs_repeat():
    from sparse_diffusion.pipelines.base import Adapter

    toy = _ToyDenoiser().eval()  # q/k/v do not depend on the timestep: every step sees the build step's inputs
    adapter = Adapter(family="toy", transformer_classes=("_ToyDenoiser",), self_attention="attn", text_position="last")
    video, text = torch.randn(2, 90, 32) * 3, torch.randn(2, 20, 32) * 3
    valid = torch.tensor([110, 110])

    def run():
        with torch.no_grad():
            return [toy(video, torch.tensor(float(t)), text, valid) for t in (900, 600, 300, 100)]

    baseline = run()
    errors = {}
    for cache in (False, True):
        with accelerate_model(
            toy,
            adapter=adapter,
            num_inference_steps=4,
            dense_steps=1,
            block_size=16,
            policy="topk",
            topk_ratio=0.3,
            sparse_density_limit=1.0,
            refresh_threshold=0,
            keep_text_tokens=False,
            cache_complement=cache,
        ) as handle:
            outs = run()
            report = handle.report()
        assert report["calls"]["sparse"] == 3 and report["density"] < 0.6
        errors[cache] = max(float((a - b).abs().max()) for a, b in zip(outs[1:], baseline[1:]))
        expected_mib = (2 * 2 * 110 * 16 * 4 + 2 * 2 * 110 * 4) / 2**20 if cache else 0
        assert report["complement_cache_mib"] == pytest.approx(expected_mib, abs=1e-3)
    assert errors[False] > 1e-3, "the mask must drop real mass for this test to mean anything"
    assert errors[True] < 1e-5, "kept blocks + cached complement must give back dense attention"
