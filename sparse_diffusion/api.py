"""`accelerate_pipeline` / `accelerate_model`: pick the adapter, build the controller, install hooks; `SparseHandle`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .block_mask import normalize_block_size
from .config import SparseAttentionConfig
from .controller import SparseController
from .errors import SparseDiffusionError
from .hooks import install_hooks, remove_hooks
from .pipelines.base import Adapter
from .pipelines.registry import get_adapter
from .report import build_report, format_report


logger = logging.getLogger(__name__)

_HANDLE_ATTR = "_sparse_diffusion_handle"


def count_denoising_steps(timesteps: Any) -> int | None:
    """Denoising steps in a scheduler's timestep list: runs of equal consecutive values (Heun-type schedulers repeat
    each inner timestep once, and those repeats are one step)."""
    if timesteps is None:
        return None
    values = [float(t) for t in torch.as_tensor(timesteps).flatten().tolist()]
    if not values:
        return None
    return 1 + sum(1 for a, b in zip(values, values[1:]) if a != b)


class SparseHandle:
    """Handle of an accelerated denoiser: statistics, report, removal. Also a context manager (removes on exit)."""

    def __init__(
        self,
        denoisers: dict[str, torch.nn.Module],
        controller: SparseController,
        adapter: Adapter,
        torch_hooks: dict[str, list],
        pipe: Any = None,
    ):
        self.denoisers = dict(denoisers)  # component name -> module (Wan 2.2: transformer and transformer_2)
        self.controller = controller
        self.adapter = adapter
        self._torch_hooks = torch_hooks
        self._pipe = pipe
        self.removed = False
        if pipe is not None:
            _mark_call_starts(pipe, controller, adapter)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The first accelerated denoiser (`pipe.transformer` for most pipelines)."""
        return next(iter(self.denoisers.values()))

    @property
    def config(self) -> SparseAttentionConfig:
        return self.controller.config

    @property
    def layer_names(self) -> list[str]:
        return list(self.controller.layer_names)

    def report(self) -> dict:
        """JSON-serialisable statistics since acceleration (or `reset_stats()`): steps, density, kept mass,
        per-layer and per-head figures, re-plans, fallbacks and attention time per phase. See `report.build_report`."""
        weights = getattr(self._pipe, "_sparse_diffusion_weights", None)
        model = ", ".join(sorted({type(d).__name__ for d in self.denoisers.values()}))
        return build_report(self.controller, self.adapter, model_class=model, weights=weights)

    def format_report(self) -> str:
        """The report as a short text table, for logs and bug reports."""
        return format_report(self.report())

    def save_report(self, path: str | Path) -> Path:
        """Write `report()` as JSON to `path` (a file; parent folders are created)."""
        path = Path(path)
        if path.is_dir():
            raise SparseDiffusionError(
                f"save_report: {str(path)!r} is a folder; give a file path such as report.json."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report(), indent=2))
        return path

    def masks(self) -> dict:
        """Latest block mask built for each layer (`BlockSparseMask` on CPU), kept after the pipeline call ends."""
        return dict(self.controller.last_masks)

    def reset(self) -> None:
        """Drop the current call's state and all cached masks (the next forward starts a new call)."""
        self.controller.reset()

    def begin_call(self, total_steps: int | None = None, prompt_length: int | None = None) -> None:
        """Start a new call at the next forward, with `total_steps` denoising steps (diffusion LMs: forwards; None
        reads the pipeline scheduler or `num_inference_steps`) and `prompt_length` prompt tokens at the start of the
        sequence (read by `sparsed_selection`). `dlm.generate` calls this; a hand-written sampling loop should too.

        Raises:
            SparseDiffusionError: `total_steps` or `prompt_length` is not a positive / non-negative int.
        """
        for name, value, low in (("total_steps", total_steps, 1), ("prompt_length", prompt_length, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise SparseDiffusionError(f"{name}={value!r} must be an int >= {low} or None.")
        self.controller.begin_call(total_steps, prompt_length)

    def reset_stats(self) -> None:
        """Clear the accumulated statistics (plans are kept)."""
        self.controller.stats.clear()
        self.controller.passthrough.clear()
        self.controller.schedule.runs.clear()

    def remove(self) -> None:
        """Remove every hook: the denoiser is back to its untouched, bit-identical dense behaviour."""
        if self.removed:
            return
        for name, denoiser in self.denoisers.items():
            remove_hooks(denoiser, self._torch_hooks[name])
            if getattr(denoiser, _HANDLE_ATTR, None) is self:
                delattr(denoiser, _HANDLE_ATTR)
        if self._pipe is not None:
            _unmark_call_starts(self._pipe, self.adapter)
        self.controller.reset()
        self.removed = True

    def __enter__(self) -> "SparseHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"{len(self.controller.layer_names)} layers"
        return f"SparseHandle({self.adapter.family}, {', '.join(self.denoisers)}, {state})"


def begin_call(model: Any, total_steps: int | None = None, prompt_length: int | None = None) -> bool:
    """`SparseHandle.begin_call` on the handle of an accelerated `model`; returns False (and does nothing) when the
    model is not accelerated, so samplers can call it unconditionally."""
    handle = getattr(model, _HANDLE_ATTR, None)
    if handle is None or handle.removed:
        return False
    handle.begin_call(total_steps, prompt_length)
    return True


_MARKER_ATTR = "_sparse_diffusion_call_marker"


def _mark_call_starts(pipe: Any, controller: SparseController, adapter: Adapter) -> None:
    """Every call runs `adapter.call_marker` once before its first denoiser forward (diffusers pipelines open
    `self.progress_bar(total=...)` right before the denoising loop; `LLaDA2Pipeline` calls `check_inputs`): wrap that
    instance method so each call starts fresh even when the previous one was interrupted (Ctrl-C, an exception) and
    never reached `maybe_free_model_hooks`. One-step-per-forward adapters open a call whose step count is read at its
    first forward."""
    name = adapter.call_marker
    original = getattr(pipe, name, None)
    if original is None or getattr(pipe, _MARKER_ATTR, None) is not None:
        return
    start = controller.begin_call if adapter.step_source == "forward" else controller.reset

    def marker(*args, **kwargs):
        start()
        return original(*args, **kwargs)

    setattr(pipe, _MARKER_ATTR, name)
    setattr(pipe, name, marker)


def _unmark_call_starts(pipe: Any, adapter: Adapter) -> None:
    name = getattr(pipe, _MARKER_ATTR, None)
    if name is not None:
        delattr(pipe, name)  # the class method shows through again
        delattr(pipe, _MARKER_ATTR)


def _check_backend_can_serve(denoiser: torch.nn.Module, config: SparseAttentionConfig) -> None:
    """Refuse, before any step runs, a forced backend that can never serve this denoiser's device and dtype; on CPU
    also compile the native kernel now (first use only) rather than inside the first sparse step."""
    from . import ops
    from .kernels.cpu import launch as cpu_kernel

    param = next(denoiser.parameters(), None)
    if param is None:
        return
    if param.device.type == "cpu" and config.backend in ("auto", "cpu"):
        cpu_kernel.build_error()
    if config.backend == "auto":
        return
    probe = torch.empty(
        1, 1, 1, 64, dtype=param.dtype if param.dtype.is_floating_point else torch.float32, device=param.device
    )
    block = normalize_block_size(config.block_size, low=16, high=512)
    reasons = ops.sparse_backend_reasons(probe, need_lse=True, block_size=block)[config.backend]
    if reasons:
        raise SparseDiffusionError(
            f"backend={config.backend!r} cannot serve {type(denoiser).__name__} on {param.device} ({param.dtype}): "
            f"{'; '.join(reasons)}. The pipeline path needs the LSE of every sparse call; use backend='auto'."
        )


def _make_config(
    config: SparseAttentionConfig | None, overrides: dict, adapter: Adapter | None = None
) -> SparseAttentionConfig:
    """`config` with `overrides`; without a config, the adapter's `config_defaults` with `overrides`."""
    if config is not None and not isinstance(config, SparseAttentionConfig):
        raise SparseDiffusionError(f"config must be a SparseAttentionConfig or None, got {type(config).__name__}.")
    if config is None:
        defaults = dict(adapter.config_defaults) if adapter is not None else {}
        return (
            SparseAttentionConfig(**defaults).replace(**overrides)
            if defaults or overrides
            else SparseAttentionConfig()
        )
    return config.replace(**overrides) if overrides else config


def _check_not_parallel(denoiser: torch.nn.Module) -> None:
    parallel = getattr(denoiser, "_parallel_config", None)
    if parallel is not None:
        raise SparseDiffusionError(
            f"{type(denoiser).__name__} is set up for context/sequence parallelism ({parallel}); sparse-diffusion does "
            "not support it yet. Accelerate a non-parallel model instead."
        )


def _accelerate(
    denoisers: dict[str, torch.nn.Module],
    config: SparseAttentionConfig,
    adapter: Adapter,
    total_steps_fn,
    restart: bool,
    pipe,
) -> SparseHandle:
    """Hook every denoiser under one controller. Layers of the first keep their module names; those of the others
    are prefixed with their component name (`transformer_2.blocks.0.attn1`), so each gets its own plans."""
    for denoiser in denoisers.values():
        if not isinstance(denoiser, torch.nn.Module):
            raise SparseDiffusionError(f"expected a torch.nn.Module denoiser, got {type(denoiser).__name__}.")
        _check_not_parallel(denoiser)
        _check_backend_can_serve(denoiser, config)
    per_forward = adapter.step_source == "forward"  # the sampler tells each call's steps (begin_call)
    # a `call_module` (DiffusionGemma's encoder) opens calls without a step count: no sampler tells it
    sampler_tells = per_forward and not adapter.call_module
    if isinstance(config.dense_steps, float) and total_steps_fn() is None and pipe is None and not sampler_tells:
        raise SparseDiffusionError(
            f"dense_steps={config.dense_steps} is a fraction, but accelerate_model() does not know the number of "
            "denoising steps; pass num_inference_steps=... or an int dense_steps."
        )
    layers = {}
    for i, (component, denoiser) in enumerate(denoisers.items()):
        prefix = "" if i == 0 else f"{component}."
        layers[component] = [(prefix + name, module) for name, module in adapter.self_attention_layers(denoiser)]
    for denoiser in denoisers.values():
        previous = getattr(denoiser, _HANDLE_ATTR, None)
        if previous is not None:
            logger.info(
                "sparse-diffusion: %s was already accelerated; replacing the previous configuration",
                type(denoiser).__name__,
            )
            previous.remove()
    controller = SparseController(
        config,
        [name for component_layers in layers.values() for name, _ in component_layers],
        total_steps_fn,
        restart_on_timestep_increase=restart,
        text_position=adapter.text_position,
        step_per_forward=per_forward,
        increasing_timesteps=adapter.increasing_timesteps,
        query_is_key_suffix=adapter.query_is_key_suffix,
    )
    torch_hooks = {c: install_hooks(d, controller, adapter, layers[c]) for c, d in denoisers.items()}
    handle = SparseHandle(denoisers, controller, adapter, torch_hooks, pipe)
    for denoiser in denoisers.values():
        setattr(denoiser, _HANDLE_ATTR, handle)
    logger.info(
        "sparse-diffusion: accelerating %d %s self-attention layers", len(controller.layer_names), adapter.family
    )
    return handle


def accelerate_pipeline(
    pipe: Any, config: SparseAttentionConfig | None = None, *, adapter: str | Adapter | None = None, **overrides: Any
) -> SparseHandle:
    """Accelerate a diffusers pipeline's denoiser with block-sparse self-attention after a dense warm-up.

    Args:
        pipe: a diffusers pipeline with a supported denoiser in `pipe.transformer` (Wan, CogVideoX, Flux, SD3, LTX,
            Qwen-Image, HunyuanVideo, Mochi; see the README table; Wan 2.2's `transformer_2` is accelerated too, with
            its own plans) and a scheduler whose `timesteps` give the number of denoising steps; or a diffusion-LM
            pipeline with its LM in `pipe.model` (`LLaDA2Pipeline`: one step per forward, `pipe.num_timesteps` steps
            per call).
        config: `SparseAttentionConfig`; when `None`, the default settings with the adapter's `config_defaults`
            (diffusion LMs: `policy="topk"`, see the README) on top.
        adapter: adapter name or instance; looked up from the denoiser class when `None`. `"generic"` accelerates
            every square, unmasked self-attention call of an unknown model.
        **overrides: config fields to change, e.g. `dense_steps=10`.

    Returns:
        `SparseHandle` with `report()` and `remove()`. Calling again on the same pipeline reconfigures it (the old
        hooks are removed first, never stacked).

    Raises:
        SparseDiffusionError: no denoiser found, unsupported model (lists supported families), bad config values,
            context-parallel models.
    """
    if config is not None:  # a bad config fails before the model is inspected
        _make_config(config, overrides)
    attrs = {name: getattr(pipe, name, None) for name in ("transformer", "transformer_2", "model")}
    found: dict[str, torch.nn.Module] = {n: m for n, m in attrs.items() if isinstance(m, torch.nn.Module)}
    if not found:
        raise SparseDiffusionError(
            f"{type(pipe).__name__} has no `transformer` (or `model`) denoiser; for a UNet or a bare model use "
            "accelerate_model()."
        )
    resolved = get_adapter(next(iter(found.values())), adapter)
    config = _make_config(config, overrides, resolved)
    denoisers = {name: module for name, module in found.items() if name in resolved.denoiser_components}
    if resolved.family == "generic" or not denoisers:
        denoisers = found

    def total_steps() -> int | None:
        if resolved.steps_attribute is not None:
            return getattr(pipe, resolved.steps_attribute, None)
        return count_denoising_steps(getattr(getattr(pipe, "scheduler", None), "timesteps", None))

    return _accelerate(denoisers, config, resolved, total_steps, restart=False, pipe=pipe)


def accelerate_model(
    model: torch.nn.Module,
    config: SparseAttentionConfig | None = None,
    *,
    num_inference_steps: int | None = None,
    adapter: str | Adapter | None = None,
    **overrides: Any,
) -> SparseHandle:
    """Accelerate a bare denoiser (no pipeline). A call starts at the first forward and whenever the timestep goes
    up; `handle.reset()` also starts one.

    Args:
        model: the denoiser module.
        config: as in `accelerate_pipeline` (`None`: defaults plus the adapter's `config_defaults`).
        num_inference_steps: denoising steps per call; needed when `dense_steps` is a fraction.

    Raises:
        SparseDiffusionError: as `accelerate_pipeline`.
    """
    if config is not None:  # a bad config fails before the model is inspected
        _make_config(config, overrides)
    resolved = get_adapter(model, adapter)
    config = _make_config(config, overrides, resolved)
    if num_inference_steps is not None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
        raise SparseDiffusionError(f"num_inference_steps={num_inference_steps!r} must be a positive int or None.")
    return _accelerate({"model": model}, config, resolved, lambda: num_inference_steps, restart=True, pipe=None)
