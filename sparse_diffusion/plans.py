"""Plans: what a build step caches for one (context, layer, call index), and the build and complement math.

A build step is a dense attention pass that also returns the row LSE and the exact softmax mass of every
(query-block, key-block) tile; the block mask is planned from that mass (`planning.plan_block_mask`, or SparseD's
selection, arXiv 2509.24014), and later sparse steps reuse it. With `cache_complement`, the dropped tiles' share of
the dense output is cached too and merged with each sparse result by LSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import backend_health, dispatch, ops
from .attention_call import AttentionCall, CallGeometry
from .block_mask import BlockSparseMask, num_blocks
from .config import SparseAttentionConfig
from .errors import SparseDiffusionError
from .planning import kept_mass, plan_block_mask, plan_sparsed_mask


@dataclass
class LayerPlan:
    """Cached result of a build step: the mask and the dense LSE [B, H, Sq] float32."""

    mask: BlockSparseMask
    lse: torch.Tensor
    geometry: CallGeometry
    head_density: torch.Tensor  # [H], mean over the batch; fixed for the plan's life
    backend: str
    seq_lens_k: torch.Tensor | None  # int32 [B] valid keys per batch element (varlen key padding), on q's device
    dense_reason: str | None = None  # set when the planned density is above the sparse break-even
    refresh: bool = False
    complement: torch.Tensor | None = None  # [B, H, Sq, D]: dropped blocks' share of the dense output
    complement_mass: torch.Tensor | None = None  # [B, H, Sq, 1] float32: their softmax mass, 1 - kept share
    allowed: torch.Tensor | None = None  # tile table of the call's attention mask (block-causal, ...) or None

    def nbytes_complement(self) -> int:
        if self.complement is None or self.complement_mass is None:
            return 0
        return self.complement.numel() * self.complement.element_size() + self.complement_mass.numel() * 4


@dataclass
class BuildResult:
    out: torch.Tensor  # [B, H, Sq, D] the dense output of the build step
    plan: LayerPlan
    kept_mass: torch.Tensor  # [B, H] exact kept softmax mass of the planned mask at the build step


def above_break_even(config: SparseAttentionConfig, density: float, backend: str) -> str | None:
    """Why a plan of this mean density runs dense on `backend` (None: the sparse path pays off)."""
    limit = config.sparse_density_limit or dispatch.BREAK_EVEN_DENSITY[backend]
    if density > limit:
        return f"planned density above the sparse break-even {limit:.2f} of backend {backend}; ran dense"
    return None


def choose_backend(config: SparseAttentionConfig, q: torch.Tensor, varlen: bool) -> str:
    return ops.choose_sparse_backend(q, config.backend, need_lse=True, block_size=config.block_size, varlen=varlen)


def build(
    call: AttentionCall,
    geometry: CallGeometry,
    config: SparseAttentionConfig,
    dense_ranges: tuple[list[tuple[int, int]], list[tuple[int, int]]],
    prompt_len: int | None,
) -> BuildResult:
    """One build step: dense attention with LSE and tile mass, then the plan (see the module docstring).

    `dense_ranges` are the (rows and columns, columns only) token ranges kept dense.

    Raises:
        SparseDiffusionError: `sparsed_selection` with a masked, key-padded or prefix call; no backend can serve.
    """
    q, k, v = call.q, call.k, call.v
    if config.sparsed_selection and (call.allowed is not None or call.seq_lens_k is not None or call.rotation):
        raise SparseDiffusionError(
            "sparsed_selection does not support masked attention (a tile-pattern mask such as block-causal, or "
            "key padding)"
        )
    if config.sparsed_selection and call.query_offset:
        raise SparseDiffusionError(
            f"sparsed_selection does not support prefix attention (Sq={q.shape[2]} queries over Sk={k.shape[2]} "
            "keys); use policy='topk' or 'mass' without it"
        )
    seq_lens_k = call.seq_lens_k_tensor()
    varlen = seq_lens_k is not None
    backend = choose_backend(config, q, varlen)  # first: a backend that cannot serve fails before the costly pass
    out, lse, mass = ops.dense_attention_with_stats(
        q,
        k,
        v,
        config.block_size,
        scale=call.scale,
        backend=dispatch.build_backend(config.backend),
        seq_lens_k=seq_lens_k,
        allowed=call.allowed,
    )
    if backend_health.disabled_reason(backend):  # it failed in the stats pass: `auto` takes the next one
        backend = choose_backend(config, q, varlen)
    if config.sparsed_selection:
        mask = _plan_sparsed(mass, call, config, prompt_len)
    else:
        token_ranges, key_ranges = dense_ranges
        mask = plan_block_mask(
            mass,
            config,
            call.seq_lengths,
            dense_token_ranges=token_ranges,
            seq_lens_k=seq_lens_k,
            allowed=call.allowed,
            query_offset=call.query_offset,
            dense_key_ranges=key_ranges,
        )
    head_density = mask.density().mean(0)
    dense_reason = above_break_even(config, float(head_density.mean()), backend)
    plan = LayerPlan(mask, lse, geometry, head_density, backend, seq_lens_k, dense_reason, allowed=call.allowed)
    if config.cache_complement and dense_reason is None:
        plan.complement, plan.complement_mass = _complement(out, lse, call, plan)
    return BuildResult(out, plan, kept_mass(mass, mask))


def _plan_sparsed(mass: torch.Tensor, call: AttentionCall, config: SparseAttentionConfig, prompt_len: int | None):
    """SparseD's selection: a second stats pass gives the tile mass with the softmax over generated keys only."""
    q, k, v = call.q, call.k, call.v
    bk, sk = config.block_size[1], k.shape[2]
    start = min(num_blocks(sk, bk), num_blocks(prompt_len or 0, bk)) * bk
    generated = None
    if start < sk:
        _, _, generated = ops.dense_attention_with_stats(
            q,
            k[:, :, start:],
            v[:, :, start:],
            config.block_size,
            scale=call.scale,
            backend=dispatch.build_backend(config.backend),
        )
    return plan_sparsed_mask(mass, generated, config.topk_ratio, config.block_size, (q.shape[2], sk), prompt_len or 0)


def kept_attention(call: AttentionCall, plan: LayerPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plan's kept tiles only: (out [B, H, Sq, D], LSE [B, H, Sq] float32 or None when the backend gives none)."""
    return ops.block_sparse_attention(
        call.q,
        call.k,
        call.v,
        plan.mask,
        scale=call.scale,
        backend=plan.backend,
        validate_mask=False,
        seq_lens_k=plan.seq_lens_k,
    )


def _complement(out, lse, call: AttentionCall, plan: LayerPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropped blocks' part of the dense output: `out - exp(lse_kept - lse) * out_kept` (exact at the build step)."""
    kept_out, kept_lse = kept_attention(call, plan)
    share = torch.exp(kept_lse - lse).nan_to_num(0.0).clamp(0.0, 1.0).unsqueeze(-1)  # kept softmax mass per row
    complement = out.float() - share * kept_out.float()
    return complement.to(out.dtype), 1.0 - share


def merge_complement(plan: LayerPlan, out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Fresh kept-block result merged with the cached complement by LSE, both relative to the build's dense LSE."""
    assert plan.complement is not None and plan.complement_mass is not None
    weight = torch.exp(lse - plan.lse).nan_to_num(0.0).unsqueeze(-1)
    total = weight + plan.complement_mass
    merged = (weight * out.float() + plan.complement.float()) / total.clamp_min(1e-20)
    return torch.where(total > 0, merged, out.float()).to(out.dtype)
