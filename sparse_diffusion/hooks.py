"""diffusers `ModelHook`s: a stateful step hook on the denoiser and one interception hook per self-attention module.

The pipeline's `maybe_free_model_hooks()` resets stateful hooks at the end of every call, which ends our call state;
`cache_context("cond"/"uncond")` reaches the step hook through its `StateManager`.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .interception import SDPAInterceptor


DENOISER_HOOK = "sparse_diffusion_denoiser"
ATTENTION_HOOK = "sparse_diffusion_attention"


class _ContextState(BaseState):
    """Empty per-context state: the StateManager only carries the cache context name to us."""

    def reset(self, *args, **kwargs) -> None:
        pass


class DenoiserStepHook(ModelHook):
    """Carries the cache context (`cond`/`uncond`) to the controller and ends the call on `reset_state`.

    The per-forward work (timestep, text length) runs in plain torch forward hooks registered beside it, which keep
    working when accelerate's CPU offload re-wraps the denoiser's `forward`.
    """

    _is_stateful = True

    def __init__(self, controller, adapter) -> None:
        super().__init__()
        self.controller = controller
        self.adapter = adapter
        self.state_manager = StateManager(_ContextState)

    def context_name(self) -> str | None:
        try:
            return self.state_manager.context.name
        except ValueError:  # the pipeline set no cache context
            return None

    @torch.compiler.disable  # Python call state: runs eagerly inside a compiled denoiser
    def before_forward(self, module, args, kwargs):
        timed = self.adapter.step_source == "timestep"
        self.controller.begin_forward(
            self.adapter.read_timestep(module, args, kwargs) if timed else None,
            self.context_name(),
            self.adapter.text_length(module, args, kwargs),
            self.adapter.token_grid(module, args, kwargs),
        )

    @torch.compiler.disable
    def after_forward(self, module, args, kwargs, output):
        self.controller.end_forward()

    def reset_state(self, module):
        self.controller.reset()
        self.state_manager.reset()
        return module


class AttentionLayerHook(ModelHook):
    """Runs the module's forward under `SDPAInterceptor` while a denoiser forward is in progress."""

    def __init__(self, controller, layer: str) -> None:
        super().__init__()
        self.controller = controller
        self.layer = layer

    @torch.compiler.disable  # phases change per step: a compiled denoiser runs hooked attention modules eagerly
    def new_forward(self, module, *args, **kwargs):
        if not self.controller.in_forward:
            return self.fn_ref.original_forward(*args, **kwargs)
        mode = SDPAInterceptor(self.controller, self.layer)
        with mode:
            out = self.fn_ref.original_forward(*args, **kwargs)
        if mode.seen == 0:
            self.controller.record_not_intercepted(self.layer)
        return out


def install_hooks(denoiser, controller, adapter, layers: list[tuple[str, object]]) -> list:
    """Register the step hook on `denoiser` and an attention hook on every `(name, module)` in `layers`.

    Returns the torch hook handles to pass to `remove_hooks`.
    """
    step_hook = DenoiserStepHook(controller, adapter)
    HookRegistry.check_if_exists_or_initialize(denoiser).register_hook(step_hook, DENOISER_HOOK)
    stepper = denoiser.get_submodule(adapter.step_module) if adapter.step_module else denoiser
    handles = [
        stepper.register_forward_pre_hook(step_hook.before_forward, with_kwargs=True),
        stepper.register_forward_hook(step_hook.after_forward, with_kwargs=True, always_call=True),
    ]
    if adapter.call_module:  # its forward precedes a new call's steps (DiffusionGemma: the encoder, once per canvas)
        opener = denoiser.get_submodule(adapter.call_module)
        handles.append(opener.register_forward_pre_hook(lambda module, args: controller.begin_call()))
    for name, module in layers:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(
            AttentionLayerHook(controller, name), ATTENTION_HOOK
        )
    HookRegistry.check_if_exists_or_initialize(denoiser).invalidate_child_registries_cache()
    return handles


def remove_hooks(denoiser, handles: list) -> None:
    """Remove both hook kinds from `denoiser` and all its submodules."""
    for handle in handles:
        handle.remove()
    registry = HookRegistry.check_if_exists_or_initialize(denoiser)
    registry.remove_hook(DENOISER_HOOK, recurse=False)
    registry.remove_hook(ATTENTION_HOOK, recurse=True)
    registry.invalidate_child_registries_cache()
