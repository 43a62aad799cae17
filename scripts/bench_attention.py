"""Attention benchmark, same as `sparse-diffusion bench attention` (see --help); writes JSON with --json."""

import sys

from sparse_diffusion.cli import main


if __name__ == "__main__":
    sys.exit(main(["bench", "attention", *sys.argv[1:]]))
