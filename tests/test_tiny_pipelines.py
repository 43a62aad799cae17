"""Tiny offline random-weight pipelines (sparse_diffusion.testing)."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sparse_diffusion.errors import SparseDiffusionError  # noqa: E402
from sparse_diffusion.testing import (  # noqa: E402
    TINY_BUILDERS,
    build_tiny_cogvideox_pipeline,
    build_tiny_flux_pipeline,
    build_tiny_wan_pipeline,
)


PROMPT = "a red circle moving left on a blue background"

# kind -> (call kwargs, expected output shape)
CASES = {
    "wan": (dict(height=32, width=32, num_frames=5, max_sequence_length=16), (1, 5, 32, 32, 3)),
    "cogvideox": (dict(height=32, width=32, num_frames=9), (1, 9, 32, 32, 3)),
    "flux": (dict(height=32, width=32, max_sequence_length=16), (1, 32, 32, 3)),
}


def _run(pipe, **kwargs):
    out = pipe(PROMPT, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0), **kwargs)
    return np.asarray(out.frames if hasattr(out, "frames") else out.images)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_builder_runs_offline(kind):
    kwargs, shape = CASES[kind]
    pipe = TINY_BUILDERS[kind](num_heads=2, head_dim=16)
    assert pipe._sparse_diffusion_weights == "random"
    out = _run(pipe, **kwargs)
    assert out.shape == shape
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("kind", sorted(TINY_BUILDERS))
def test_same_seed_same_weights(kind):
    rng_before = torch.random.get_rng_state()
    a, b, c = (TINY_BUILDERS[kind](head_dim=16, seed=s) for s in (3, 3, 4))
    assert torch.equal(rng_before, torch.random.get_rng_state())  # building leaves the global RNG alone
    assert a._sparse_diffusion_weights == "random"
    for name, module in a.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        sa, sb, sc = module.state_dict(), getattr(b, name).state_dict(), getattr(c, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert not all(torch.equal(sa[k], sc[k]) for k in sa), name


def test_same_seed_same_video():
    kwargs, _ = CASES["wan"]
    first = _run(build_tiny_wan_pipeline(head_dim=16), **kwargs)
    second = _run(build_tiny_wan_pipeline(head_dim=16), **kwargs)
    np.testing.assert_array_equal(first, second)


def test_tokenizer_knows_demo_words():
    pipe = build_tiny_wan_pipeline(head_dim=16)
    ids = pipe.tokenizer(PROMPT).input_ids
    assert pipe.tokenizer.unk_token_id not in ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids)[-1] == "</s>"
    assert pipe.tokenizer.unk_token_id in pipe.tokenizer("a zyzzyva").input_ids


def test_attention_layout():
    """Token counts the adapters rely on: Wan video-only self-attention, text first for CogVideoX/Flux."""
    import torch.nn.functional as F

    seen = []
    original = F.scaled_dot_product_attention

    def record(*args, **kwargs):
        q = kwargs.get("query", args[0] if args else None)
        seen.append(tuple(q.shape))
        return original(*args, **kwargs)

    cog = build_tiny_cogvideox_pipeline(head_dim=16)
    flux = build_tiny_flux_pipeline(head_dim=16)
    try:
        F.scaled_dot_product_attention = record
        cog(PROMPT, height=32, width=32, num_frames=9, num_inference_steps=1, output_type="latent")
        cog_seen, seen[:] = list(seen), []
        flux(PROMPT, height=32, width=32, max_sequence_length=16, num_inference_steps=1, output_type="latent")
    finally:
        F.scaled_dot_product_attention = original
    assert (2, 2, 226 + 3 * 2 * 2, 16) in cog_seen  # batched CFG, 226 text + 3 latent frames x 2 x 2 patches
    assert (1, 2, 16 + 16 * 16, 16) in seen  # 16 text + (32 / 2)^2 packed latents


def test_bad_sizes_raise():
    with pytest.raises(SparseDiffusionError, match="head_dim=15"):
        build_tiny_wan_pipeline(head_dim=15)
    with pytest.raises(SparseDiffusionError, match="num_layers=0"):
        build_tiny_cogvideox_pipeline(num_layers=0)
    with pytest.raises(SparseDiffusionError, match="head_dim=4"):
        build_tiny_flux_pipeline(head_dim=4)
