"""A training log for the scripts: one JSON object per line, each with the seconds since the log was opened, also
printed."""

from __future__ import annotations

import json
import time
from pathlib import Path


class JsonlLog:
    def __init__(self, path: Path, append: bool = False):
        self.f = Path(path).open("a" if append else "w")
        self.t0 = time.time()

    def __call__(self, **row):
        row["elapsed_s"] = round(time.time() - self.t0, 1)
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        print(json.dumps(row), flush=True)
