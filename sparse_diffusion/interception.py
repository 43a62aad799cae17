"""Route `F.scaled_dot_product_attention` calls made inside a hooked self-attention module to the controller.

Every diffusers processor ends in SDPA, directly (CogVideoX, SD3, Mochi) or through `dispatch_attention_fn` with the
`native` backend (Wan, Flux, HunyuanVideo, LTX), so catching the call sees q/k/v after projections, norms and RoPE
with no copied processor. Calls the sparse path cannot honour (attention mask, causal, dropout, Sq != Sk, autograd)
pass through unchanged and are counted in the report.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def bind_sdpa_args(args: tuple, kwargs: dict) -> dict:
    """Name the arguments of one `F.scaled_dot_product_attention` call."""
    bound = dict(_SDPA_DEFAULTS)
    bound.update(zip(_SDPA_PARAMS, args))
    bound.update(kwargs)
    return bound


def ineligible_reason(call: dict, block_k: int) -> str | None:
    """Why a bound SDPA call cannot take the sparse path, or `None` when it can."""
    q, k, v = call["query"], call["key"], call["value"]
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)) or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q/k/v are not 4-D [B, H, S, D] tensors"
    if call["attn_mask"] is not None:
        return "explicit attn_mask"
    if call["is_causal"]:
        return "is_causal=True"
    if call["dropout_p"]:
        return "dropout_p > 0"
    if q.shape[2] != k.shape[2]:
        return "cross-attention (Sq != Sk)"
    if k.shape[1] != q.shape[1] and not (call["enable_gqa"] and q.shape[1] % k.shape[1] == 0):
        return "heads of q and k/v differ without enable_gqa"
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        return "q/k/v head dims differ"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        return f"dtype {q.dtype} not supported"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return "autograd (training) is not supported by the sparse kernels"
    if -(-k.shape[2] // block_k) < 2:
        return f"sequence of {k.shape[2]} tokens is shorter than two key blocks of {block_k}"
    return None


class SDPAInterceptor(TorchFunctionMode):
    """Torch-function mode active for the duration of one hooked attention module's forward."""

    def __init__(self, controller, layer: str) -> None:
        super().__init__()
        self.controller = controller
        self.layer = layer
        self.seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.seen += 1
        call = bind_sdpa_args(args, kwargs)
        reason = ineligible_reason(call, self.controller.config.block_size[1])
        if reason is not None:
            self.controller.record_passthrough(self.layer, reason)
            return func(*args, **kwargs)
        return self.controller.attention(
            self.layer, call["query"], call["key"], call["value"], call["scale"], lambda: func(*args, **kwargs)
        )
