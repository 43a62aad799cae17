"""`Adapter`: the per-model facts the core needs (which modules are self-attention, where text tokens sit, the
timestep argument). Adapters are data; no model code is copied."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import torch

from ..errors import SparseDiffusionError


@dataclass(frozen=True)
class Adapter:
    """What sparse-diffusion needs to know about one denoiser family.

    Attributes:
        family: short name shown in reports (`"wan"`, `"cogvideox"`, `"flux"`, `"generic"`).
        transformer_classes: class names of the denoisers this adapter serves.
        self_attention: regex matched with `re.fullmatch` against module names inside the denoiser; matching modules
            are the accelerated self-attention layers.
        text_position: where joint text tokens sit in those layers' sequence (`"first"`, `"last"`) or `None`.
        text_kwarg: forward argument whose dim 1 is the text length.
        timestep_kwarg: forward argument holding the timestep.
        denoiser_components: pipeline attributes holding denoisers of this family.
        token_layout: one line for the README / report on what is accelerated and what stays dense.
        match_attention_classes: select modules by diffusers attention class instead of `self_attention`
            (outermost attention modules only).
        video_grid: the self-attention sequence holds the video tokens in raster order (frame, row, column), read
            from `hidden_states` [B, C, F, H, W] and the denoiser's `patch_size`, plus the joint text tokens (if any)
            at `text_position`; a call's text length is then its length minus the video tokens. Enables token tiling
            for calls without text.
        temporal_patch: an int `patch_size` also patches time (False: 2-D patches per latent frame, Mochi).
        increasing_timesteps: the scheduler's timesteps go up during a call (Mochi); `accelerate_model` then starts a
            new call when the timestep goes down.
        step_source: `"timestep"`: steps are counted from the timestep argument's progression (diffusion
            denoisers); `"forward"`: every denoiser forward is one step (diffusion LMs have no timestep) and the
            call's step count comes from `begin_call` (the DLM sampler opens one) or `num_inference_steps`.
        steps_attribute: pipeline attribute read at a call's first forward for its number of steps (LLaDA2:
            `num_timesteps`); None counts the scheduler's timesteps.
        call_marker: pipeline method called once at the start of every call, before any denoiser forward; wrapped
            so that each call starts with fresh state even after an interrupted one.
        step_module: submodule of the denoiser whose forward marks a step, when the denoiser's own `forward` is
            called directly (bypassing hooks) or also runs other work (DiffusionGemma: `model.decoder`).
        call_module: submodule of the denoiser whose forward opens a new call (`begin_call`) before the steps that
            follow it (DiffusionGemma: `model.encoder`, which runs once before each canvas is denoised, so every
            canvas gets its own warm-up and plans).
        query_is_key_suffix: the accelerated layers' calls with Sq < Sk are prefix attention, whose queries are the
            last Sq keys (DiffusionGemma's decoder: canvas queries over `[encoder KV cache ; canvas]` keys); they are
            served sparse (query blocks over the Sq queries, key blocks over all Sk keys, the diagonal offset by
            Sk - Sq). False: such calls are cross-attention and pass through.
        config_defaults: `SparseAttentionConfig` fields this family starts from when no config object is given
            (`accelerate_model(model, **overrides)`); an explicit `config=` is used as it is.
    """

    family: str
    transformer_classes: tuple[str, ...]
    self_attention: str
    text_position: str | None = None
    text_kwarg: str = "encoder_hidden_states"
    timestep_kwarg: str = "timestep"
    denoiser_components: tuple[str, ...] = ("transformer",)
    token_layout: str = ""
    match_attention_classes: bool = False
    video_grid: bool = False
    temporal_patch: bool = True
    increasing_timesteps: bool = False
    step_source: str = "timestep"
    steps_attribute: str | None = None
    call_marker: str = "progress_bar"
    step_module: str | None = None
    call_module: str | None = None
    query_is_key_suffix: bool = False
    config_defaults: tuple[tuple[str, object], ...] = ()

    def self_attention_layers(self, denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """`(name, module)` of every accelerated self-attention module, in module order.

        Raises:
            SparseDiffusionError: no module matches (the model does not look like this family).
        """
        if self.match_attention_classes:
            from diffusers.hooks._common import _ATTENTION_CLASSES

            layers = []
            for name, m in denoiser.named_modules():
                inside = any(name.startswith(outer + ".") for outer, _ in layers)
                if name and isinstance(m, _ATTENTION_CLASSES) and not inside:
                    layers.append((name, m))
        else:
            pattern = re.compile(self.self_attention)
            layers = []
            for name, m in denoiser.named_modules():  # outermost matches only: nested hooks would double-count
                if name and pattern.fullmatch(name) and not any(name.startswith(outer + ".") for outer, _ in layers):
                    layers.append((name, m))
        if not layers:
            raise SparseDiffusionError(
                f"no module of {type(denoiser).__name__} matches the {self.family} self-attention pattern "
                f"{self.self_attention!r}; is this the right adapter?"
            )
        return layers

    def _argument(self, module: torch.nn.Module, name: str, args: tuple, kwargs: dict):
        if name in kwargs:
            return kwargs[name]
        params = [p for p in inspect.signature(module.forward).parameters if p not in ("self",)]
        if name in params and params.index(name) < len(args):
            return args[params.index(name)]
        return None

    def read_timestep(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> float:
        """The forward's timestep as a float (the max over its entries, so per-token timesteps work).

        Raises:
            SparseDiffusionError: the forward has no readable timestep argument.
        """
        t = self._argument(module, self.timestep_kwarg, args, kwargs)
        if isinstance(t, torch.Tensor) and t.numel():
            return float(t.detach().float().max())
        if isinstance(t, (int, float)):
            return float(t)
        raise SparseDiffusionError(
            f"could not read the timestep argument {self.timestep_kwarg!r} of {type(module).__name__}.forward; "
            "steps are counted from the timestep progression, so the denoiser must receive it."
        )

    def text_length(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> int:
        """Number of joint text tokens in the self-attention sequence of this forward (0 if none)."""
        if self.text_position is None:
            return 0
        text = self._argument(module, self.text_kwarg, args, kwargs)
        return int(text.shape[1]) if isinstance(text, torch.Tensor) and text.dim() >= 2 else 0

    def token_grid(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int, int, int] | None:
        """Latent token grid (F', H', W') of this forward's self-attention sequence, or None if unknown."""
        if not self.video_grid:
            return None
        hidden = self._argument(module, "hidden_states", args, kwargs)
        patch = getattr(getattr(module, "config", None), "patch_size", None)
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 5 or patch is None:
            return None
        if isinstance(patch, int):
            pt, ph, pw = (patch if self.temporal_patch else 1), patch, patch
        else:
            pt, ph, pw = tuple(patch)
        return hidden.shape[2] // pt, hidden.shape[3] // ph, hidden.shape[4] // pw
