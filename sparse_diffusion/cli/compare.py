"""`sparse-diffusion compare`: PSNR/SSIM between two videos, images or image folders."""

from __future__ import annotations

from . import output
from .args import HelpFormatter


def add_parser(subparsers) -> None:
    cmp_ = subparsers.add_parser(
        "compare", help="PSNR/SSIM between two videos, images or image folders", formatter_class=HelpFormatter
    )
    cmp_.add_argument("a", help="first video, image or image folder")
    cmp_.add_argument("b", help="second video, image or image folder (same frame count and size)")
    cmp_.add_argument("--json", help="also write the numbers to this JSON file")
    cmp_.set_defaults(func=run)


def run(args) -> int:
    from ..media import read_frames
    from ..metrics import compare_videos

    a, b = read_frames(args.a), read_frames(args.b)
    result = compare_videos(a, b)
    print(f"{'frame':>5s} {'PSNR dB':>10s} {'SSIM':>8s}")
    for i, (p, s) in enumerate(zip(result["per_frame_psnr"], result["per_frame_ssim"])):
        print(f"{i:5d} {p:10.2f} {s:8.4f}")
    print(
        f"mean PSNR {output.fmt_db(result['mean_psnr'])}, mean SSIM {result['mean_ssim']:.4f} over "
        f"{result['frames']} frames"
    )
    print(f"data range {result['data_range']:g} (uint8 frames), float64 arithmetic; {result['note']}")
    output.write_json(args.json, result)
    return 0
