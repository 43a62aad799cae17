"""Route `F.scaled_dot_product_attention` calls made inside a hooked self-attention module to the controller.

Every diffusers processor ends in SDPA, directly (CogVideoX, SD3, Mochi) or through `dispatch_attention_fn` with the
`native` backend (Wan, Flux, HunyuanVideo, LTX, Qwen-Image), so catching the call sees q/k/v after projections, norms
and RoPE with no copied processor. A module may call SDPA several times per forward (Mochi: once per batch element);
each call carries its index so it gets its own plan.

Key-padding masks are honoured without a mask: when each batch element's masked keys form one run ending at a
position shared by the batch, the sequence is rotated so that run sits at the end (queries, keys and values alike;
attention is equivariant to that permutation, and the output is rotated back), the keys are cut to the longest
valid length, and shorter batch elements pass their valid key counts as `seq_lens_k`. HunyuanVideo's padded text
LAST needs no rotation; Qwen-Image's padded text FIRST moves behind the image tokens. Calls the sparse path cannot
honour (other masks, causal, dropout, Sq != Sk, autograd) pass through unchanged and are counted in the report.
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


def key_padding(mask: torch.Tensor, k: torch.Tensor) -> tuple[list[int], int] | None:
    """Read a key-padding mask: [B or 1, 1, 1, Sk], bool or additive 0/-inf, whose masked keys form one run per
    batch element ending at a position `end` shared by the batch, every key from `end` on being valid.

    Returns:
        `(valid, end)`: valid keys before `end` per mask row, and `end` (Sk for trailing padding, e.g. HunyuanVideo's
        text; less when valid keys follow the padding, e.g. Qwen-Image's padded text before the image tokens).
        None for any other mask, or when a batch element would have no valid key.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or tuple(mask.shape[1:3]) != (1, 1):
        return None
    sk = k.shape[2]
    if mask.shape[-1] != sk:
        return None
    row = mask[:, 0, 0]
    if row.dtype == torch.bool:
        valid = row
    elif row.is_floating_point() and bool(((row == 0) | torch.isneginf(row)).all()):
        valid = row == 0
    else:
        return None
    padded = (~valid).any(0)
    end = int(padded.nonzero().max()) + 1 if bool(padded.any()) else sk
    counts = valid[:, :end].sum(-1)
    if not torch.equal(valid[:, :end], torch.arange(end, device=valid.device) < counts[:, None]):
        return None
    if end == sk and not bool((counts > 0).all()):
        return None
    return counts.tolist(), end


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
        q, k = call["query"], call["key"]
        self_attention = isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.dim() == k.dim() == 4
        padding = None
        if call["attn_mask"] is not None and self_attention and q.shape[2] == k.shape[2]:  # never cross-attention
            padding = key_padding(call["attn_mask"], k)
        shift, seq_lens_k = 0, None
        if padding is not None:  # padded keys contribute nothing: move them to the end, cut them, drop the mask
            valid, end = padding
            sk = k.shape[2]
            shift = end % sk
            lengths = [n + sk - end for n in valid] * (q.shape[0] if len(valid) == 1 else 1)
            longest = max(lengths)
            q, k, v = (_rotate(t, shift) for t in (q, k, call["value"]))
            call = dict(call, attn_mask=None, query=q, key=k[:, :, :longest], value=v[:, :, :longest])
            seq_lens_k = None if len(set(lengths)) == 1 else tuple(lengths)
        reason = ineligible_reason(call, self.controller.config.block_size[1], trimmed=padding is not None)
        if reason is not None:
            self.controller.record_passthrough(self.layer, reason)
            return func(*args, **kwargs)
        self.served += 1
        out = self.controller.attention(
            self.layer, call["query"], call["key"], call["value"], call["scale"],
            lambda: _rotate(func(*args, **kwargs), shift),
            call_index=self.served - 1, seq_lens_k=seq_lens_k, rotation=shift,
        )
        return _rotate(out, -shift)


def _rotate(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Tokens (dim 2) rotated left by `shift` (token `shift` comes first); no copy for 0."""
    return x if shift == 0 else torch.roll(x, -shift, 2)
