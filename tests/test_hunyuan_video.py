"""HunyuanVideo: tiny offline builder, adapter and accelerate_pipeline against the untouched pipeline (joint
[video | text] layout with text LAST in double- and single-stream blocks, the text-padding attention mask, text rows
kept dense, remove() restores)."""

import json
import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from pipeline_helpers import run_pipeline, spy_attention  # noqa: E402
from sparse_diffusion.pipelines.registry import ADAPTERS, get_adapter  # noqa: E402

from sparse_diffusion import accelerate_pipeline  # noqa: E402
from sparse_diffusion.errors import SparseDiffusionError  # noqa: E402
from sparse_diffusion.testing import TINY_BUILDERS, build_tiny_hunyuan_video_pipeline  # noqa: E402


STEPS = 3
BLOCK = 16
PROMPT = "a red circle moving left"  # 5 words + <|eot_id|> = 6 valid text tokens
# 64x64 pixels, 9 frames -> 3 * 8 * 8 = 192 video tokens (VAE 4x/8x, patch 1), then 16 text tokens (padded)
CALL = dict(prompt=PROMPT, height=64, width=64, num_frames=9, max_sequence_length=16, guidance_scale=6.0)
VIDEO, TEXT, VALID_TEXT = 192, 16, 6
SEQ = VIDEO + TEXT
LAYERS = {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}


def _run(pipe, steps=STEPS, seed=0, **extra):
    return run_pipeline(pipe, CALL, steps, seed, **extra)


@pytest.fixture(scope="module")
def tiny():
    pipe = build_tiny_hunyuan_video_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe, _run(pipe)


def test_adapter_is_registered_and_found_by_class(tiny):
    pipe, baseline = tiny
    adapter = get_adapter(pipe.transformer)
    assert ADAPTERS["hunyuan_video"] is adapter and adapter.family == "hunyuan_video"
    assert adapter.text_position == "last"
    assert {name for name, _ in adapter.self_attention_layers(pipe.transformer)} == LAYERS
    assert TINY_BUILDERS["hunyuan_video"] is build_tiny_hunyuan_video_pipeline
    assert pipe._sparse_diffusion_weights == "random"
    assert baseline.shape == (9, 64, 64, 3)
    assert np.isfinite(baseline).all() and baseline.min() >= 0.0 and baseline.max() <= 1.0


def test_template_prefix_is_the_cropped_95_tokens(tiny):
    """The pipeline crops a fixed 95 tokens; the tiny tokenizer must put the prompt right after them."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    pipe, _ = tiny
    crop = DEFAULT_PROMPT_TEMPLATE["crop_start"]
    ids = pipe.tokenizer(DEFAULT_PROMPT_TEMPLATE["template"].format(PROMPT)).input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids[crop:]) == PROMPT.split() + ["<|eot_id|>"]
    _, mask = pipe._get_llama_prompt_embeds(PROMPT, DEFAULT_PROMPT_TEMPLATE, max_sequence_length=TEXT)
    assert mask.tolist() == [[1] * VALID_TEXT + [0] * (TEXT - VALID_TEXT)]


def test_all_dense_steps_is_identical_to_untouched_pipeline(tiny):
    pipe, baseline = tiny
    with accelerate_pipeline(pipe, dense_steps=STEPS, block_size=BLOCK, sparse_density_limit=1.0) as handle:
        out = _run(pipe)
        report = handle.report()
    assert np.array_equal(out, baseline)
    assert report["dense_steps"] == STEPS and report["sparse_steps"] == 0
    assert report["calls"]["build"] == 0 and report["calls"]["sparse"] == 0
    assert report["adapter"] == "hunyuan_video"
    assert np.array_equal(_run(pipe), baseline), "leaving the context manager must remove the hooks"


def test_sparse_run_is_finite_consistent_and_remove_restores(tiny):
    pipe, baseline = tiny
    handle = accelerate_pipeline(
        pipe,
        dense_steps=1,
        block_size=BLOCK,
        sparse_density_limit=1.0,
        policy="topk",
        topk_ratio=0.5,
        refresh_threshold=0,
    )
    calls = spy_attention(handle)
    out = _run(pipe)
    report = json.loads(json.dumps(handle.report()))
    try:
        assert np.isfinite(out).all() and out.shape == baseline.shape
        assert report["adapter"] == "hunyuan_video" and report["weights"] == "random"
        assert report["total_steps"] == STEPS and report["dense_steps"] == 1
        assert report["sparse_steps"] == STEPS - 1
        assert report["fallbacks"] == [] and report["dense_fallback_steps"] == 0

        # only the double- and single-stream joint attention, with [video | text] of the expected lengths
        assert {c[2] for c in calls} == LAYERS == set(handle.layer_names)
        heads = pipe.transformer.config.num_attention_heads
        head_dim = pipe.transformer.config.attention_head_dim
        assert {c[3] for c in calls} == {(1, heads, SEQ, head_dim)}
        assert {c[4] for c in calls} == {TEXT}, "Adapter.text_length must give the joint text length"
        # the padded text keys are trimmed off: the controller sees the valid keys only
        assert {c[5].shape[2] for c in calls} == {VIDEO + VALID_TEXT}

        # one prompt: the text-padding mask has one valid length, so the keys are trimmed and the calls run sparse
        per_step = len(LAYERS)
        assert report["passthrough"] == []
        assert report["calls"]["sparse"] > 0
        assert report["calls"] == {"dense": 0, "build": per_step, "sparse": per_step * (STEPS - 1), "fallback": 0}
        assert sorted({c[0] for c in calls}) == list(range(STEPS))
        assert 0 < report["density"] < 1
    finally:
        handle.remove()
        assert np.array_equal(_run(pipe), baseline), "remove() must restore the untouched pipeline"


def test_text_tokens_sit_last(tiny):
    """The values of the double-stream joint call hold the context stream's `add_v_proj` output right after the
    192 video tokens (up to the valid text length when padded keys are trimmed)."""
    pipe, _ = tiny
    attn = pipe.transformer.transformer_blocks[0].attn
    projected = []
    hook = attn.add_v_proj.register_forward_hook(lambda mod, args, out: projected.append(out.detach()))
    try:
        with accelerate_pipeline(pipe, dense_steps=STEPS, block_size=BLOCK) as handle:
            calls = spy_attention(handle)
            _run(pipe, steps=1)
    finally:
        hook.remove()
    calls = [c for c in calls if c[2] == "transformer_blocks.0.attn"]
    assert len(calls) == len(projected) == 1
    (_, _, _, (b, h, seq, d), text_len, v), text_v = calls[0], projected[0]
    assert text_v.shape[1] == text_len == TEXT and seq - text_len == VIDEO
    text_v = text_v.view(b, text_len, h, d).transpose(1, 2)
    keys = v.shape[2]
    assert keys == VIDEO + VALID_TEXT, "the masked text padding at the end is trimmed off the keys"
    assert torch.equal(v[:, :, VIDEO:], text_v[:, :, : keys - VIDEO])
    assert not torch.isclose(v[:, :, :1], text_v[:, :, :1]).all()


def test_planned_masks_keep_text_rows_dense(tiny):
    pipe, _ = tiny
    with accelerate_pipeline(pipe, dense_steps=1, block_size=BLOCK, policy="topk", topk_ratio=0.1) as handle:
        out = _run(pipe)
        masks = handle.masks()
        report = handle.report()
    assert np.isfinite(out).all() and report["passthrough"] == []
    assert set(masks) == LAYERS
    text_rows = list(range(VIDEO // BLOCK, -(-SEQ // BLOCK)))  # query block 12 (tokens 192..207)
    text_cols = list(range(VIDEO // BLOCK, -(-(VIDEO + VALID_TEXT) // BLOCK)))  # key block 12 (keys 192..197)
    for name, mask in masks.items():
        assert mask.seq_lengths == (SEQ, VIDEO + VALID_TEXT), name
        table = mask.to_dense()
        assert table[:, :, text_rows, :].all(), name
        assert table[:, :, :, text_cols].all(), name
        video_rows = [i for i in range(table.shape[-2]) if i not in text_rows]
        assert not table[:, :, video_rows].all(), "video rows must be sparse"


# 4 and 20 valid text tokens of 32: the keys end at 196 and 212, so key block 13 (tokens 208..223) holds valid keys
# of the long prompt only and must be dropped for the short one
PROMPTS = ["a red circle", "a red circle and a blue square moving left over a green field under a bright sky at night"]
LONG_CALL = dict(CALL, max_sequence_length=32)


def _batch_and_singles(pipe, **config):
    """Two prompts of different lengths in one batch (per-sample seeds), then each alone with its seed."""
    kwargs = dict(LONG_CALL, num_inference_steps=STEPS, output_type="np")
    with accelerate_pipeline(pipe, **config) as handle:
        calls = spy_attention(handle)
        batch = pipe(**dict(kwargs, prompt=PROMPTS), generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
        report = handle.report()
        singles = [
            pipe(**dict(kwargs, prompt=p), generator=torch.Generator().manual_seed(s)).frames[0]
            for s, p in enumerate(PROMPTS)
        ]
    return batch.frames, singles, report, calls


def test_prompts_of_different_lengths_run_sparse_with_per_sample_key_lengths(tiny):
    """Two prompts with different valid text lengths: the keys are cut to the longer one and the shorter sample
    excludes its padded keys through seq_lens_k, so the joint calls run sparse; each video matches its batch-1 run."""
    pipe, _ = tiny
    batch, singles, report, calls = _batch_and_singles(
        pipe, dense_steps=1, block_size=BLOCK, sparse_density_limit=1.0, mass_threshold=0.8, refresh_threshold=0
    )
    assert report["passthrough"] == [] and report["fallbacks"] == []
    assert report["runs"][0]["sparse_steps"] == STEPS - 1
    layers = report["layers"]
    assert all(layers[name]["calls"] == {"build": 1, "sparse": STEPS - 1} for name in LAYERS)
    assert all(0 < layers[name]["density"] < 1 for name in LAYERS)
    batched = [c for c in calls if c[3][0] == 2]
    assert batched and {c[5].shape[2] for c in batched} == {VIDEO + 20}, "keys cut to the longest valid length"
    for sample, single in zip(batch, singles):
        assert np.isfinite(sample).all()
        assert np.abs(sample - single).max() < 1e-4


def test_prompts_of_different_lengths_with_keep_all_masks_match_the_dense_run(tiny):
    pipe, _ = tiny
    kwargs = dict(LONG_CALL, prompt=PROMPTS, num_inference_steps=STEPS, output_type="np")
    dense = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    with accelerate_pipeline(
        pipe, dense_steps=1, block_size=BLOCK, sparse_density_limit=1.0, policy="topk", topk_ratio=1.0
    ) as handle:
        out = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
        report = handle.report()
    assert report["calls"] == {"dense": 0, "build": len(LAYERS), "sparse": len(LAYERS) * (STEPS - 1), "fallback": 0}
    head_density = report["layers"]["transformer_blocks.0.attn"]["head_density"]
    assert head_density == pytest.approx([(1 + 13 / 14) / 2] * 2, abs=1e-6), (
        "the short sample drops key block 13, past its valid keys"
    )
    assert report["passthrough"] == []
    assert np.abs(out - dense).max() < 2e-5


def test_bad_sizes():
    with pytest.raises(SparseDiffusionError, match="head_dim=4"):
        build_tiny_hunyuan_video_pipeline(head_dim=4)
    with pytest.raises(SparseDiffusionError, match="num_single_layers=0"):
        build_tiny_hunyuan_video_pipeline(num_single_layers=0)
