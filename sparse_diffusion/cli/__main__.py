"""`python -m sparse_diffusion.cli`, same as `sparse-diffusion`."""

import sys

from . import main


sys.exit(main())
