"""SD3, LTX-Video and Qwen-Image: tiny offline builders, adapters and accelerate_pipeline against the untouched
pipeline (token layouts, text tokens kept dense, only the intended layers intercepted, remove() restores)."""

import json

import numpy as np
import pytest
import torch
from pipeline_helpers import run_pipeline, spy_attention
from sparse_diffusion.pipelines.registry import ADAPTERS, get_adapter

from sparse_diffusion import accelerate_pipeline
from sparse_diffusion.errors import SparseDiffusionError
from sparse_diffusion.testing import (
    TINY_BUILDERS,
    build_tiny_qwenimage_pipeline,
    build_tiny_sd3_pipeline,
)


STEPS = 3
BLOCK = 16
FAMILIES = ["sd3", "ltx", "qwenimage"]
QWEN_PROMPT = "a red circle and a blue square moving left over a green field under a bright sky"  # 17 words
CALLS = {
    # 36x36 pixels -> 18*18 = 324 image tokens (VAE scale 1, patch 2), then 77 CLIP + 32 T5 text tokens; batched CFG
    "sd3": dict(prompt="a red circle moving left", height=36, width=36, max_sequence_length=32, guidance_scale=5.0),
    # 32x32 pixels, 9 frames -> 3 * 8 * 8 = 192 video tokens; batched CFG; text only in cross-attention
    "ltx": dict(
        prompt="a red circle moving left",
        height=32,
        width=32,
        num_frames=9,
        max_sequence_length=16,
        guidance_scale=3.0,
    ),
    # 256x256 -> 16*16 = 256 image tokens after 17 + 5 text tokens (cond) / 2 + 5 (uncond); split true CFG
    "qwenimage": dict(prompt=QWEN_PROMPT, negative_prompt="blurry dark", true_cfg_scale=4.0, height=256, width=256),
}
# (image/video tokens, text tokens of each forward in order, text position) of the calls above
LAYOUT = {
    "sd3": (324, [77 + 32], "last"),
    "ltx": (192, [0], None),
    "qwenimage": (256, [17 + 5, 2 + 5], "first"),
}
LAYERS = {
    "sd3": {"transformer_blocks.0.attn", "transformer_blocks.1.attn"},
    "ltx": {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"},
    "qwenimage": {"transformer_blocks.0.attn", "transformer_blocks.1.attn"},
}
BATCH = {"sd3": 2, "ltx": 2, "qwenimage": 1}  # SD3 and LTX batch CFG; Qwen-Image runs cond and uncond passes
FORWARDS_PER_STEP = {"sd3": 1, "ltx": 1, "qwenimage": 2}


def _run(pipe, family, steps=STEPS, seed=0, **extra):
    return run_pipeline(pipe, CALLS[family], steps, seed, **extra)


@pytest.fixture(scope="module")
def pipes():
    built = {}
    for family in FAMILIES:
        pipe = TINY_BUILDERS[family]()
        pipe.set_progress_bar_config(disable=True)
        built[family] = (pipe, _run(pipe, family))
    return built


def _text_blocks(family, text_len, seq_len, block=BLOCK):
    """Indices of the blocks holding any text token, from the known layout."""
    position = LAYOUT[family][2]
    start, end = (0, text_len) if position == "first" else (seq_len - text_len, seq_len)
    return sorted(set(range(start // block, -(-end // block))))


def test_adapters_are_registered_and_found_by_class(pipes):
    for family in FAMILIES:
        pipe, _ = pipes[family]
        adapter = get_adapter(pipe.transformer)
        assert ADAPTERS[family] is adapter and adapter.family == family
        assert adapter.text_position == LAYOUT[family][2]
        assert {name for name, _ in adapter.self_attention_layers(pipe.transformer)} == LAYERS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_all_dense_steps_is_identical_to_untouched_pipeline(pipes, family):
    pipe, baseline = pipes[family]
    with accelerate_pipeline(pipe, dense_steps=STEPS, block_size=BLOCK, sparse_density_limit=1.0) as handle:
        out = _run(pipe, family)
        report = handle.report()
    assert np.array_equal(out, baseline)
    assert report["dense_steps"] == STEPS and report["sparse_steps"] == 0
    assert report["calls"]["build"] == 0 and report["calls"]["sparse"] == 0 and report["calls"]["dense"] > 0
    assert report["adapter"] == family and report["passthrough"] == []
    assert np.array_equal(_run(pipe, family), baseline), "leaving the context manager must remove the hooks"


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_run_intercepts_only_self_attention_and_remove_restores(pipes, family):
    pipe, baseline = pipes[family]
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
    out = _run(pipe, family)
    report = json.loads(json.dumps(handle.report()))
    image_tokens, text_lens, _ = LAYOUT[family]
    per_step = len(LAYERS[family]) * FORWARDS_PER_STEP[family]

    assert np.isfinite(out).all() and out.shape == baseline.shape
    assert report["adapter"] == family and report["weights"] == "random"
    assert report["total_steps"] == STEPS and report["dense_steps"] == 1 and report["sparse_steps"] == STEPS - 1
    assert report["calls"] == {"dense": 0, "build": per_step, "sparse": per_step * (STEPS - 1), "fallback": 0}
    assert report["fallbacks"] == [] and report["passthrough"] == [] and report["dense_fallback_steps"] == 0
    assert 0 < report["density"] < 1

    # only the intended layers, with the joint sequence the layout predicts, in every step
    assert {c[2] for c in calls} == LAYERS[family] == set(handle.layer_names)
    assert sorted({c[0] for c in calls}) == list(range(STEPS))
    heads, head_dim = pipe.transformer.config.num_attention_heads, pipe.transformer.config.attention_head_dim
    expected = {(BATCH[family], heads, image_tokens + t, head_dim) for t in text_lens}
    assert {c[3] for c in calls} == expected
    assert {c[4] for c in calls} == set(text_lens), "Adapter.text_length must give the joint text length"
    if family == "qwenimage":
        assert {c[1][0] for c in calls} == {"cond", "uncond"}

    handle.remove()
    assert np.array_equal(_run(pipe, family), baseline), "remove() must restore the untouched pipeline"


@pytest.mark.parametrize("family", ["sd3", "qwenimage"])
def test_text_tokens_sit_where_the_adapter_says(pipes, family):
    """The values of the joint attention call hold the context stream's `add_v_proj` output exactly at the text
    positions the adapter names (first or last), and nowhere else: checks position and length together."""
    pipe, _ = pipes[family]
    attn = pipe.transformer.transformer_blocks[0].attn
    projected = []
    hook = attn.add_v_proj.register_forward_hook(lambda mod, args, out: projected.append(out.detach()))
    try:
        with accelerate_pipeline(pipe, dense_steps=STEPS, block_size=BLOCK) as handle:
            calls = spy_attention(handle)
            _run(pipe, family, steps=1)
    finally:
        hook.remove()
    calls = [c for c in calls if c[2] == "transformer_blocks.0.attn"]
    assert len(calls) == len(projected) == FORWARDS_PER_STEP[family]
    for (_, _, _, shape, text_len, v), text_v in zip(calls, projected):
        b, h, seq, d = shape
        assert text_v.shape[1] == text_len == seq - LAYOUT[family][0]
        text_v = text_v.view(b, text_len, h, d).transpose(1, 2)
        inside = v[:, :, :text_len] if LAYOUT[family][2] == "first" else v[:, :, seq - text_len :]
        outside = v[:, :, text_len:] if LAYOUT[family][2] == "first" else v[:, :, : seq - text_len]
        assert torch.equal(inside, text_v)
        assert not torch.isclose(outside[..., :1, :], text_v[..., :1, :]).all()


@pytest.mark.parametrize("family", ["sd3", "qwenimage"])
def test_joint_text_tokens_are_dense_rows_and_columns(pipes, family, monkeypatch):
    import sparse_diffusion.plans as plans_module

    pipe, _ = pipes[family]
    image_tokens, text_lens, _ = LAYOUT[family]
    planned = []  # (seq_len, dense token ranges) of every plan
    original = plans_module.plan_block_mask

    def spy(block_mass, config, seq_lengths, **kwargs):
        planned.append((seq_lengths[0], list(kwargs.get("dense_token_ranges", ()))))
        return original(block_mass, config, seq_lengths, **kwargs)

    monkeypatch.setattr(plans_module, "plan_block_mask", spy)
    with accelerate_pipeline(pipe, dense_steps=1, block_size=BLOCK, policy="topk", topk_ratio=0.1) as handle:
        _run(pipe, family)
        masks = handle.masks()
    # every forward plans with its own text length at its own place (Qwen-Image: cond and uncond differ)
    expected_ranges = {
        (image_tokens + t, ((0, t),) if LAYOUT[family][2] == "first" else ((image_tokens, image_tokens + t),))
        for t in text_lens
    }
    assert {(seq, tuple(ranges)) for seq, ranges in planned} == expected_ranges
    # masks() holds the last build per layer: the last forward of the build step
    text_len = text_lens[-1]
    seq = image_tokens + text_len
    text = _text_blocks(family, text_len, seq)
    assert set(masks) == LAYERS[family]
    for name, mask in masks.items():
        assert mask.seq_lengths == (seq, seq)
        table = mask.to_dense()
        assert table[:, :, text, :].all() and table[:, :, :, text].all(), name
        image_only = [i for i in range(table.shape[-1]) if i not in text]
        assert not table[:, :, image_only][:, :, :, image_only].all(), "image tiles must be sparse"


def test_sd35_dual_attention_keeps_image_only_attn2_dense():
    pipe = build_tiny_sd3_pipeline(dual_attention_layers=(0,), head_dim=32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.transformer_blocks[0].attn2 is not None
    baseline = _run(pipe, "sd3")
    with accelerate_pipeline(pipe, dense_steps=1, block_size=BLOCK, sparse_density_limit=1.0) as handle:
        calls = spy_attention(handle)
        out = _run(pipe, "sd3")
        report = handle.report()
    assert {c[2] for c in calls} == LAYERS["sd3"], "attn2 holds no text tokens and is not accelerated"
    assert report["calls"]["sparse"] > 0 and report["fallbacks"] == [] and report["passthrough"] == []
    assert np.isfinite(out).all()
    assert np.array_equal(_run(pipe, "sd3"), baseline)


def test_sd3_skip_layer_guidance_pass_gets_its_own_plan(pipes):
    """Skip-layer guidance adds a B=1 forward per step (skipping block 1) after the batched CFG forward."""
    pipe, _ = pipes["sd3"]
    extra = dict(skip_guidance_layers=[1], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=0.5)
    with accelerate_pipeline(pipe, dense_steps=2, block_size=BLOCK, sparse_density_limit=1.0) as handle:
        calls = spy_attention(handle)
        out = _run(pipe, "sd3", steps=6, **extra)
        report = handle.report()
    assert np.isfinite(out).all()
    assert report["sparse_steps"] == 4 and report["fallbacks"] == [] and report["passthrough"] == []
    guided = {(c[0], c[2]) for c in calls if c[1] == ("default", 1)}  # the skip-layer pass, steps 1 and 2
    assert guided == {(1, "transformer_blocks.0.attn"), (2, "transformer_blocks.0.attn")}
    assert {c[3][0] for c in calls if c[1] == ("default", 1)} == {1}
    assert report["layers"]["transformer_blocks.0.attn"]["calls"] == {"dense": 1, "build": 2, "sparse": 5}


def test_qwenimage_prompts_of_different_lengths_run_sparse(pipes, monkeypatch):
    """A batch of prompts with different text lengths keeps `encoder_hidden_states_mask`: the padded text sits before
    the 64 image tokens, so each joint call is rotated (text behind the image, padding at the end) and runs with
    per-sample key lengths; the planned text rows/columns follow the rotation."""
    import sparse_diffusion.plans as plans_module

    pipe, _ = pipes["qwenimage"]
    planned, original = [], plans_module.plan_block_mask

    def spy(block_mass, config, seq_lengths, **kwargs):
        lens = kwargs["seq_lens_k"]
        planned.append((tuple(seq_lengths), kwargs["dense_token_ranges"], None if lens is None else lens.tolist()))
        return original(block_mass, config, seq_lengths, **kwargs)

    monkeypatch.setattr(plans_module, "plan_block_mask", spy)
    prompts = ["a red circle", "a blue square moving left"]  # 3 + 5 and 5 + 5 text tokens; padded to 10
    kwargs = dict(true_cfg_scale=1.0, height=128, width=128, num_inference_steps=STEPS, output_type="np")

    def run(prompt, seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(prompt=prompt, **kwargs, generator=gens if len(gens) > 1 else gens[0]).images

    dense = run(prompts, (0, 1))
    keep_all = dict(dense_steps=1, block_size=BLOCK, sparse_density_limit=1.0, policy="topk", topk_ratio=1.0)
    with accelerate_pipeline(pipe, **keep_all) as handle:
        out = run(prompts, (0, 1))
        report = handle.report()
        singles = [run(p, (s,))[0] for s, p in enumerate(prompts)]
    assert report["passthrough"] == [] and report["fallbacks"] == []
    assert report["calls"] == {"dense": 0, "build": 2, "sparse": 2 * (STEPS - 1), "fallback": 0}
    assert planned[:2] == [((74, 74), [(64, 74)], [72, 74])] * 2
    assert np.abs(out - dense).max() < 2e-5
    for sample, single in zip(out, singles):
        assert np.abs(sample - single).max() < 2e-5

    with accelerate_pipeline(
        pipe,
        dense_steps=1,
        block_size=BLOCK,
        sparse_density_limit=1.0,
        topk_ratio=0.5,
        policy="topk",
        refresh_threshold=0,
    ) as handle:
        sparse = run(prompts, (0, 1))
        report = handle.report()
        masks = handle.masks()
    assert np.isfinite(sparse).all() and report["passthrough"] == [] and 0 < report["density"] < 1
    assert report["calls"]["sparse"] == 2 * (STEPS - 1)
    table = masks["transformer_blocks.0.attn"].to_dense()
    assert table[:, :, 4].all() and table[:, :, :, 4].all(), "the text (tokens 64..73 after the rotation) stays dense"


def test_builder_outputs_and_bad_sizes(pipes):
    for family in FAMILIES:
        _, out = pipes[family]
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0, family
    assert pipes["sd3"][1].shape == (36, 36, 3)
    assert pipes["ltx"][1].shape == (9, 32, 32, 3)
    assert pipes["qwenimage"][1].shape == (256, 256, 3)
    with pytest.raises(SparseDiffusionError, match="head_dim=15"):
        TINY_BUILDERS["ltx"](head_dim=15)
    with pytest.raises(SparseDiffusionError, match="dual_attention_layers"):
        build_tiny_sd3_pipeline(num_layers=2, dual_attention_layers=(2,))
    with pytest.raises(SparseDiffusionError, match="head_dim=4"):
        build_tiny_qwenimage_pipeline(head_dim=4)


def test_qwen_tokenizer_drops_exactly_the_template_prefix(pipes):
    pipe, _ = pipes["qwenimage"]
    tok = pipe.tokenizer
    template = pipe.prompt_template_encode
    prefix = template[: template.index("{}")]
    ids = tok(template.format(QWEN_PROMPT)).input_ids
    assert len(tok(prefix).input_ids) == pipe.prompt_template_encode_start_idx == 34
    kept = tok.convert_ids_to_tokens(ids[34:])
    assert kept[: len(QWEN_PROMPT.split())] == QWEN_PROMPT.split()
    assert kept[len(QWEN_PROMPT.split()) :] == ["<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]
    assert tok.unk_token_id not in ids
