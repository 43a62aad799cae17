"""Route `F.scaled_dot_product_attention` calls made inside a hooked self-attention module to the controller.

Every diffusers processor ends in SDPA, directly (CogVideoX, SD3, Mochi) or through `dispatch_attention_fn` with the
`native` backend (Wan, Flux, HunyuanVideo, LTX, Qwen-Image), so catching the call sees q/k/v after projections, norms
and RoPE with no copied processor. A module may call SDPA several times per forward (Mochi: once per batch element);
each call carries its index so it gets its own plan.

Masks (bool, or additive with only 0 and -inf / the dtype's min) are honoured without a mask in two forms:

- Key padding ([B or 1, 1, 1, Sk]): when each batch element's masked keys form one run ending at a position shared by
  the batch, the sequence is rotated so that run sits at the end (queries, keys and values alike; attention is
  equivariant to that permutation, and the output is rotated back), the keys are cut to the longest valid length,
  and shorter batch elements pass their valid key counts as `seq_lens_k`. HunyuanVideo's padded text LAST needs no
  rotation; Qwen-Image's padded text FIRST moves behind the image tokens.
- Tile patterns (any other [B or 1, H or 1, Sq or 1, Sk] mask): keys masked for every query at the end are cut off,
  and what remains must be whole tiles attended or masked (a block-causal mask over blocks that are multiples of the
  tiles, as LLaDA2 uses); the tile table (`allowed`) goes to the build pass and the planner keeps only allowed tiles.
  A tile pattern combined with padding of a different length per batch element is honoured only when that padding
  is tile-aligned too; otherwise the call passes through ("not aligned to ... tiles").

Prefix attention: an adapter that declares `query_is_key_suffix` (DiffusionGemma's decoder: canvas queries over
`[encoder KV cache ; canvas]` keys) has its calls with Sq < Sk served too, query i being key `i + Sk - Sq`; such a call
keeps its layout (no rotation) and honours a mask only as a tile pattern (trailing masked keys, e.g. unused static
cache slots, are cut first). Other adapters' Sq != Sk calls are cross-attention and pass through.

Calls the sparse path cannot honour (other masks, causal, dropout, cross-attention, autograd) pass through unchanged
and are counted in the report with the reason.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .attention_call import AttentionCall
from .block_mask import block_lengths, num_blocks


_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def bind_sdpa_args(args: tuple, kwargs: dict) -> dict:
    """Name the arguments of one `F.scaled_dot_product_attention` call."""
    bound = dict(_SDPA_DEFAULTS)
    bound.update(zip(_SDPA_PARAMS, args))
    bound.update(kwargs)
    return bound


def attended_keys(mask: torch.Tensor, sk: int) -> torch.Tensor | str:
    """Bool form of an SDPA `attn_mask` [.., Sk] (True: the query may attend the key) for a bool mask or an additive
    one holding only 0 and -inf / the dtype's min (as transformers writes them); a pass-through reason otherwise."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[-1] != sk:
        return "explicit attn_mask (not a [B, H, Sq, Sk] mask)"
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        blocked = mask <= torch.finfo(mask.dtype).min / 2
        if not bool(((mask == 0) | blocked).all()):
            return "explicit attn_mask (an additive bias, not 0 / -inf)"
        return ~blocked
    return f"explicit attn_mask (dtype {mask.dtype})"


def key_padding(mask: torch.Tensor, k: torch.Tensor) -> tuple[list[int], int] | None:
    """Read a key-padding mask: [B or 1, 1, 1, Sk] (see `attended_keys`), whose masked keys form one run per batch
    element ending at a position `end` shared by the batch, every key from `end` on being valid.

    Returns:
        `(valid, end)`: valid keys before `end` per mask row, and `end` (Sk for trailing padding, e.g. HunyuanVideo's
        text; less when valid keys follow the padding, e.g. Qwen-Image's padded text before the image tokens).
        None for any other mask, or when a batch element would have no valid key.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or tuple(mask.shape[1:3]) != (1, 1):
        return None
    sk = k.shape[2]
    valid = attended_keys(mask, sk)
    if isinstance(valid, str):
        return None
    valid = valid[:, 0, 0]
    padded = (~valid).any(0)
    end = int(padded.nonzero().max()) + 1 if bool(padded.any()) else sk
    counts = valid[:, :end].sum(-1)
    if not torch.equal(valid[:, :end], torch.arange(end, device=valid.device) < counts[:, None]):
        return None
    if end == sk and not bool((counts > 0).all()):
        return None
    return counts.tolist(), end


def block_pattern(
    mask: torch.Tensor, seq_lengths: tuple[int, int], block_size: tuple[int, int]
) -> tuple[int, torch.Tensor | None] | str:
    """The exact tile form of a self-attention `attn_mask` ([B or 1, H or 1, Sq or 1, Sk]; see `attended_keys`).

    Returns `(length, allowed)`: keys past `length` are masked for every query (trailing padding, cut off), and
    `allowed` is a bool tile table [B or 1, H or 1, QB, KB] over the kept keys (None when every pair attends), so the
    mask equals "attend inside allowed tiles" (e.g. a block-causal mask whose blocks are multiples of the tiles).
    Returns a reason string when the mask is not such a pattern (a real bias, tiles partly masked, a query that
    attends no key); such calls run their original attention.
    """
    sq, sk = seq_lengths
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[-2] not in (1, sq):
        return "explicit attn_mask (not a [B, H, Sq, Sk] mask)"
    valid = attended_keys(mask, sk)
    if isinstance(valid, str):
        return valid
    used = valid.flatten(0, 2).any(0).nonzero()
    if used.numel() == 0:
        return "explicit attn_mask (no key attended)"
    length = int(used.max()) + 1
    valid = valid[..., :length]
    if bool(valid.all()):
        return length, None
    bq, bk = block_size
    rows = valid.shape[-2]
    bq = bq if rows == sq else 1  # a mask broadcast over queries has one row of tiles
    qb, kb = num_blocks(rows, bq), num_blocks(length, bk)
    padded = F.pad(valid.to(torch.int32), (0, kb * bk - length, 0, qb * bq - rows))
    counts = padded.unflatten(-1, (kb, bk)).unflatten(-3, (qb, bq)).sum((-3, -1))  # [.., QB, KB]
    sizes = block_lengths(rows, bq, device=mask.device)[:, None] * block_lengths(length, bk, device=mask.device)
    if not bool(((counts == 0) | (counts == sizes)).all()):
        return f"explicit attn_mask (not aligned to {block_size[0]}x{bk} tiles)"
    allowed = counts == sizes
    if not bool(allowed.any(-1).all()):
        return "explicit attn_mask (a query attends no key)"
    if rows != sq:
        allowed = allowed.expand(*allowed.shape[:2], num_blocks(sq, block_size[0]), kb)
    return length, allowed


def ineligible_reason(call: dict, block_k: int, trimmed: bool = False, query_suffix: bool = False) -> str | None:
    """Why a bound SDPA call cannot take the sparse path, or `None` when it can. `trimmed`: the mask was honoured
    and padded keys were cut off, so Sq != Sk is expected. `query_suffix`: the queries are the last Sq keys (prefix
    attention), so Sq < Sk is expected."""
    q, k, v = call["query"], call["key"], call["value"]
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)) or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q/k/v are not 4-D [B, H, S, D] tensors"
    if call["attn_mask"] is not None:
        return "explicit attn_mask"
    if call["is_causal"]:
        return "is_causal=True"
    if call["dropout_p"]:
        return "dropout_p > 0"
    if query_suffix and q.shape[2] > k.shape[2]:
        return f"prefix attention with fewer keys than queries (Sq={q.shape[2]}, Sk={k.shape[2]})"
    if q.shape[2] != k.shape[2] and not (trimmed or query_suffix):
        return "cross-attention (Sq != Sk)"
    if k.shape[1] != q.shape[1] and not (call["enable_gqa"] and q.shape[1] % k.shape[1] == 0):
        return "heads of q and k/v differ without enable_gqa"
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        return "q/k/v head dims differ"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
    ):
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
        trimmed, reason, allowed, shift, seq_lens_k = False, None, None, 0, None
        square = self_attention and q.shape[2] == k.shape[2]
        prefix = self_attention and self.controller.query_is_key_suffix and q.shape[2] < k.shape[2]
        if call["attn_mask"] is not None and (square or prefix):  # never cross-attention
            padding = key_padding(call["attn_mask"], k) if square else None  # a rotation would break the suffix
            if padding is not None:  # padded keys contribute nothing: move them to the end, cut them, drop the mask
                valid, end = padding
                sk = k.shape[2]
                shift = end % sk
                lengths = [n + sk - end for n in valid] * (q.shape[0] if len(valid) == 1 else 1)
                longest = max(lengths)
                q, k, v = (_rotate(t, shift) for t in (q, k, call["value"]))
                call = dict(call, attn_mask=None, query=q, key=k[:, :, :longest], value=v[:, :, :longest])
                seq_lens_k = None if len(set(lengths)) == 1 else tuple(lengths)
                trimmed = True
            else:
                pattern = block_pattern(call["attn_mask"], (q.shape[2], k.shape[2]), self.controller.config.block_size)
                if isinstance(pattern, str):
                    reason = pattern
                else:  # masked trailing keys contribute nothing: drop them; the tile table replaces the mask
                    length, allowed = pattern
                    call = dict(call, attn_mask=None, key=k[:, :, :length], value=call["value"][:, :, :length])
                    trimmed = not prefix
        reason = reason or ineligible_reason(
            call, self.controller.config.block_size[1], trimmed=trimmed, query_suffix=prefix
        )
        if reason is not None:
            self.controller.record_passthrough(self.layer, reason)
            return func(*args, **kwargs)
        self.served += 1
        out = self.controller.attention(
            AttentionCall(
                self.layer,
                call["query"],
                call["key"],
                call["value"],
                call["scale"],
                lambda: _rotate(func(*args, **kwargs), shift),
                call_index=self.served - 1,
                seq_lens_k=seq_lens_k,
                rotation=shift,
                allowed=allowed,
                query_offset=call["key"].shape[2] - q.shape[2] if prefix else 0,
            )
        )
        return _rotate(out, -shift)


def _rotate(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Tokens (dim 2) rotated left by `shift` (token `shift` comes first); no copy for 0."""
    return x if shift == 0 else torch.roll(x, -shift, 2)
