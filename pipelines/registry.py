"""Adapter registry: the supported denoiser families, the generic fallback and the class -> adapter lookup."""

from __future__ import annotations

import torch

from ..errors import SparseDiffusionError
from .base import Adapter
from .cogvideox import COGVIDEOX
from .diffusion_gemma import DIFFUSION_GEMMA
from .flux import FLUX
from .hunyuan_video import HUNYUAN_VIDEO
from .llada2 import LLADA2
from .ltx import LTX
from .masked_lm import MASKED_LM
from .mochi import MOCHI
from .qwenimage import QWENIMAGE
from .sd3 import SD3
from .wan import WAN


ADAPTERS: dict[str, Adapter] = {
    a.family: a
    for a in (WAN, COGVIDEOX, FLUX, SD3, LTX, QWENIMAGE, HUNYUAN_VIDEO, MOCHI, MASKED_LM, LLADA2, DIFFUSION_GEMMA)
}

# Every diffusers attention module; only calls with Sq == Sk and no mask are accelerated.
GENERIC = Adapter(
    family="generic",
    transformer_classes=(),
    self_attention="",
    text_position=None,
    match_attention_classes=True,
    token_layout="any attention module; square, unmasked calls only; joint text tokens NOT kept dense",
)


def get_adapter(denoiser: torch.nn.Module, adapter: str | Adapter | None = None) -> Adapter:
    """Adapter for `denoiser`: by name, an `Adapter` instance, or looked up from its class.

    Raises:
        SparseDiffusionError: unknown adapter name, or a denoiser class no adapter serves (lists the supported
            families and the `adapter="generic"` escape hatch).
    """
    if isinstance(adapter, Adapter):
        return adapter
    if adapter is not None and not isinstance(adapter, str):
        raise SparseDiffusionError(f"adapter={adapter!r} must be None, a family name or an Adapter.")
    if isinstance(adapter, str):
        if adapter == "generic":
            return GENERIC
        if adapter not in ADAPTERS:
            raise SparseDiffusionError(
                f"adapter={adapter!r} is not known; choose one of {sorted(ADAPTERS)} or 'generic'."
            )
        return ADAPTERS[adapter]
    cls = type(denoiser).__name__
    for candidate in ADAPTERS.values():
        if cls in candidate.transformer_classes:
            return candidate
    supported = ", ".join(f"{a.family} ({', '.join(a.transformer_classes)})" for a in ADAPTERS.values())
    raise SparseDiffusionError(
        f"{cls} is not a supported denoiser. Supported: {supported}. To accelerate every square, unmasked "
        "self-attention call of another model anyway, pass adapter='generic' (joint text tokens are then not kept "
        "dense)."
    )
