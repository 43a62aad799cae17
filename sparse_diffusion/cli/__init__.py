"""`sparse-diffusion` command line: demo, generate, compare, bench attention, bench quality, bench dlm, bench
dlm-accuracy."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .config import SparseAttentionConfig
from .errors import SparseDiffusionError


DEMO_PROMPT = "a red circle moving left"
# Chosen from the quality curve of the trained model (docs/quality_curve.json, model version 3): with the mask fixed
# after a half-length dense warm-up and the complement cached, top-k 0.4 over 64-token blocks keeps every prompt
# above 33 dB (36.6 dB mean, 33.3 worst, effective density 0.423, 1.09x end to end on the 2-core CPU).
DEMO_CONFIG = {
    "dense_steps": 0.5,
    "block_size": 64,
    "policy": "topk",
    "topk_ratio": 0.4,
    "cache_complement": True,
    "refresh_threshold": 0.0,
}
DEMO_LOCALITY = 3.0  # --weights random: locality prior of the random attention


def _load_config(text: str | None, default: dict | None = None) -> SparseAttentionConfig:
    """Config from a JSON file path or an inline JSON object; `SparseAttentionConfig(**default)` when None."""
    if not text:
        return SparseAttentionConfig(**(default or {}))
    path = Path(text)
    looks_like_path = not text.lstrip().startswith(("{", "[")) and (
        text.endswith(".json") or "/" in text or os.sep in text
    )
    if looks_like_path and not path.is_file():
        raise SparseDiffusionError(f"--config file {text!r} was not found; give an existing JSON file or inline JSON.")
    try:
        data = json.loads(path.read_text() if path.is_file() else text)
    except json.JSONDecodeError as exc:
        raise SparseDiffusionError(f"--config {text!r} is neither a JSON file nor inline JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SparseDiffusionError(f"--config must hold a JSON object of SparseAttentionConfig fields, got {data!r}.")
    return SparseAttentionConfig.from_dict(data)


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer (>= 1)")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive ints, e.g. "1024,2048"."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} holds no number; give comma-separated positive integers")
    try:
        return tuple(_positive_int(x) for x in items)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"in {text!r}: {exc}") from None


def _wan_frames(text: str) -> int:
    """argparse type: frames of the tiny Wan models, whose VAE needs 4k+1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1 or (value - 1) % 4:
        raise argparse.ArgumentTypeError(
            f"{value} frames: the Wan VAE needs a positive 4k+1 (1, 5, 9, ..., 33), e.g. {max(1, (value - 1) // 4 * 4 + 1)}"
        )
    return value


def _wan_pixels(text: str) -> int:
    """argparse type: a height or width of the tiny Wan models (VAE x8, patch x2)."""
    value = _positive_int(text)
    if value % 16:
        raise argparse.ArgumentTypeError(
            f"{value} pixels must be a multiple of 16 for the Wan model, e.g. {max(16, value // 16 * 16)}"
        )
    return value


def _config_field(name: str, parse=float):
    """argparse type: one SparseAttentionConfig field, parsed with `parse` and validated by the config itself."""

    def check(text: str):
        try:
            value = parse(text)
            SparseAttentionConfig(**{name: value})
        except ValueError as exc:  # SparseDiffusionError included
            raise argparse.ArgumentTypeError(
                str(exc) if isinstance(exc, SparseDiffusionError) else f"{text!r} is not a number"
            ) from None
        return value

    check.__name__ = name
    return check


def _steps_or_fraction(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def _device(text: str) -> str:
    """argparse type: a torch device this torch build can use."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text!r}: CUDA is not available here (torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
            "use --device cpu"
        )
    return text


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help, unless X is None/False/SUPPRESS, the option is a flag, or the
    help already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default == argparse.SUPPRESS
            or action.nargs == 0
            or not action.option_strings
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


def _fmt_db(x: float) -> str:
    return "inf (identical)" if x == float("inf") else f"{x:.2f} dB"


def _print_paired(report: dict, out: Path) -> None:
    q, sparse = report["quality"], report["sparse_report"]
    print(f"model: {report['model']} (weights: {report['weights']})")
    reasons = _dense_reasons(sparse)
    print(
        f"steps: {report['dense_steps']} dense warm-up + {report['sparse_steps']} sparse"
        + (f" + {sparse['dense_fallback_steps']} ran dense" if sparse["dense_fallback_steps"] else "")
    )
    if reasons:
        print(f"attention calls run dense after the warm-up: {reasons}")
    print(
        f"quality vs dense: PSNR {_fmt_db(q['mean_psnr'])}, SSIM {q['mean_ssim']:.4f} (float frames, before encoding)"
    )
    density, planned = report["density"], sparse["planned_density"]
    if density is not None:
        effective = report["effective_density"]
        print(
            f"attention density {density:.3f} over sparse calls, {effective:.3f} over all calls after the dense "
            "warm-up (calls that ran full attention, such as re-plans, count as 1)"
        )
    else:
        print(f"attention density n/a: no sparse call (planned density {planned}; {reasons or 'no plan'})")
    ratio = f"{report['end_to_end_speedup']:.2f}x" if report["sparse_steps"] else "no step ran sparse"
    print(
        f"wall time: dense {report['wall_time_s']['dense']:.2f} s, sparse {report['wall_time_s']['sparse']:.2f} s "
        f"({ratio}); attention alone: dense {report['attention_time_s']['dense']:.2f} s, "
        f"sparse {report['attention_time_s']['sparse']:.2f} s ({report['timing_note']})"
    )
    if "judged" in report:
        from .testing.shapes import MAX_SPREAD, MAX_STEP

        for name, j in report["judged"].items():
            print(
                f"{name} clip vs its prompt: {j['colour']} colour match {j['colour_match']:.2f}, moved "
                f"{j['moved_along']:+.2f} of the frame {j['direction']} ({j['moved_across']:+.2f} across): "
                + ("follows it" if j["follows_prompt"] else "does not follow it")
                + (
                    f" (jumps {j['largest_step']:.2f} of the frame in one step)"
                    if j.get("largest_step", 0) > MAX_STEP
                    else ""
                )
                + (
                    f" (spread {j['spread']:.1f}x a single disc: more than one object)"
                    if j.get("spread", 0) > MAX_SPREAD
                    else ""
                )
            )
    print("wrote " + ", ".join(str(out / name) for name in report["files"]))


def _dense_reasons(sparse: dict) -> str:
    """Re-plans and fallbacks of a sparse report as "N x reason" (attention calls, all layers), "" when none."""
    from collections import Counter

    fallbacks = Counter()
    for item in sparse["fallbacks"]:
        fallbacks[item["reason"]] += item["count"]
    parts = [f"{n} re-planned ({reason})" for reason, n in sorted(sparse["replans"].items())]
    parts += [f"{n} fell back ({reason})" for reason, n in sorted(fallbacks.items())]
    return "; ".join(parts)


def _write_json(path: str | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2))


def _prepare_cpu_kernel() -> None:
    """Load (or build) the native CPU kernel; call after the arguments are validated."""
    from .kernels.cpu import launch as cpu_kernel

    if not cpu_kernel.is_built():
        print("preparing the native CPU kernel (compiled on first use, about 30 s; cached afterwards)", flush=True)
    error = cpu_kernel.build_error()
    if error:
        print(f"note: {error}; the gather backend serves instead", flush=True)


def cmd_demo(args) -> int:
    from .runs import call_kwargs, paired_run

    # before the (slow) load, so a bad --config fails at once; the trained model uses the quality curve's choice
    if args.weights == "trained" and args.locality is not None:
        raise SparseDiffusionError("--locality shapes the random weights only; drop it or add --weights random.")
    config = _load_config(args.config, DEMO_CONFIG if args.weights == "trained" else None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _prepare_cpu_kernel()
    if args.weights == "trained":
        from .testing import load_trained_tiny_wan_pipeline

        pipe = load_trained_tiny_wan_pipeline()
        size, guidance = 128, 5.0
        extra = {
            "demo": "project-trained tiny Wan 2.1-style text-to-video model (WanPipeline, 4 layers, 4 heads, head_dim "
            "64, trained VAE) loaded offline from the package",
            "weights_note": "trained on procedural clips of one coloured shape moving in a straight line; see "
            "sparse_diffusion/testing/weights/tiny_wan_shapes/MODEL_CARD.md",
        }
    else:
        from .testing import build_tiny_wan_pipeline

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
    judge = _prompt_judge(args.prompt) if args.weights == "trained" else None
    report = paired_run(pipe, kwargs, config, args.seed, Path(args.out), extra=extra, judge=judge)
    _print_paired(report, Path(args.out))
    return 0


def _prompt_judge(prompt: str):
    """For the trained model's prompts ("a <colour> <shape> moving <direction>"): a function scoring a video with
    `shapes.check_prompt` (colour match and motion along the prompted direction); None for other prompts."""
    from .testing import shapes

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


def cmd_generate(args) -> int:
    from diffusers import DiffusionPipeline

    from .runs import call_kwargs, paired_run, single_run

    model = Path(args.model)
    config = _load_config(args.config)  # before the (slow) load, so a bad --config fails at once
    if not model.is_dir():
        raise SparseDiffusionError(
            f"--model {args.model!r} is not a folder; give a local diffusers checkpoint folder."
        )
    try:
        pipe = DiffusionPipeline.from_pretrained(str(model), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise SparseDiffusionError(f"could not load a diffusers pipeline from {args.model!r}: {exc}") from exc
    pipe.to(args.device)
    if args.device == "cpu":
        _prepare_cpu_kernel()
    pipe._sparse_diffusion_weights = f"loaded from {model.resolve()}"
    kwargs = call_kwargs(
        pipe, prompt=args.prompt, steps=args.steps, height=args.height, width=args.width, frames=args.frames
    )
    out = Path(args.out)
    extra = {"weights": pipe._sparse_diffusion_weights}
    try:
        if args.mode == "both":
            report = paired_run(pipe, kwargs, config, args.seed, out, extra=extra)
            _print_paired(report, out)
        else:
            report = single_run(pipe, kwargs, config if args.mode == "sparse" else None, args.seed, out, extra=extra)
            print(
                f"{report['mode']} run: {report['wall_time_s']:.2f} s, output {report['call']['output_shape']}; "
                f"wrote {out / report['output']} and {out / 'report.json'}"
            )
    except ValueError as exc:  # the pipeline's own input checks (e.g. sizes not divisible by 16)
        if isinstance(exc, SparseDiffusionError):
            raise
        raise SparseDiffusionError(f"the pipeline rejected the call: {exc}") from exc
    return 0


def cmd_compare(args) -> int:
    from .media import read_frames
    from .metrics import compare_videos

    a, b = read_frames(args.a), read_frames(args.b)
    result = compare_videos(a, b)
    print(f"{'frame':>5s} {'PSNR dB':>10s} {'SSIM':>8s}")
    for i, (p, s) in enumerate(zip(result["per_frame_psnr"], result["per_frame_ssim"])):
        print(f"{i:5d} {p:10.2f} {s:8.4f}")
    print(
        f"mean PSNR {_fmt_db(result['mean_psnr'])}, mean SSIM {result['mean_ssim']:.4f} over {result['frames']} frames"
    )
    print(f"data range {result['data_range']:g} (uint8 frames), float64 arithmetic; {result['note']}")
    _write_json(args.json, result)
    return 0


def cmd_bench_attention(args) -> int:
    import torch

    from .benchmark import bench_attention, format_table

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    block = args.block_size
    if len(block) > 2:
        raise SparseDiffusionError(f"--block-size {','.join(map(str, block))} must be BLOCK or BLOCK_Q,BLOCK_K.")
    result = bench_attention(
        seq_len=args.seq_len,
        heads=args.heads,
        head_dim=args.head_dim,
        density=args.density,
        dtype=dtype,
        kv_heads=args.kv_heads,
        batch=args.batch,
        block_size=block if len(block) == 2 else block * 2,
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        repeats=args.repeats,
        device=args.device,
    )
    print(format_table(result))
    _write_json(args.json, result)
    return 0


def cmd_bench_quality(args) -> int:
    import torch

    from .quality_curve import DEFAULT_POINTS, QUICK_POINTS, plot_curve, run_quality_curve
    from .runs import call_kwargs
    from .testing import load_trained_tiny_wan_pipeline, shapes

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = _load_config(args.config)
    _prepare_cpu_kernel()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_trained_tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = args.prompt or shapes.QUALITY_PROMPTS[: args.num_prompts]
    calls = [
        call_kwargs(
            pipe, prompt=p, steps=args.steps, height=args.size, width=args.size, frames=args.frames, guidance_scale=5.0
        )
        for p in prompts
    ]
    seeds = [args.seed + i for i in range(len(calls))]
    result = run_quality_curve(pipe, calls, seeds, QUICK_POINTS if args.quick else DEFAULT_POINTS, base=base)
    result["setup"] = {
        "model": pipe._sparse_diffusion_weights,
        "prompts": prompts,
        "seeds": seeds,
        "steps": args.steps,
        "size": [args.frames, args.size, args.size],
        "base_config": base.to_dict(),
        "threads": torch.get_num_threads(),
        "timing_note": "one run per point and prompt; wall times on a shared CPU vary with machine load",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_curve.json").write_text(json.dumps(result, indent=2))
    plot_curve(
        result,
        out / "quality_curve.png",
        title=f"tiny-wan-shapes, {args.frames}x{args.size}x{args.size}, {args.steps} steps, {len(prompts)} prompts",
    )
    print(f"{'point':48s} {'density':>8s} {'PSNR':>7s} {'min':>6s} {'SSIM':>6s} {'e2e':>6s} {'attn':>6s}")
    for row in result["points"]:
        print(
            f"{row['label']:48s} {row['density'] or 0:8.3f} {row['mean_psnr']:7.2f} {row['min_psnr']:6.2f} "
            f"{row['mean_ssim']:6.4f} {row['speedup']:5.2f}x {row['attention_speedup'] or 0:5.2f}x"
        )
    print(f"wrote {out / 'quality_curve.json'} and {out / 'quality_curve.png'}")
    return 0


def cmd_bench_dlm(args) -> int:
    import torch

    from .bench_dlm import bench_dlm, check_sizes, format_table

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    check_sizes(args.context, args.gen_length, args.steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and args.backend in ("auto", "cpu"):
        _prepare_cpu_kernel()
    result = bench_dlm(
        args.context,
        heads=args.heads,
        kv_heads=args.kv_heads,
        head_dim=args.head_dim,
        layers=args.layers,
        gen_length=args.gen_length,
        steps=args.steps,
        block_length=args.block_length,
        density=args.density,
        dense_steps=args.dense_steps,
        block_size=args.block_size,
        backend=args.backend,
        dtype=dtype,
        device=args.device,
        warmup={"auto": None, "on": True, "off": False}[args.warmup],
        seed=args.seed,
    )
    print(format_table(result))
    _write_json(args.json, result)
    return 0


def cmd_bench_dlm_accuracy(args) -> int:
    import torch

    from .bench_dlm import ACCURACY_HEADER, ACCURACY_NOTE, accuracy_sweep, format_accuracy_row

    base = _load_config(args.config) if args.config else None
    if args.threads:
        torch.set_num_threads(args.threads)
    _prepare_cpu_kernel()
    print(ACCURACY_HEADER, flush=True)
    # --config: dense and that config only (the fixed points are overrides of the adapter's defaults)
    points = {"dense": None, "--config": {}} if base is not None else None
    result = accuracy_sweep(
        args.context,
        count=args.count,
        points=points,
        base=base,
        on_row=lambda row: print(format_accuracy_row(row), flush=True),
    )
    print(ACCURACY_NOTE)
    _write_json(args.json, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(prog="sparse-diffusion", description=__doc__, formatter_class=fmt)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version", version=f"sparse-diffusion {__version__}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dtypes = ["float32", "bfloat16", "float16"]

    demo = sub.add_parser(
        "demo", help="dense vs sparse run of a small offline Wan-style video pipeline", formatter_class=fmt
    )
    demo.add_argument("--out", default="sparse-diffusion-demo", help="output folder")
    demo.add_argument(
        "--prompt",
        default=DEMO_PROMPT,
        help="text prompt; with the trained model, a prompt of the form "
        "'a <colour> <shape> moving <direction>' also gets a verdict on whether each clip shows it",
    )
    demo.add_argument("--steps", type=_positive_int, default=20, help="denoising steps")
    demo.add_argument("--frames", type=_wan_frames, default=33, help="video frames, 4k+1 (Wan VAE)")
    demo.add_argument("--height", type=_wan_pixels, help="pixels, a multiple of 16 (default: 128 trained, 384 random)")
    demo.add_argument("--width", type=_wan_pixels, help="pixels, a multiple of 16 (default: 128 trained, 384 random)")
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
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser(
        "generate", help="run a local diffusers checkpoint folder, sparse and/or dense", formatter_class=fmt
    )
    gen.add_argument("--model", required=True, help="local diffusers pipeline folder (save_pretrained layout)")
    gen.add_argument("--prompt", required=True, help="text prompt")
    gen.add_argument("--frames", type=_positive_int, help="frames (video pipelines; default: the pipeline's own)")
    gen.add_argument("--height", type=_positive_int, help="pixels (default: the pipeline's own)")
    gen.add_argument("--width", type=_positive_int, help="pixels (default: the pipeline's own)")
    gen.add_argument("--steps", type=_positive_int, default=30, help="denoising steps")
    gen.add_argument("--seed", type=int, default=0, help="random seed")
    gen.add_argument("--device", type=_device, default="cpu", help="torch device")
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument("--sparse", dest="mode", action="store_const", const="sparse", help="accelerated run (default)")
    mode.add_argument("--dense", dest="mode", action="store_const", const="dense", help="untouched dense run")
    mode.add_argument("--both", dest="mode", action="store_const", const="both", help="dense + sparse + metrics")
    gen.set_defaults(mode="sparse")
    gen.add_argument(
        "--config", help="SparseAttentionConfig as a JSON file or inline JSON (default: the library defaults)"
    )
    gen.add_argument("--out", default="sparse-diffusion-out", help="output folder")
    gen.set_defaults(func=cmd_generate)

    cmp_ = sub.add_parser("compare", help="PSNR/SSIM between two videos, images or image folders", formatter_class=fmt)
    cmp_.add_argument("a", help="first video, image or image folder")
    cmp_.add_argument("b", help="second video, image or image folder (same frame count and size)")
    cmp_.add_argument("--json", help="also write the numbers to this JSON file")
    cmp_.set_defaults(func=cmd_compare)

    bench = sub.add_parser("bench", help="benchmarks", formatter_class=fmt)
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    att = bench_sub.add_parser(
        "attention", help="sparse backends vs dense SDPA on one input, in one run", formatter_class=fmt
    )
    att.add_argument("--seq-len", type=_positive_int, default=16384, help="tokens (queries = keys)")
    att.add_argument("--heads", type=_positive_int, default=8, help="query heads")
    att.add_argument("--kv-heads", type=_positive_int, help="key/value heads (GQA; default: --heads)")
    att.add_argument("--head-dim", type=_positive_int, default=64, help="head dimension")
    att.add_argument("--batch", type=_positive_int, default=1, help="batch size")
    att.add_argument("--density", type=_config_field("topk_ratio"), default=0.2, help="share of key blocks kept")
    att.add_argument("--dtype", choices=dtypes, default="float32", help="input dtype")
    att.add_argument(
        "--block-size", type=_int_list, default=(128,), help="BLOCK or BLOCK_Q,BLOCK_K tokens (default: 128)"
    )
    att.add_argument(
        "--backends",
        default="dense,cpu,flex,gather",
        help="comma list of dense,flash_attn,build,triton,cpu,flex,gather,reference",
    )
    att.add_argument("--repeats", type=_positive_int, default=3, help="timed runs per backend (median reported)")
    att.add_argument("--device", type=_device, default="cpu", help="torch device")
    att.add_argument("--json", help="write {setup, results} to this JSON file")
    att.set_defaults(func=cmd_bench_attention)
    qual = bench_sub.add_parser(
        "quality", help="PSNR/SSIM vs density, warm-up and levers on the trained tiny Wan model", formatter_class=fmt
    )
    qual.add_argument("--out", default="quality-curve", help="output folder")
    qual.add_argument("--prompt", action="append", help="prompt (repeatable; default: fixed prompts of the model)")
    qual.add_argument("--num-prompts", type=_positive_int, default=2, help="fixed prompts used without --prompt")
    qual.add_argument("--steps", type=_positive_int, default=20, help="denoising steps")
    qual.add_argument("--size", type=_wan_pixels, default=128, help="height and width in pixels, a multiple of 16")
    qual.add_argument("--frames", type=_wan_frames, default=33, help="video frames, 4k+1 (Wan VAE)")
    qual.add_argument("--seed", type=int, default=0, help="seed of the first prompt (+1 per prompt)")
    qual.add_argument("--quick", action="store_true", help="four points instead of the full sweep")
    qual.add_argument(
        "--config", help="base SparseAttentionConfig (JSON) the sweep points modify (default: the library defaults)"
    )
    qual.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's)")
    qual.set_defaults(func=cmd_bench_quality)
    dlm = bench_sub.add_parser(
        "dlm", help="diffusion-LM generate time, dense vs sparse, at several context lengths", formatter_class=fmt
    )
    dlm.add_argument(
        "--context",
        type=_int_list,
        default=(4096, 8192, 16384),
        help="comma list of canvas lengths (prompt + generated) (default: 4096,8192,16384)",
    )
    dlm.add_argument("--heads", type=_positive_int, default=4, help="query heads")
    dlm.add_argument("--kv-heads", type=_positive_int, help="key/value heads (GQA; default: --heads)")
    dlm.add_argument("--head-dim", type=_positive_int, default=64, help="head dimension")
    dlm.add_argument("--layers", type=_positive_int, default=2, help="transformer layers")
    dlm.add_argument("--gen-length", type=_positive_int, default=32, help="generated tokens")
    dlm.add_argument("--steps", type=_positive_int, default=8, help="sampler steps (one forward each)")
    dlm.add_argument("--block-length", type=_positive_int, help="semi-autoregressive block (default: gen length)")
    dlm.add_argument(
        "--density",
        type=_config_field("topk_ratio"),
        default=0.2,
        help="top-k ratio of the sparse run (fixed, synthetic)",
    )
    dlm.add_argument(
        "--dense-steps",
        type=_config_field("dense_steps", _steps_or_fraction),
        default=0.25,
        help="dense warm-up: int steps or a fraction",
    )
    dlm.add_argument(
        "--block-size",
        type=_config_field("block_size", int),
        default=128,
        help="square mask tile in tokens, a multiple of 16",
    )
    dlm.add_argument("--backend", default="auto", help="sparse backend (auto, triton, cpu, flex, gather, reference)")
    dlm.add_argument("--dtype", choices=dtypes, default="float32", help="model dtype")
    dlm.add_argument("--device", type=_device, default="cpu", help="torch device")
    dlm.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's)")
    dlm.add_argument("--warmup", choices=["auto", "on", "off"], default="auto", help="untimed run first (auto: CUDA)")
    dlm.add_argument("--seed", type=int, default=0, help="seed of the model and prompts")
    dlm.add_argument("--json", help="write {setup, rows} to this JSON file")
    dlm.set_defaults(func=cmd_bench_dlm)
    dacc = bench_sub.add_parser(
        "dlm-accuracy",
        formatter_class=fmt,
        help="retrieval accuracy of the trained tiny DLM, dense vs sparse at several densities",
    )
    dacc.add_argument(
        "--context",
        type=_int_list,
        default=(1024, 2048, 4096),
        help="comma list of prompt lengths (default: 1024,2048,4096)",
    )
    dacc.add_argument(
        "--count", type=_positive_int, default=64, help="held-out prompts per length (4 answer tokens each)"
    )
    dacc.add_argument(
        "--config",
        help="SparseAttentionConfig (JSON file or inline JSON): compare dense with this "
        "config only, instead of the fixed sweep of the dlm adapter's defaults (default: the fixed sweep)",
    )
    dacc.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's)")
    dacc.add_argument("--json", help="write {setup, rows} to this JSON file")
    dacc.set_defaults(func=cmd_bench_dlm_accuracy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except SparseDiffusionError as exc:
        print(f"sparse-diffusion: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
