"""Backend registry and dispatcher for block-sparse attention calls (the one place that spells backend names).

One small class per backend: `NAME`, `BREAK_EVEN` (mask density above which it is slower than dense SDPA,
measured with `sparse-diffusion bench attention`: CPU with 2 threads at N = 2k-8k; GPU: the Triton kernel's target
of 85% of ideal), `BUILD` (the backend whose stats pass serves the build step when this one is configured),
`not_supported_reasons(call)`, `forward(...)` (block-sparse attention) and `build(...)` (dense attention with LSE and
tile mass; the chunked PyTorch pass unless the backend has a fused one). `choose` / `run` walk the device's `auto`
order for sparse calls and `run_build` its build order, formatting every reason; a backend disabled after a failure
(`backend_health`) says so. The design follows xformers' `fmha` dispatch (one operator class per kernel, a reasons
method, one dispatcher).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable, TypeVar

import torch

from . import backend_health, backends, reference
from .errors import SparseDiffusionError
from .kernels.cpu import launch as cpu_kernel


logger = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class SparseCall:
    """What a backend is asked to serve: q [B, H, Sq, D] (dtype, device, head dim), whether the LSE is needed, the
    mask's block size and whether per-batch key lengths (`seq_lens_k`) are given."""

    q: torch.Tensor
    need_lse: bool = True
    block_size: tuple[int, int] | None = None
    varlen: bool = False


class Backend:
    NAME = ""
    BREAK_EVEN = 1.0
    BUILD = "auto"

    def not_supported_reasons(self, call: SparseCall) -> list[str]:
        return []

    def build_reasons(self, allowed: bool) -> list[str]:
        """Why `build` cannot serve beyond `not_supported_reasons` (the chunked PyTorch pass serves every call)."""
        return []

    @property
    def fused_build(self) -> bool:
        """The backend has a stats pass of its own (else `build` is the chunked PyTorch pass)."""
        return type(self).build is not Backend.build

    def forward(self, q, k, v, mask, scale: float, seq_lens_k, need_lse: bool):
        raise NotImplementedError

    def build(self, q, k, v, block_size: tuple[int, int], scale: float, seq_lens_k, allowed):
        """(out, LSE float32 [B, H, Sq], tile mass float32 [B, H, QB, KB]): the chunked PyTorch pass."""
        return backends.chunked_dense_with_stats(q, k, v, block_size, scale, seq_lens_k, allowed)


class Triton(Backend):
    """Our fused Triton kernels (`kernels/`), CUDA fp16/bf16 (and Triton's interpreter in tests)."""

    NAME, BREAK_EVEN, BUILD = "triton", 0.9, "triton"

    def not_supported_reasons(self, call):
        try:
            from .kernels.triton import launch
        except ImportError as exc:
            return [f"Triton kernels unavailable ({exc})"]
        return launch.not_supported_reasons(call.q, call.block_size)

    def build_reasons(self, allowed):
        return ["no tile-table (allowed) input; use backend='auto'"] if allowed else []

    def forward(self, q, k, v, mask, scale, seq_lens_k, need_lse):
        from .kernels.triton import launch

        return launch.block_sparse_attention(q, k, v, mask, scale, seq_lens_k)

    def build(self, q, k, v, block_size, scale, seq_lens_k, allowed):
        from .kernels.triton import launch

        return launch.dense_attention_with_stats(q, k, v, block_size, scale, seq_lens_k)


class Cpu(Backend):
    """Native C++ block-sparse flash-attention kernel (`kernels/cpu`), compiled on first use."""

    NAME, BREAK_EVEN = "cpu", 0.9

    def not_supported_reasons(self, call):
        return cpu_kernel.not_supported_reasons(call.q)

    def forward(self, q, k, v, mask, scale, seq_lens_k, need_lse):
        return cpu_kernel.block_sparse_attention(q, k, v, mask, scale, seq_lens_k)


class Flex(Backend):
    """Compiled `flex_attention` with a `BlockMask` from our indices."""

    NAME, BREAK_EVEN = "flex", 0.7

    def not_supported_reasons(self, call):
        return backends.flex_reasons(call.q, call.need_lse, call.block_size, call.varlen)

    def forward(self, q, k, v, mask, scale, seq_lens_k, need_lse):
        return backends.flex_block_sparse(q, k, v, mask, scale, need_lse=need_lse)


class Gather(Backend):
    """Gather each row's kept K/V blocks and run dense attention on them; any device, no compile."""

    NAME, BREAK_EVEN = "gather", 0.6

    def forward(self, q, k, v, mask, scale, seq_lens_k, need_lse):
        return backends.gather_block_sparse(q, k, v, mask, scale, seq_lens_k)


class Reference(Backend):
    """PyTorch oracle (float32 compute), serves every call."""

    NAME, BREAK_EVEN, BUILD = "reference", 1.0, "reference"

    def forward(self, q, k, v, mask, scale, seq_lens_k, need_lse):
        out, lse = reference.block_sparse_attention_reference(
            q, k, v, mask, scale=scale, compute_dtype=torch.float32, seq_lens_k=seq_lens_k
        )
        return out.to(q.dtype), lse

    def build(self, q, k, v, block_size, scale, seq_lens_k, allowed):
        out, lse, mass = reference.dense_attention_with_stats_reference(
            q, k, v, block_size, scale=scale, seq_lens_k=seq_lens_k, allowed=allowed
        )
        return out.to(q.dtype), lse, mass


REGISTRY: dict[str, Backend] = {b.NAME: b for b in (Triton(), Cpu(), Flex(), Gather(), Reference())}
NAMES = ("auto", *REGISTRY)
BREAK_EVEN_DENSITY = {name: b.BREAK_EVEN for name, b in REGISTRY.items()}
_AUTO_ORDER = {"cuda": ("triton", "flex", "gather", "reference"), "cpu": ("cpu", "gather", "flex", "reference")}
_AUTO_BUILD_ORDER = {"cuda": ("triton",)}  # fused stats passes tried first; the chunked PyTorch pass serves the rest


def auto_order(q: torch.Tensor) -> tuple[str, ...]:
    """The order `auto` tries on q's device (measured on CPU: README, bench attention)."""
    return _AUTO_ORDER.get(q.device.type, _AUTO_ORDER["cpu"])


def check_name(backend: str) -> None:
    """Raises SparseDiffusionError for a name that is not "auto" or a registered backend."""
    if backend not in NAMES:
        raise SparseDiffusionError(f"backend={backend!r} is not known; choose one of {NAMES}.")


def reasons(name: str, call: SparseCall) -> list[str]:
    """Why backend `name` cannot serve `call` (empty list = it can), a failure-disabled backend included."""
    failed = backend_health.disabled_reason(name)
    if failed:
        return [f"disabled after it failed on this machine: {failed}"]
    return REGISTRY[name].not_supported_reasons(call)


def all_reasons(call: SparseCall) -> dict[str, list[str]]:
    return {name: reasons(name, call) for name in REGISTRY}


def choose(call: SparseCall, backend: str = "auto") -> str:
    """The backend that serves `call`: `backend` itself when forced, else the first of `auto_order` that can.

    Raises:
        SparseDiffusionError: unknown name, or a forced backend that cannot serve (with every reason).
    """
    check_name(backend)
    if backend != "auto":
        why = reasons(backend, call)
        if why:
            raise SparseDiffusionError(f"backend {backend!r} cannot serve this call: {'; '.join(why)}.")
        return backend
    skipped: dict[str, list[str]] = {}
    for name in auto_order(call.q):
        why = reasons(name, call)
        if not why:
            if skipped:
                logger.debug("auto backend %s; skipped %s", name, skipped)
            return name
        skipped[name] = why
    raise SparseDiffusionError(f"no backend can serve this call: {skipped}")  # pragma: no cover - reference serves all


def run(
    call: SparseCall, backend: str, k, v, mask, scale: float, seq_lens_k
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Serve `call` with `choose(call, backend)`. A kernel failure that is not an input error disables that backend
    once (`backend_health`); `auto` then goes on with the next one, a forced backend raises.

    Raises:
        SparseDiffusionError: as `choose`, or a forced backend whose kernel failed.
    """
    while True:
        name = choose(call, backend)
        impl = REGISTRY[name]
        result = _attempt(
            name, backend, call, partial(impl.forward, call.q, k, v, mask, scale, seq_lens_k, call.need_lse)
        )
        if result is not None:
            return result


def run_build(
    call: SparseCall, backend: str, k, v, scale: float, seq_lens_k, allowed
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The build step's stats pass (`ops.dense_attention_with_stats`) by `backend`: a forced name uses its own
    `build` (raising when it cannot serve), `auto` the first of the device's fused passes that can, then the chunked
    PyTorch pass. A fused kernel that fails is disabled once (`kernel_failed`) and `auto` goes on.

    Raises:
        SparseDiffusionError: unknown name, a forced backend that cannot serve or whose kernel failed.
    """
    check_name(backend)
    block_size = call.block_size
    if block_size is None:
        raise SparseDiffusionError("the build pass needs the mask's block size (SparseCall.block_size).")
    names = _AUTO_BUILD_ORDER.get(call.q.device.type, ()) if backend == "auto" else (backend,)
    for name in names:
        impl = REGISTRY[name]
        # a backend without a fused pass lends nothing of its own to the build: its reasons do not apply
        why = (reasons(name, call) if impl.fused_build else []) + impl.build_reasons(allowed is not None)
        if why:
            if backend == "auto":
                continue
            raise SparseDiffusionError(f"backend {name!r} cannot serve this call: {'; '.join(why)}.")
        built = _attempt(
            name, backend, call, partial(impl.build, call.q, k, v, block_size, scale, seq_lens_k, allowed)
        )
        if built is not None:
            return built
    return backends.chunked_dense_with_stats(call.q, k, v, block_size, scale, seq_lens_k, allowed)


def _attempt(name: str, backend: str, call: SparseCall, serve: Callable[[], _T]) -> _T | None:
    """`serve()` on backend `name`; None when its kernel failed and `auto` goes on (`kernel_failed`)."""
    try:
        return serve()
    except SparseDiffusionError:
        raise
    except Exception as exc:
        if name == "reference" and not backend_health.is_memory_error(exc):
            raise
        kernel_failed(name, exc, forced=backend != "auto", what=f"q {tuple(call.q.shape)} {call.q.dtype}")
        return None


def kernel_failed(name: str, exc: Exception, *, forced: bool, what: str) -> None:
    """Handle a backend's kernel raising `exc` (not an input error): a failed allocation is the call's size, raised as
    a SparseDiffusionError and disabling nothing; any other failure disables the backend once (`backend_health`),
    then returns for `auto` to go on, or raises for a forced backend.

    Raises:
        SparseDiffusionError: out of memory, or `forced`.
    """
    if backend_health.is_memory_error(exc):
        raise SparseDiffusionError(
            f"backend {name!r} ran out of memory for this call ({what}): {' '.join(str(exc).split())[:200]}; use "
            "smaller inputs or a lower density."
        ) from exc
    reason = backend_health.disable(name, exc)
    if forced:
        raise SparseDiffusionError(
            f"backend {name!r} failed ({reason}) and is now disabled for this process; use backend='auto' or another "
            "backend."
        ) from exc


def build_backend(configured: str) -> str:
    """The backend name the build step's stats pass uses when `configured` serves the sparse steps."""
    return "auto" if configured == "auto" else REGISTRY[configured].BUILD
