"""`scripts/gpu_check.sh --dry-run`: the prepared GPU run, on CPU in Triton's interpreter with tiny shapes and
so a lent GPU is never wasted on a broken script (issue 13)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_table(tmp_path):
    pytest.importorskip("triton")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "done.txt").is_file(), done.stdout[-3000:]
    env_info = json.loads((tmp_path / "env.json").read_text())
    assert env_info["dry_run"] is True and env_info["triton"][0].isdigit()
    tests = (tmp_path / "tests.txt").read_text()
    assert "tests exit 0" in tests and " passed" in tests and "failed" not in tests
    assert (tmp_path / "tests.xml").is_file()
    summary = json.loads((tmp_path / "bench_summary.json").read_text())
    assert len(summary) == 1 and {"speedup", "share_of_ideal", "build_vs_dense", "kept_tflops"} <= set(summary[0])
    point = json.loads((tmp_path / "bench_N256_d0.5.json").read_text())
    rows = {r["backend"]: r for r in point["results"]}
    assert {"dense", "triton", "gather", "build"} <= set(rows)
    for name in ("triton", "gather"):
        assert "median_s" in rows[name] and rows[name]["max_abs_err"] < 1e-4, rows[name]
    dlm = json.loads((tmp_path / "bench_dlm.json").read_text())
    assert dlm and "bench dlm exit" not in (tmp_path / "bench_dlm.txt").read_text()
    assert "dlm exit 0" in (tmp_path / "bench_dlm.txt").read_text()
