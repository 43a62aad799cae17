"""`sparse-diffusion generate`: run a local diffusers checkpoint folder, sparse, dense or both."""

from __future__ import annotations

from pathlib import Path

from ..errors import SparseDiffusionError
from . import output
from .args import HelpFormatter, device, load_config, positive_int


def add_parser(subparsers) -> None:
    gen = subparsers.add_parser(
        "generate", help="run a local diffusers checkpoint folder, sparse and/or dense", formatter_class=HelpFormatter
    )
    gen.add_argument("--model", required=True, help="local diffusers pipeline folder (save_pretrained layout)")
    gen.add_argument("--prompt", required=True, help="text prompt")
    gen.add_argument("--frames", type=positive_int, help="frames (video pipelines; default: the pipeline's own)")
    gen.add_argument("--height", type=positive_int, help="pixels (default: the pipeline's own)")
    gen.add_argument("--width", type=positive_int, help="pixels (default: the pipeline's own)")
    gen.add_argument("--steps", type=positive_int, default=30, help="denoising steps")
    gen.add_argument("--seed", type=int, default=0, help="random seed")
    gen.add_argument("--device", type=device, default="cpu", help="torch device")
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument("--sparse", dest="mode", action="store_const", const="sparse", help="accelerated run (default)")
    mode.add_argument("--dense", dest="mode", action="store_const", const="dense", help="untouched dense run")
    mode.add_argument("--both", dest="mode", action="store_const", const="both", help="dense + sparse + metrics")
    gen.set_defaults(mode="sparse")
    gen.add_argument(
        "--config", help="SparseAttentionConfig as a JSON file or inline JSON (default: the library defaults)"
    )
    gen.add_argument("--out", default="sparse-diffusion-out", help="output folder")
    gen.set_defaults(func=run)


def run(args) -> int:
    from diffusers import DiffusionPipeline

    from ..runs import call_kwargs, paired_run, single_run

    model = Path(args.model)
    config = load_config(args.config)  # before the (slow) load, so a bad --config fails at once
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
        output.prepare_cpu_kernel()
    pipe._sparse_diffusion_weights = f"loaded from {model.resolve()}"
    kwargs = call_kwargs(
        pipe, prompt=args.prompt, steps=args.steps, height=args.height, width=args.width, frames=args.frames
    )
    out = Path(args.out)
    extra = {"weights": pipe._sparse_diffusion_weights}
    try:
        if args.mode == "both":
            report = paired_run(pipe, kwargs, config, args.seed, out, extra=extra)
            output.print_paired(report, out)
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
