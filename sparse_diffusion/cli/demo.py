"""`sparse-diffusion demo`: dense vs sparse run of the trained tiny Wan model, or of random weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import SparseDiffusionError
from . import output
from .args import HelpFormatter, load_config, positive_int, wan_frames, wan_pixels
from .presets import DEMO_CONFIG, DEMO_LOCALITY, DEMO_PROMPT


def add_parser(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo", help="dense vs sparse run of a small offline Wan-style video pipeline", formatter_class=HelpFormatter
    )
    demo.add_argument("--out", default="sparse-diffusion-demo", help="output folder")
    demo.add_argument(
        "--prompt",
        default=DEMO_PROMPT,
        help="text prompt; with the trained model, a prompt of the form "
        "'a <colour> <shape> moving <direction>' also gets a verdict on whether each clip shows it",
    )
    demo.add_argument("--steps", type=positive_int, default=20, help="denoising steps")
    demo.add_argument("--frames", type=wan_frames, default=33, help="video frames, 4k+1 (Wan VAE)")
    demo.add_argument("--height", type=wan_pixels, help="pixels, a multiple of 16 (default: 128 trained, 384 random)")
    demo.add_argument("--width", type=wan_pixels, help="pixels, a multiple of 16 (default: 128 trained, 384 random)")
    demo.add_argument(
        "--weights",
        choices=["trained", "random"],
        default="trained",
        help="the project-trained tiny Wan model, or random weights with a locality prior",
    )
    demo.add_argument(
        "--locality",
        type=float,
        help=f"with --weights random only: locality prior of the random attention (0 = plain random weights; "
        f"default: {DEMO_LOCALITY})",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed of both runs")
    demo.add_argument(
        "--config",
        help="SparseAttentionConfig as a JSON file or inline JSON (default with --weights trained: "
        f"{json.dumps(DEMO_CONFIG)}, chosen from the quality curve; with --weights random: the library defaults)",
    )
    demo.set_defaults(func=run)


def run(args) -> int:
    from ..runs import call_kwargs, paired_run

    # before the (slow) load, so a bad --config fails at once; the trained model uses the quality curve's choice
    if args.weights == "trained" and args.locality is not None:
        raise SparseDiffusionError("--locality shapes the random weights only; drop it or add --weights random.")
    config = load_config(args.config, DEMO_CONFIG if args.weights == "trained" else None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    output.prepare_cpu_kernel()
    if args.weights == "trained":
        from ..testing import load_trained_tiny_wan_pipeline

        pipe = load_trained_tiny_wan_pipeline()
        size, guidance = 128, 5.0
        extra = {
            "demo": "project-trained tiny Wan 2.1-style text-to-video model (WanPipeline, 4 layers, 4 heads, head_dim "
            "64, trained VAE) loaded offline from the package",
            "weights_note": "trained on procedural clips of one coloured shape moving in a straight line; see "
            "sparse_diffusion/testing/weights/tiny_wan_shapes/MODEL_CARD.md",
        }
    else:
        from ..testing import build_tiny_wan_pipeline

        locality = DEMO_LOCALITY if args.locality is None else args.locality
        pipe = build_tiny_wan_pipeline(num_heads=4, seed=args.seed, locality=locality or None)
        size, guidance = 384, 5.0
        extra = {
            "demo": "tiny Wan 2.1-style pipeline (WanPipeline, 2 layers, 4 heads, head_dim 64) built offline",
            "weights_note": "random weights"
            + (
                f" with a locality prior (shared q/k bias, q/k norm x{locality}) so that attention concentrates "
                "on space-time neighbours as in trained video models"
                if locality
                else ": attention is close to uniform, so masks keep most blocks"
            )
            + "; quality and speed-up are not those of a trained model",
        }
    kwargs = call_kwargs(
        pipe,
        prompt=args.prompt,
        steps=args.steps,
        height=args.height or size,
        width=args.width or size,
        frames=args.frames,
        guidance_scale=guidance,
    )
    judge = prompt_judge(args.prompt) if args.weights == "trained" else None
    report = paired_run(pipe, kwargs, config, args.seed, Path(args.out), extra=extra, judge=judge)
    output.print_paired(report, Path(args.out))
    return 0


def prompt_judge(prompt: str):
    """For the trained model's prompts ("a <colour> <shape> moving <direction>"): a function scoring a video with
    `shapes.check_prompt` (colour match and motion along the prompted direction); None for other prompts."""
    from ..testing import shapes

    try:
        colour, direction = shapes.parse_prompt(prompt)
    except ValueError:
        return None

    def judge(frames) -> dict:
        check = shapes.check_prompt(frames, prompt)
        return {
            "colour": colour,
            "direction": direction,
            "colour_match": round(check.colour_match, 3),
            "moved_along": round(check.along, 3) + 0.0,
            "moved_across": round(check.across, 3) + 0.0,
            "largest_step": round(check.max_step, 3),
            "spread": round(check.max_spread, 3),
            "follows_prompt": check.follows,
        }

    return judge
