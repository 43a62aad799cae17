"""`sparse-diffusion bench`: attention, quality, dlm and dlm-accuracy."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import SparseDiffusionError
from . import output
from .args import (
    DTYPES,
    HelpFormatter,
    config_field,
    device,
    int_list,
    load_config,
    positive_int,
    steps_or_fraction,
    torch_dtype,
    wan_frames,
    wan_pixels,
)


def add_parser(subparsers) -> None:
    fmt = HelpFormatter
    bench = subparsers.add_parser("bench", help="benchmarks", formatter_class=fmt)
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    att = bench_sub.add_parser(
        "attention", help="sparse backends vs dense SDPA on one input, in one run", formatter_class=fmt
    )
    att.add_argument("--seq-len", type=positive_int, default=16384, help="tokens (queries = keys)")
    att.add_argument("--heads", type=positive_int, default=8, help="query heads")
    att.add_argument("--kv-heads", type=positive_int, help="key/value heads (GQA; default: --heads)")
    att.add_argument("--head-dim", type=positive_int, default=64, help="head dimension")
    att.add_argument("--batch", type=positive_int, default=1, help="batch size")
    att.add_argument("--density", type=config_field("topk_ratio"), default=0.2, help="share of key blocks kept")
    att.add_argument("--dtype", choices=DTYPES, default="float32", help="input dtype")
    att.add_argument(
        "--block-size", type=int_list, default=(128,), help="BLOCK or BLOCK_Q,BLOCK_K tokens (default: 128)"
    )
    att.add_argument(
        "--backends",
        default="dense,cpu,flex,gather",
        help="comma list of dense,flash_attn,build,triton,cpu,flex,gather,reference",
    )
    att.add_argument("--repeats", type=positive_int, default=3, help="timed runs per backend (median reported)")
    att.add_argument("--device", type=device, default="cpu", help="torch device")
    att.add_argument("--json", help="write {setup, results} to this JSON file")
    att.set_defaults(func=run_attention)
    qual = bench_sub.add_parser(
        "quality", help="PSNR/SSIM vs density, warm-up and levers on the trained tiny Wan model", formatter_class=fmt
    )
    qual.add_argument("--out", default="quality-curve", help="output folder")
    qual.add_argument("--prompt", action="append", help="prompt (repeatable; default: fixed prompts of the model)")
    qual.add_argument("--num-prompts", type=positive_int, default=2, help="fixed prompts used without --prompt")
    qual.add_argument("--steps", type=positive_int, default=20, help="denoising steps")
    qual.add_argument("--size", type=wan_pixels, default=128, help="height and width in pixels, a multiple of 16")
    qual.add_argument("--frames", type=wan_frames, default=33, help="video frames, 4k+1 (Wan VAE)")
    qual.add_argument("--seed", type=int, default=0, help="seed of the first prompt (+1 per prompt)")
    qual.add_argument("--quick", action="store_true", help="four points instead of the full sweep")
    qual.add_argument(
        "--config", help="base SparseAttentionConfig (JSON) the sweep points modify (default: the library defaults)"
    )
    qual.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    qual.set_defaults(func=run_quality)
    dlm = bench_sub.add_parser(
        "dlm", help="diffusion-LM generate time, dense vs sparse, at several context lengths", formatter_class=fmt
    )
    dlm.add_argument(
        "--context",
        type=int_list,
        default=(4096, 8192, 16384),
        help="comma list of canvas lengths (prompt + generated) (default: 4096,8192,16384)",
    )
    dlm.add_argument("--heads", type=positive_int, default=4, help="query heads")
    dlm.add_argument("--kv-heads", type=positive_int, help="key/value heads (GQA; default: --heads)")
    dlm.add_argument("--head-dim", type=positive_int, default=64, help="head dimension")
    dlm.add_argument("--layers", type=positive_int, default=2, help="transformer layers")
    dlm.add_argument("--gen-length", type=positive_int, default=32, help="generated tokens")
    dlm.add_argument("--steps", type=positive_int, default=8, help="sampler steps (one forward each)")
    dlm.add_argument("--block-length", type=positive_int, help="semi-autoregressive block (default: gen length)")
    dlm.add_argument(
        "--density",
        type=config_field("topk_ratio"),
        default=0.2,
        help="top-k ratio of the sparse run (fixed, synthetic)",
    )
    dlm.add_argument(
        "--dense-steps",
        type=config_field("dense_steps", steps_or_fraction),
        default=0.25,
        help="dense warm-up: int steps or a fraction",
    )
    dlm.add_argument(
        "--block-size",
        type=config_field("block_size", int),
        default=128,
        help="square mask tile in tokens, a multiple of 16",
    )
    dlm.add_argument("--backend", default="auto", help="sparse backend (auto, triton, cpu, flex, gather, reference)")
    dlm.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype")
    dlm.add_argument("--device", type=device, default="cpu", help="torch device")
    dlm.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    dlm.add_argument("--warmup", choices=["auto", "on", "off"], default="auto", help="untimed run first (auto: CUDA)")
    dlm.add_argument("--seed", type=int, default=0, help="seed of the model and prompts")
    dlm.add_argument("--json", help="write {setup, rows} to this JSON file")
    dlm.set_defaults(func=run_dlm)
    dacc = bench_sub.add_parser(
        "dlm-accuracy",
        formatter_class=fmt,
        help="retrieval accuracy of the trained tiny DLM, dense vs sparse at several densities",
    )
    dacc.add_argument(
        "--context",
        type=int_list,
        default=(1024, 2048, 4096),
        help="comma list of prompt lengths (default: 1024,2048,4096)",
    )
    dacc.add_argument(
        "--count", type=positive_int, default=64, help="held-out prompts per length (4 answer tokens each)"
    )
    dacc.add_argument(
        "--config",
        help="SparseAttentionConfig (JSON file or inline JSON): compare dense with this "
        "config only, instead of the fixed sweep of the dlm adapter's defaults (default: the fixed sweep)",
    )
    dacc.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    dacc.add_argument("--json", help="write {setup, rows} to this JSON file")
    dacc.set_defaults(func=run_dlm_accuracy)


def run_attention(args) -> int:
    from ..benchmark import bench_attention, format_table

    block = args.block_size
    if len(block) > 2:
        raise SparseDiffusionError(f"--block-size {','.join(map(str, block))} must be BLOCK or BLOCK_Q,BLOCK_K.")
    result = bench_attention(
        seq_len=args.seq_len,
        heads=args.heads,
        head_dim=args.head_dim,
        density=args.density,
        dtype=torch_dtype(args.dtype),
        kv_heads=args.kv_heads,
        batch=args.batch,
        block_size=block if len(block) == 2 else block * 2,
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        repeats=args.repeats,
        device=args.device,
    )
    print(format_table(result))
    output.write_json(args.json, result)
    return 0


def run_quality(args) -> int:
    import torch

    from ..quality_curve import DEFAULT_POINTS, QUICK_POINTS, plot_curve, run_quality_curve
    from ..runs import call_kwargs
    from ..testing import load_trained_tiny_wan_pipeline, shapes

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = load_config(args.config)
    output.prepare_cpu_kernel()
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


def run_dlm(args) -> int:
    import torch

    from ..bench_dlm import bench_dlm, check_sizes, format_table

    dtype = torch_dtype(args.dtype)
    check_sizes(args.context, args.gen_length, args.steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and args.backend in ("auto", "cpu"):
        output.prepare_cpu_kernel()
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
    output.write_json(args.json, result)
    return 0


def run_dlm_accuracy(args) -> int:
    import torch

    from ..bench_dlm import ACCURACY_HEADER, ACCURACY_NOTE, accuracy_sweep, format_accuracy_row

    base = load_config(args.config) if args.config else None
    if args.threads:
        torch.set_num_threads(args.threads)
    output.prepare_cpu_kernel()
    print(ACCURACY_HEADER, flush=True)
    # --config: dense and that config only (the fixed points are overrides of the adapter's defaults)
    points: dict | None = {"dense": None, "--config": {}} if base is not None else None
    result = accuracy_sweep(
        args.context,
        count=args.count,
        points=points,
        base=base,
        on_row=lambda row: print(format_accuracy_row(row), flush=True),
    )
    print(ACCURACY_NOTE)
    output.write_json(args.json, result)
    return 0
