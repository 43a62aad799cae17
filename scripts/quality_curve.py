"""PSNR/SSIM vs attention density, dense warm-up and levers on the trained tiny Wan model: `sparse-diffusion bench
quality` (arguments are passed through, e.g. `python scripts/quality_curve.py --out docs/quality --quick`)."""

import sys

from sparse_diffusion.cli import main


if __name__ == "__main__":
    sys.exit(main(["bench", "quality", *sys.argv[1:]]))
