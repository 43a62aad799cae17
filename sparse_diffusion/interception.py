"""Route `F.scaled_dot_product_attention` calls made inside a hooked self-attention module to the controller.

Every diffusers processor ends in SDPA, directly (CogVideoX, SD3, Mochi) or through `dispatch_attention_fn` with the
`native` backend (Wan, Flux, HunyuanVideo, LTX), so catching the call sees q/k/v after projections, norms and RoPE
with no copied processor. A module may call SDPA several times per forward (Mochi: once per batch element); each
call carries its index so it gets its own plan. A mask that only pads keys at the end, with one length for the batch, is honoured by
cutting the keys to that length. Calls the sparse path cannot honour (other masks, causal, dropout, Sq != Sk,
autograd) pass through unchanged and are counted in the report.
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


def trailing_key_padding(mask: torch.Tensor, k: torch.Tensor) -> int | None:
    """Valid key count when `mask` ([B or 1, 1, 1, Sk], bool or additive 0/-inf) masks only a run of keys at the
    end, with one length for the whole batch (e.g. HunyuanVideo's text padding); otherwise None."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or tuple(mask.shape[1:3]) != (1, 1):
        return None
    if mask.shape[-1] != k.shape[2]:
        return None
    row = mask[:, 0, 0]
    if row.dtype == torch.bool:
        valid = row
    elif row.is_floating_point() and bool(((row == 0) | torch.isneginf(row)).all()):
        valid = row == 0
    else:
        return None
    lengths = valid.sum(-1)
    length = int(lengths[0])
    if length == 0 or not bool((lengths == length).all()) or not bool(valid[:, :length].all()):
        return None
    return length


def ineligible_reason(call: dict, block_k: int, trimmed: bool = False) -> str | None:
    """Why a bound SDPA call cannot take the sparse path, or `None` when it can. `trimmed`: the keys were cut to the
    valid length of a trailing key-padding mask, so Sq != Sk is expected."""
    q, k, v = call["query"], call["key"], call["value"]
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)) or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q/k/v are not 4-D [B, H, S, D] tensors"
    if call["attn_mask"] is not None:
        return "explicit attn_mask"
    if call["is_causal"]:
        return "is_causal=True"
    if call["dropout_p"]:
        return "dropout_p > 0"
    if q.shape[2] != k.shape[2] and not trimmed:
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
        self.seen = 0  # every SDPA call in this forward
        self.served = 0  # calls handed to the controller: the call index of the next one

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.seen += 1
        call = bind_sdpa_args(args, kwargs)
        length = None
        q, k = call["query"], call["key"]
        self_attention = isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.dim() == k.dim() == 4
        if call["attn_mask"] is not None and self_attention and q.shape[2] == k.shape[2]:  # never cross-attention
            length = trailing_key_padding(call["attn_mask"], k)
            if length is not None:  # masked trailing keys contribute nothing: drop them and the mask
                call = dict(call, attn_mask=None, key=call["key"][:, :, :length], value=call["value"][:, :, :length])
        reason = ineligible_reason(call, self.controller.config.block_size[1], trimmed=length is not None)
        if reason is not None:
            self.controller.record_passthrough(self.layer, reason)
            return func(*args, **kwargs)
        self.served += 1
        return self.controller.attention(
            self.layer, call["query"], call["key"], call["value"], call["scale"], lambda: func(*args, **kwargs),
            call_index=self.served - 1,
        )
