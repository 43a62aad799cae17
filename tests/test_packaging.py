"""Packaging: no folder of the repository shadows an installed package, whatever the entry point (issue 12).

The root folders `kernels/` and `pipelines/` are installed as `sparse_diffusion.kernels` / `sparse_diffusion.pipelines`.
They carry no `__init__.py`: a folder without one is only a namespace portion, and Python prefers any regular package
found on `sys.path` (such as the PyPI `kernels` package that transformers depends on) over it, even when the
repository root comes first on `sys.path` (`python -m pytest`, `python -c`, a notebook started in the checkout).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import importlib.util, json, sys
import transformers
from diffusers import WanPipeline
import sparse_diffusion.kernels.triton.launch as launch
import sparse_diffusion.pipelines.registry as registry
spec = importlib.util.find_spec("kernels")
out = {
    "kernels_origin": spec.origin if spec else None,
    "kernels_locations": list(spec.submodule_search_locations or []) if spec else [],
    "launch": launch.__file__,
    "registry": registry.__file__,
    "families": sorted(registry.ADAPTERS),
}
if spec is not None and spec.origin:
    import kernels
    out["kernels_has_hf_api"] = hasattr(kernels, "get_kernel")
print(json.dumps(out))
"""


def test_root_folders_are_namespace_portions():
    """Only the core package has an `__init__.py` at the top of the tree; a regular package there would shadow PyPI."""
    regular = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "sparse_diffusion")
    assert regular == [], f"root folders {regular} would shadow installed packages of the same name"


@pytest.mark.parametrize("entry", ["python -c", "python -m"])
def test_repository_root_does_not_shadow_installed_packages(entry, tmp_path):
    """From the repository root, transformers, a diffusers pipeline class and our kernels all import together."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONSAFEPATH", None)  # keep the working directory on sys.path, as users have it
    if entry == "python -c":
        cmd = [sys.executable, "-c", _PROBE]
    else:  # `python -m` also puts the working directory first on sys.path
        (tmp_path / "probe_shadow.py").write_text(_PROBE)
        env["PYTHONPATH"] = str(tmp_path)
        cmd = [sys.executable, "-m", "probe_shadow"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(out["launch"]).parent.parent.name == "kernels"
    assert Path(out["registry"]).parent.name == "pipelines"
    assert "wan" in out["families"] and "flux" in out["families"]
    if out["kernels_origin"] is not None:  # the PyPI `kernels` package (a transformers dependency) is installed
        origin = Path(out["kernels_origin"]).resolve()  # (a venv may live inside the checkout, as CI's does)
        assert not origin.is_relative_to(ROOT / "kernels") and "site-packages" in origin.parts, out
        assert out["kernels_has_hf_api"], out
    else:  # not installed: `kernels` may only resolve to our namespace portion, never a regular package of ours
        assert all(Path(p).resolve() == ROOT / "kernels" for p in out["kernels_locations"]), out
