"""The project-trained tiny Wan model: it loads offline, it denoises clips it never saw far better than its random
initialisation, and sparse attention with the default config stays close to the dense run (threshold from the
quality curve, see README "Quality on a trained model")."""

import numpy as np
import pytest
import torch

from sparse_diffusion import accelerate_pipeline
from sparse_diffusion.cli.presets import DEMO_CONFIG
from sparse_diffusion.metrics import compare_videos
from sparse_diffusion.testing import TRAINED_WAN_WEIGHTS, load_trained_tiny_wan_pipeline


STEPS = 10
# Reduced run: 10 steps instead of the curve's 20 (5 dense, the mask built at step 5). This run measured 30.7 dB
# (worst frame 24.6 dB) at effective density 0.423 with model v3 (2026-11-30); at 20 steps the curve has 36.6 dB mean,
# 33.3 dB worst prompt, for this config (docs/quality_curve.json; its 10%-warm-up top-k 0.2 point reads 18.3 dB).
MIN_PSNR_DB = 27.5
MAX_DENSITY = 0.5


@pytest.fixture(scope="module")
def pipe():
    pipe = load_trained_tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, prompt: str, seed: int = 0):
    out = pipe(
        prompt,
        height=128,
        width=128,
        num_frames=33,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return np.asarray(out.frames[0], dtype=np.float64)  # [F, H, W, 3] in [0, 1]


def test_trained_transformer_denoises_held_out_clips_far_better_than_its_random_init(pipe):
    """Flow-matching velocity error on fresh procedural clips (never seen in training) at fixed noise levels."""
    from diffusers import WanTransformer3DModel

    from sparse_diffusion.testing import shapes

    gen = torch.Generator().manual_seed(1234)
    clips, prompts = shapes.random_batch(gen, 4, 33, 64, 64)
    vae, tr = pipe.vae, pipe.transformer
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        x0 = (vae.encode(clips * 2 - 1).latent_dist.mode() - mean) / std
        text, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=512)
        torch.manual_seed(0)
        random_tr = WanTransformer3DModel.from_config(tr.config).eval()
        errors = {"trained": [], "random": []}
        for sigma in (0.3, 0.6, 0.9):
            noise = torch.randn(x0.shape, generator=gen)
            xt = (1 - sigma) * x0 + sigma * noise
            t = torch.full((4,), sigma * 1000)
            for name, model in (("trained", tr), ("random", random_tr)):
                pred = model(xt, t, text, return_dict=False)[0]
                errors[name].append(float(((pred - (noise - x0)) ** 2).mean()))
    trained, random = np.mean(errors["trained"]), np.mean(errors["random"])
    assert trained < 0.5 * random, errors


def test_demo_config_keeps_quality_at_half_density_or_less(pipe):
    from sparse_diffusion.testing import shapes

    assert pipe._sparse_diffusion_weights == TRAINED_WAN_WEIGHTS
    prompt = "a red circle moving left"
    dense = _run(pipe, prompt)
    with accelerate_pipeline(pipe, **DEMO_CONFIG) as handle:
        sparse = _run(pipe, prompt)
        report = handle.report()
    quality = compare_videos(dense, sparse, data_range=1.0)
    assert report["sparse_steps"] > 0 and report["fallbacks"] == []
    assert report["effective_density"] <= MAX_DENSITY
    assert quality["mean_psnr"] >= MIN_PSNR_DB, quality["per_frame_psnr"]
    # the model draws the prompt (red, moving left), and the sparse run still does
    for video in (dense, sparse):
        check = shapes.check_prompt(video, prompt)
        assert check.follows and check.colour_match > 0.9 and check.along > 0.3, check


def test_quality_curve_rows_against_the_dense_run(pipe, tmp_path):
    """`run_quality_curve` on a reduced call: a keep-all point reproduces the dense video, a 10% top-k point is
    measurably sparser and worse, re-plans count in the density, and the plot is written."""
    from sparse_diffusion.quality_curve import plot_curve, run_quality_curve

    call = dict(
        prompt="a blue square moving up",
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=4,
        guidance_scale=5.0,
        output_type="np",
    )
    points = [
        ("keep all", {"policy": "topk", "topk_ratio": 1.0, "sparse_density_limit": 1.0, "block_size": 16}),
        (
            "top-k 0.1",
            {
                "policy": "topk",
                "topk_ratio": 0.1,
                "sparse_density_limit": 1.0,
                "block_size": 16,
                "refresh_threshold": 0.0,
            },
        ),
        (
            "top-k 0.1, always re-plan",
            {
                "policy": "topk",
                "topk_ratio": 0.1,
                "sparse_density_limit": 1.0,
                "block_size": 16,
                "refresh_threshold": 1.0,
            },
        ),
    ]
    result = run_quality_curve(pipe, [call], [0], points, progress=False)
    rows = {r["label"]: r for r in result["points"]}
    assert rows["keep all"]["density"] == 1.0 and rows["keep all"]["mean_psnr"] > 60
    sparse, replan = rows["top-k 0.1"], rows["top-k 0.1, always re-plan"]
    assert sparse["sparse_steps"] == 3 and sparse["density"] == sparse["sparse_density"] < 0.3
    assert sparse["mean_psnr"] < rows["keep all"]["mean_psnr"] - 10
    assert replan["sparse_density"] < 0.3 < replan["density"] <= 1.0  # the re-plans ran the full attention
    assert plot_curve(result, tmp_path / "curve.png").stat().st_size > 1000


def test_loading_the_trained_model_raises_no_deprecation_warning():
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_trained_tiny_wan_pipeline(dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert not [w for w in caught if "torch_dtype" in str(w.message)], [str(w.message) for w in caught]
