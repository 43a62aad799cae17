"""Backends disabled after a failure: a kernel that fails to compile or launch is switched off once for the process.

A failure that is not a `SparseDiffusionError` (those are input errors) from a backend's kernel, e.g. Triton's
`CompilationError` or `OutOfResources` on a user's GPU, disables that backend for the rest of the process (a failed
memory allocation does not: it belongs to the call's size and is raised as a `SparseDiffusionError`). One
warning names the error and the fix; `ops` then reports the backend as unable to serve ("disabled after it failed:
..."), so `backend="auto"` serves every later call with the next backend and a forced backend raises a
`SparseDiffusionError`. Nothing retries the failing kernel per call.
"""

from __future__ import annotations

import logging
import threading
import warnings

import torch


logger = logging.getLogger(__name__)

_FIX = {
    "triton": "upgrade Triton (pip install -U triton) or pass backend='flex' / backend='gather' to serve the sparse "
    "steps without it",
    "cpu": "check that a C++ compiler (g++) and ninja are installed, or pass backend='gather'",
    "flex": "upgrade torch or pass backend='gather'",
}
_disabled: dict[str, str] = {}
_lock = threading.Lock()


class BackendFailureWarning(RuntimeWarning):
    """A sparse-attention backend failed on this machine and is disabled for the process."""


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def is_memory_error(exc: BaseException) -> bool:
    """An allocation that failed for this call's size (host or device): a property of the input, not of the kernel,
    so it never disables a backend."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
        or "not enough memory" in text
    )


def disable(name: str, exc: BaseException) -> str:
    """Disable backend `name` after `exc`; warns once (the first failure wins). Returns the recorded reason."""
    with _lock:
        if name in _disabled:
            return _disabled[name]
        reason = _describe(exc)
        _disabled[name] = reason
    message = (
        f"sparse-diffusion: the {name!r} attention backend failed ({reason}) and is disabled for this process; "
        f"backend='auto' serves later calls with the next backend. Fix: {_FIX.get(name, 'pass another backend=')}."
    )
    logger.warning(message)
    warnings.warn(message, BackendFailureWarning, stacklevel=3)
    return reason


def disabled_reason(name: str) -> str | None:
    """Why backend `name` is disabled (None when it is not)."""
    return _disabled.get(name)


def disabled() -> dict[str, str]:
    """Every disabled backend with the error that disabled it."""
    return dict(_disabled)


def enable(name: str | None = None) -> None:
    """Re-enable backend `name` (all when None), e.g. after fixing the installation in a long-running process."""
    with _lock:
        if name is None:
            _disabled.clear()
        else:
            _disabled.pop(name, None)
