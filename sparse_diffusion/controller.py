"""`SparseController`: step index per call, phase per layer, cached plans (mask + dense LSE) and statistics.

One controller serves one accelerated denoiser. The denoiser hook tells it when a forward starts (timestep, cache
context, text length); the attention hooks hand it every intercepted self-attention call. A layer may make several
calls per forward (Mochi: one per batch element, each with its own valid text length): plans are kept per
(context, layer, call index within the layer's forward).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import backend_health, dispatch, ops
from .block_mask import BlockSparseMask, num_blocks
from .config import SparseAttentionConfig
from .errors import SparseDiffusionError
from .planning import kept_mass, plan_block_mask, plan_sparsed_mask
from .reorder import tile_permutation


logger = logging.getLogger(__name__)


class Phase(str, enum.Enum):
    DENSE = "dense"  # dense warm-up (or an always-dense layer)
    BUILD = "build"  # dense pass that measures LSE and tile mass, then plans
    SPARSE = "sparse"
    FALLBACK = "fallback"  # a sparse-phase call that ran dense (above break-even, an error, non-finite output)


@dataclass
class LayerPlan:
    """Cached result of a build step for one (context, layer): the mask and the dense LSE [B, H, Sq] float32."""

    mask: BlockSparseMask
    lse: torch.Tensor
    geometry: tuple
    head_density: torch.Tensor  # [H], mean over the batch; fixed for the plan's life
    backend: str
    seq_lens_k: torch.Tensor | None  # int32 [B] valid keys per batch element (varlen key padding), on q's device
    dense_reason: str | None = None  # set when the planned density is above the sparse break-even
    refresh: bool = False
    complement: torch.Tensor | None = (
        None  # [B, H, Sq, D]: dropped blocks' share of the dense output (cache_complement)
    )
    complement_mass: torch.Tensor | None = None  # [B, H, Sq, 1] float32: their softmax mass, 1 - kept share
    allowed: torch.Tensor | None = None  # tile table of the call's attention mask (block-causal, ...) or None


@dataclass
class LayerStats:
    calls: Counter = field(default_factory=Counter)
    time_s: Counter = field(default_factory=Counter)
    head_density_sum: torch.Tensor | None = None
    head_kept_mass_sum: torch.Tensor | None = None
    sparse_calls_with_lse: int = 0
    build_kept_mass_sum: torch.Tensor | None = None
    replans: Counter = field(default_factory=Counter)
    fallbacks: Counter = field(default_factory=Counter)
    backends: Counter = field(default_factory=Counter)
    planned_density: list = field(default_factory=list)
    full_calls_after_warmup: int = (
        0  # calls after the warm-up that ran the full attention (not sparse, passed through)
    )
    pending_cuda_times: list = field(default_factory=list)  # (phase, start event, end event), resolved on report

    def resolve_times(self) -> None:
        """Add the CUDA event pairs recorded so far to `time_s` (one wait for the device, at report time)."""
        for phase, start, end in self.pending_cuda_times:
            end.synchronize()
            self.time_s[phase] += start.elapsed_time(end) / 1000.0
        self.pending_cuda_times.clear()


def _add(acc: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """Running sum kept on the value's device (no host copy per call)."""
    value = value.detach().double()
    return value if acc is None or acc.shape != value.shape else acc + value.to(acc.device)


class SparseController:
    """Decides DENSE / BUILD / SPARSE per intercepted call and keeps plans and statistics.

    Args:
        config: the `SparseAttentionConfig`.
        layer_names: accelerated self-attention module names in hook order (indices of `dense_layers` refer to it).
        total_steps_fn: returns the number of denoising steps of the current call (or `None` if unknown); read once
            at the first forward of each call.
        restart_on_timestep_increase: start a new call when the timestep moves against the schedule (used when no
            pipeline marks call boundaries, e.g. `accelerate_model`).
        increasing_timesteps: the schedule's timesteps go up (Mochi); a restart is then a timestep going down.
        step_per_forward: every forward is one step (diffusion LMs: no timestep). A call starts at `begin_call`, at
            the first forward, or, when no call was opened, once the forwards of the last call reach its steps.
        text_position: where joint-attention text tokens sit in the self-attention sequence: `"first"`, `"last"` or
            `None` (no text tokens); their count comes from `begin_forward`.
        query_is_key_suffix: calls with Sq < Sk are prefix attention, their queries being the last Sq keys
            (DiffusionGemma's decoder); read by the interceptor, which serves them instead of passing them through.
    """

    def __init__(
        self,
        config: SparseAttentionConfig,
        layer_names: list[str],
        total_steps_fn: Callable[[], int | None],
        restart_on_timestep_increase: bool = False,
        text_position: str | None = None,
        increasing_timesteps: bool = False,
        step_per_forward: bool = False,
        query_is_key_suffix: bool = False,
    ) -> None:
        self.config = config
        self.query_is_key_suffix = query_is_key_suffix
        self.step_per_forward = step_per_forward
        self.text_position = text_position
        self.layer_names = list(layer_names)
        self.dense_layer_names = self._resolve_dense_layers(config.dense_layers)
        self.total_steps_fn = total_steps_fn
        self.restart_on_timestep_increase = restart_on_timestep_increase
        self.increasing_timesteps = increasing_timesteps
        self.plans: dict[tuple, LayerPlan] = {}
        self.stats: dict[str, LayerStats] = defaultdict(LayerStats)
        self.passthrough: Counter = Counter()
        self.runs: list[dict] = []
        self.last_masks: dict[str, BlockSparseMask] = {}  # latest build per layer, kept after the call for pictures
        self.complement_peak_bytes = 0  # most memory cached complements held at once (cache_complement)
        self.reset()

    def _resolve_dense_layers(self, entries) -> set[str]:
        names = set()
        n = len(self.layer_names)
        for entry in entries:
            if isinstance(entry, int):
                if not -n <= entry < n:
                    raise SparseDiffusionError(
                        f"dense_layers index {entry} is out of range: this denoiser has {n} accelerated self-attention "
                        f"layers (valid indices -{n}..{n - 1})."
                    )
                names.add(self.layer_names[entry])
            elif entry in self.layer_names:
                names.add(entry)
            else:
                raise SparseDiffusionError(
                    f"dense_layers entry {entry!r} is not an accelerated self-attention layer; known names look like "
                    f"{self.layer_names[:3]} ({n} in all)."
                )
        return names

    # ---- call and step bookkeeping -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the current call and every cached plan (statistics are kept)."""
        self.step = -1
        self.last_t: float | None = None
        self.total_steps: int | None = None
        self.num_dense_steps = 0
        self.context: tuple | None = None
        self.text_len = 0
        self.grid: tuple[int, int, int] | None = None
        self.prompt_len: int | None = None
        self._opened: dict | None = None  # set by begin_call, consumed by the call's first forward
        self._explicit_call = False
        self._dense_error: SparseDiffusionError | None = None
        self._forwards_this_step: Counter = Counter()
        self._pending_checks: list = []  # (plan key, finite flag, kept-mass estimate) on the GPU, per forward
        self.plans.clear()

    def begin_call(self, total_steps: int | None = None, prompt_length: int | None = None) -> None:
        """Start a new call at the next forward: `total_steps` steps (None: ask `total_steps_fn`), prompt tokens
        first in the sequence (`prompt_length`, used by `sparsed_selection`). Drops the cached plans."""
        self.reset()
        self._opened = {"total_steps": total_steps, "prompt_length": prompt_length}

    def _start_call(self) -> None:
        opened = self._opened
        self.reset()
        self.step = 0
        self._explicit_call = opened is not None
        total = opened["total_steps"] if opened else None
        self.total_steps = total if total is not None else self.total_steps_fn()
        self.prompt_len = opened["prompt_length"] if opened else None
        try:
            self.num_dense_steps = self.config.resolve_dense_steps(self.total_steps)
            warmup = self.num_dense_steps if self.total_steps is None else min(self.num_dense_steps, self.total_steps)
        except SparseDiffusionError as exc:  # raised by the first call that needs it: a model may have none
            self._dense_error, warmup = exc, None
        self.runs.append({"total_steps": self.total_steps, "dense_steps": warmup, "_sparse": set(), "_seen": set()})

    def begin_forward(
        self,
        timestep: float | None,
        context_name: str | None,
        text_len: int = 0,
        grid: tuple[int, int, int] | None = None,
    ) -> None:
        """Called before every denoiser forward with the (max) timestep value of that forward (None in
        `step_per_forward` mode), the joint text length and the latent token grid (F', H', W') when known."""
        exhausted = self.total_steps is not None and self.step + 1 >= self.total_steps and not self._explicit_call
        if self.step_per_forward:
            new_call, next_step = self.step < 0 or exhausted, True
        else:
            backwards = self.last_t is not None and (
                timestep < self.last_t - 1e-6 if self.increasing_timesteps else timestep > self.last_t + 1e-6
            )
            new_call = (
                self.last_t is None
                or (self.restart_on_timestep_increase and backwards)
                or (timestep != self.last_t and exhausted)
            )
            next_step = timestep != self.last_t
        self._resolve_checks()  # a forward that ended without end_forward (an exception in between)
        if new_call:
            self._start_call()
        elif next_step:
            self.step += 1
            self._forwards_this_step.clear()
        self.last_t = timestep
        if self.runs:
            self.runs[-1]["_seen"].add(self.step)
        name = context_name or "default"
        self.context = (name, self._forwards_this_step[name])
        self._forwards_this_step[name] += 1
        self.text_len = int(text_len)
        self.grid = grid

    def end_forward(self) -> None:
        self._resolve_checks()
        self.context = None

    @property
    def in_forward(self) -> bool:
        return self.context is not None

    # ---- per-call decisions --------------------------------------------------------------------------------

    def _phase(self, layer: str, key: tuple, geometry: tuple, allowed) -> tuple[Phase, str | None]:
        if layer in self.dense_layer_names:
            return Phase.DENSE, None
        if self._dense_error is not None:
            raise self._dense_error
        last_dense = self.num_dense_steps - 1
        if self.step < last_dense:
            return Phase.DENSE, None
        if self.step == last_dense:
            if self.total_steps is not None and self.total_steps <= self.num_dense_steps:
                return Phase.DENSE, None  # no sparse step follows: skip the build, stay bit-identical
            return Phase.BUILD, None
        plan = self.plans.get(key)
        if plan is None:
            return Phase.BUILD, "no plan for this context"
        if plan.geometry != geometry:
            return Phase.BUILD, "input geometry changed"
        if (plan.allowed is None) != (allowed is None) or (
            allowed is not None and not torch.equal(plan.allowed, allowed)
        ):
            return Phase.BUILD, "attention mask changed"
        if plan.refresh:
            return Phase.BUILD, "kept-mass estimate below refresh_threshold"
        return Phase.SPARSE, None

    def _call_text_len(self, seq_len: int) -> int:
        """Joint text tokens in a call of `seq_len` tokens: the forward's text length, or, when the video grid is
        known, the tokens beyond the video (Mochi keeps only each sample's valid text tokens)."""
        if self.grid is not None and self.text_position is not None:
            extra = seq_len - self.grid[0] * self.grid[1] * self.grid[2]
            if 0 <= extra <= self.text_len:
                return extra
        return self.text_len

    def _tile_permutation(self, q: torch.Tensor, k: torch.Tensor, text_len: int):
        """(order, inverse) token permutation into space-time tiles, when configured and the layout is known."""
        tile, grid = self.config.token_tile, self.grid
        if tile is None or grid is None or text_len:
            return None
        if not (q.shape[2] == k.shape[2] == grid[0] * grid[1] * grid[2]):
            return None
        return tile_permutation(tuple(grid), tile, str(q.device))

    def _dense_ranges(
        self, seq_lengths: tuple[int, int], text_len: int, rotation: int = 0, query_offset: int = 0
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Token ranges kept dense, in key positions of a sequence rotated left by `rotation` tokens, as `(rows and
        columns, columns only)`: the joint text and, with `keep_generated_tokens`, the generated tokens of a diffusion
        LM (after the prompt when its length is known, rows and columns) or, in prefix attention (`query_offset` =
        Sk - Sq > 0), the canvas keys (columns only: every query is a canvas token)."""
        seq_len, sk = seq_lengths  # spans are query positions; query i is key i + query_offset
        spans = []
        if self.config.keep_text_tokens and 0 < text_len < seq_len:
            if self.text_position == "last":
                spans.append((seq_len - text_len, text_len))
            elif self.text_position == "first":
                spans.append((0, text_len))
        generated = self.config.keep_generated_tokens and not self.config.sparsed_selection
        prompt = self.prompt_len
        if generated and not query_offset and prompt and prompt < seq_len:
            spans.append((prompt, seq_len - prompt))
        ranges = []
        for start, length in spans:
            start = (start - rotation) % seq_len
            end = start + length
            pieces = [(start, end)] if end <= seq_len else [(start, seq_len), (0, end - seq_len)]
            ranges += [(s + query_offset, e + query_offset) for s, e in pieces]
        return ranges, [(query_offset, sk)] if generated and query_offset else []

    def attention(
        self,
        layer: str,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float | None,
        dense_fn: Callable,
        *,
        call_index: int = 0,
        seq_lens_k: tuple[int, ...] | None = None,
        rotation: int = 0,
        allowed: torch.Tensor | None = None,
        query_offset: int = 0,
    ) -> torch.Tensor:
        """Serve one eligible self-attention call; `dense_fn()` runs the original.

        Args:
            q: [B, H, Sq, D]; k, v: [B, HK, Sk, D] (Sk < Sq when padded keys were cut off; Sk = Sq + query_offset in
                prefix attention).
            call_index: the call's position among the layer's eligible calls in this forward (own plan each).
            seq_lens_k: valid keys per batch element when they differ (varlen key padding), else None.
            rotation: the tokens arrive rotated left by this many positions (a padded run moved to the end);
                text ranges are rotated alike. `dense_fn` returns the output in the same rotated order.
            allowed: the call's attention mask as a bool tile table [B or 1, H or 1, QB, KB] (block-causal, ...):
                the build pass attends only allowed tiles and the planned masks keep only those; None when unmasked.
            query_offset: prefix attention (`query_is_key_suffix`): query i is key `i + query_offset`, so the forced
                diagonal sits there and `keep_generated_tokens` keeps the canvas key columns [query_offset, Sk).
                Query blocks tile the Sq queries, key blocks all Sk keys; the offset need not be a block multiple.
        """
        text_len = self._call_text_len(q.shape[2])
        perm = None if rotation or allowed is not None else self._tile_permutation(q, k, text_len)
        geometry = (
            tuple(q.shape),
            tuple(k.shape),
            q.dtype,
            q.device,
            text_len,
            self.grid if perm else None,
            seq_lens_k,
            rotation,
            query_offset,
        )
        key = (self.context, layer, call_index)
        phase, replan_reason = self._phase(layer, key, geometry, allowed)
        if perm is not None and phase in (Phase.BUILD, Phase.SPARSE):
            order, inverse = perm
            q, k, v = (t.index_select(2, order) for t in (q, k, v))
        stats = self.stats[layer]
        timer = _Timer(self.config.collect_timings, q.device)
        if phase is Phase.DENSE:
            with timer:
                out = dense_fn()
        elif phase is Phase.BUILD:
            if replan_reason:
                stats.replans[replan_reason] += 1
            with timer:
                try:
                    lens = None if seq_lens_k is None else torch.tensor(seq_lens_k, dtype=torch.int32, device=q.device)
                    ranges = self._dense_ranges((q.shape[2], k.shape[2]), text_len, rotation, query_offset)
                    out = self._build(
                        layer, key, geometry, q, k, v, scale, stats, ranges, lens, allowed, rotation, query_offset
                    )
                    if perm is not None:
                        out = out.index_select(2, inverse)
                except SparseDiffusionError as exc:  # never fail after the warm-up has been paid for
                    stats.fallbacks[f"build failed, ran dense: {exc}"] += 1
                    phase, out = Phase.FALLBACK, dense_fn()
        else:
            with timer:
                try:
                    out, served = self._sparse(key, q, k, v, scale, dense_fn, stats)
                    if served and perm is not None:
                        out = out.index_select(2, inverse)
                except SparseDiffusionError as exc:
                    stats.fallbacks[f"sparse call failed, ran dense: {exc}"] += 1
                    out, served = dense_fn(), False
            if not served:
                phase = Phase.FALLBACK
            elif self.runs:
                self.runs[-1]["_sparse"].add(self.step)
        stats.calls[phase.value] += 1
        if phase is not Phase.SPARSE and self.step >= self.num_dense_steps:
            stats.full_calls_after_warmup += 1  # once per call: a failed re-plan is not also a fallback
        timer.add_to(stats, phase.value)
        return out

    def _build(
        self,
        layer,
        key,
        geometry,
        q,
        k,
        v,
        scale,
        stats,
        dense_ranges,
        seq_lens_k,
        allowed=None,
        rotation=0,
        query_offset=0,
    ) -> torch.Tensor:
        if self.config.sparsed_selection and (allowed is not None or seq_lens_k is not None or rotation):
            raise SparseDiffusionError(
                "sparsed_selection does not support masked attention (a tile-pattern mask such as block-causal, or "
                "key padding)"
            )
        if self.config.sparsed_selection and query_offset:
            raise SparseDiffusionError(
                f"sparsed_selection does not support prefix attention (Sq={q.shape[2]} queries over Sk={k.shape[2]} "
                "keys); use policy='topk' or 'mass' without it"
            )
        backend = ops.choose_sparse_backend(  # first: a backend that cannot serve fails before the costly pass
            q, self.config.backend, need_lse=True, block_size=self.config.block_size, varlen=seq_lens_k is not None
        )
        out, lse, mass = ops.dense_attention_with_stats(
            q,
            k,
            v,
            self.config.block_size,
            scale=scale,
            backend=dispatch.build_backend(self.config.backend),
            seq_lens_k=seq_lens_k,
            allowed=allowed,
        )
        if backend_health.disabled_reason(backend):  # it failed in the stats pass: `auto` takes the next one
            backend = ops.choose_sparse_backend(
                q, self.config.backend, need_lse=True, block_size=self.config.block_size, varlen=seq_lens_k is not None
            )
        sq, sk = q.shape[2], k.shape[2]
        if self.config.sparsed_selection:
            mask = self._plan_sparsed(mass, q, k, v, scale)
        else:
            token_ranges, key_ranges = dense_ranges
            mask = plan_block_mask(
                mass,
                self.config,
                (sq, sk),
                dense_token_ranges=token_ranges,
                seq_lens_k=seq_lens_k,
                allowed=allowed,
                query_offset=query_offset,
                dense_key_ranges=key_ranges,
            )
        build_kept = kept_mass(mass, mask)
        head_density = mask.density().mean(0)
        density = float(head_density.mean())
        dense_reason = self._above_break_even(density, backend)
        plan = LayerPlan(mask, lse, geometry, head_density, backend, seq_lens_k, dense_reason, allowed=allowed)
        if self.config.cache_complement and dense_reason is None:
            plan.complement, plan.complement_mass = self._complement(out, lse, q, k, v, plan, scale)
        self.plans[key] = plan
        if plan.complement is not None:
            self.complement_peak_bytes = max(self.complement_peak_bytes, self.complement_bytes())
        stats.planned_density.append(density)
        self.last_masks[layer] = mask.to("cpu")
        stats.build_kept_mass_sum = _add(stats.build_kept_mass_sum, build_kept.mean(0))
        return out

    def _plan_sparsed(self, mass, q, k, v, scale) -> BlockSparseMask:
        """SparseD's selection: a second stats pass gives the tile mass with the softmax over generated keys only."""
        bk, sk = self.config.block_size[1], k.shape[2]
        start = min(num_blocks(sk, bk), num_blocks(self.prompt_len or 0, bk)) * bk
        generated = None
        if start < sk:
            _, _, generated = ops.dense_attention_with_stats(
                q,
                k[:, :, start:],
                v[:, :, start:],
                self.config.block_size,
                scale=scale,
                backend=dispatch.build_backend(self.config.backend),
            )
        return plan_sparsed_mask(
            mass, generated, self.config.topk_ratio, self.config.block_size, (q.shape[2], sk), self.prompt_len or 0
        )

    @staticmethod
    def _complement(out, lse, q, k, v, plan: LayerPlan, scale) -> tuple[torch.Tensor, torch.Tensor]:
        """Dropped blocks' part of the dense output: `out - exp(lse_kept - lse) * out_kept` (exact at the build step)."""
        kept_out, kept_lse = ops.block_sparse_attention(
            q, k, v, plan.mask, scale=scale, backend=plan.backend, validate_mask=False, seq_lens_k=plan.seq_lens_k
        )
        share = torch.exp(kept_lse - lse).nan_to_num(0.0).clamp(0.0, 1.0).unsqueeze(-1)  # kept softmax mass per row
        complement = out.float() - share * kept_out.float()
        return complement.to(out.dtype), 1.0 - share

    @staticmethod
    def _merge_complement(plan: LayerPlan, out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
        """Fresh kept-block result merged with the cached complement by LSE, both relative to the build's dense LSE."""
        weight = torch.exp(lse - plan.lse).nan_to_num(0.0).unsqueeze(-1)
        total = weight + plan.complement_mass
        merged = (weight * out.float() + plan.complement.float()) / total.clamp_min(1e-20)
        return torch.where(total > 0, merged, out.float()).to(out.dtype)

    def complement_bytes(self) -> int:
        """Memory held by cached complements now (bytes)."""
        return sum(
            p.complement.numel() * p.complement.element_size() + p.complement_mass.numel() * 4
            for p in self.plans.values()
            if p.complement is not None
        )

    def _above_break_even(self, density: float, backend: str) -> str | None:
        """Why a plan of this mean density runs dense on `backend` (None: the sparse path pays off)."""
        limit = self.config.sparse_density_limit or dispatch.BREAK_EVEN_DENSITY[backend]
        if density > limit:
            return f"planned density above the sparse break-even {limit:.2f} of backend {backend}; ran dense"
        return None

    def _rebind(self, plan: LayerPlan, q: torch.Tensor, stats: LayerStats) -> bool:
        """The plan's backend was disabled after a failure: with `backend="auto"` serve it with the next one (the
        break-even density of the new backend applies). Returns whether the plan moved; a forced backend does not
        (it keeps failing into the dense fallback)."""
        failed = backend_health.disabled_reason(plan.backend)
        if failed is None or self.config.backend != "auto":
            return False
        old = plan.backend
        plan.backend = ops.choose_sparse_backend(
            q, "auto", need_lse=True, block_size=self.config.block_size, varlen=plan.seq_lens_k is not None
        )
        stats.fallbacks[f"backend {old} disabled after it failed ({failed}); served by {plan.backend}"] += 1
        if plan.dense_reason is None:
            plan.dense_reason = self._above_break_even(float(plan.head_density.mean()), plan.backend)
        return True

    def _sparse(self, key, q, k, v, scale, dense_fn, stats) -> tuple[torch.Tensor, bool]:
        plan = self.plans[key]
        self._rebind(plan, q, stats)
        while True:  # ends: each retry follows a backend disabled for good, and `reference` is never disabled
            if plan.dense_reason:
                stats.fallbacks[plan.dense_reason] += 1
                return dense_fn(), False
            try:
                out, lse = self._kept_attention(q, k, v, plan, scale)
                break
            except SparseDiffusionError:  # the backend failed just now: move the plan and retry, else run dense
                if not self._rebind(plan, q, stats):
                    raise
        stats.backends[plan.backend] += 1
        finite = torch.isfinite(out).all()
        if not out.is_cuda and not finite:
            stats.fallbacks["non-finite sparse output; recomputed dense"] += 1
            return dense_fn(), False
        stats.head_density_sum = _add(stats.head_density_sum, plan.head_density)
        if plan.complement is not None:
            out = self._merge_complement(plan, out, lse)
        kept = None
        if lse is not None:
            estimate = torch.exp(lse - plan.lse).mean(-1)  # [B, H]
            stats.head_kept_mass_sum = _add(stats.head_kept_mass_sum, estimate.mean(0))
            stats.sparse_calls_with_lse += 1
            kept = estimate.mean()
        if out.is_cuda:  # no host sync per call: checked once at the end of the forward (`_resolve_checks`)
            self._pending_checks.append((key, finite, kept))
        elif kept is not None and self.config.refresh_threshold > 0 and float(kept) < self.config.refresh_threshold:
            plan.refresh = True
        return out, True

    def _kept_attention(self, q, k, v, plan: LayerPlan, scale) -> tuple[torch.Tensor, torch.Tensor | None]:
        return ops.block_sparse_attention(
            q, k, v, plan.mask, scale=scale, backend=plan.backend, validate_mask=False, seq_lens_k=plan.seq_lens_k
        )

    def _resolve_checks(self) -> None:
        """GPU: read this forward's deferred checks in one sync. A non-finite sparse output sends the layer's later
        calls to dense (reported); a kept-mass estimate below `refresh_threshold` re-plans at the next step."""
        pending, self._pending_checks = self._pending_checks, []
        if not pending:
            return
        flags = torch.stack(  # [N, 2]: finite flag, kept-mass estimate (NaN where the backend gave no LSE)
            [
                torch.stack([f.float(), f.new_full((), float("nan"), dtype=torch.float32) if m is None else m.float()])
                for _, f, m in pending
            ]
        )
        for (key, _, _), (finite, kept) in zip(pending, flags.cpu().tolist()):
            plan = self.plans.get(key)
            if plan is None:
                continue
            if not finite:
                reason = "non-finite sparse output (found after the forward); later calls of this layer ran dense"
                plan.dense_reason = plan.dense_reason or reason
                self.stats[key[1]].fallbacks[reason] += 1
            elif kept == kept and self.config.refresh_threshold > 0 and kept < self.config.refresh_threshold:
                plan.refresh = True

    def _count_full_call(self, layer: str) -> None:
        """A call that ran the original attention outside `attention()`: full work once past the warm-up."""
        if self.step >= self.num_dense_steps:
            self.stats[layer].full_calls_after_warmup += 1

    def record_passthrough(self, layer: str, reason: str) -> None:
        self.passthrough[f"{layer}: {reason}"] += 1
        self._count_full_call(layer)

    def record_not_intercepted(self, layer: str) -> None:
        self._count_full_call(layer)
        self.stats[layer].fallbacks[
            "no F.scaled_dot_product_attention call seen (a non-native attention backend or custom processor); ran "
            "unchanged"
        ] += 1

    def finished_runs(self) -> list[dict]:
        runs = []
        for run in self.runs:
            run = dict(run)
            sparse, seen = run.pop("_sparse"), run.pop("_seen")
            run["steps_run"] = len(seen)  # below total_steps when the call was interrupted
            run["sparse_steps"] = len(sparse)
            # steps after the warm-up in which no layer ran sparse (re-plans, break-even fallbacks, errors)
            warmup = run["dense_steps"] if run["dense_steps"] is not None else len(seen)  # None: never resolved
            run["dense_fallback_steps"] = len({s for s in seen if s >= warmup} - sparse)
            runs.append(run)
        return runs


class _Timer:
    """Time of a block: wall clock on CPU; CUDA events on GPU (no synchronisation; resolved when reported)."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.cuda = device.type == "cuda"
        self.elapsed = 0.0
        self.events = None

    def __enter__(self):
        if self.enabled:
            if self.cuda:
                self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                self.events[0].record()
            else:
                self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            if self.cuda:
                self.events[1].record()
            else:
                self.elapsed = time.perf_counter() - self._start
        return False

    def add_to(self, stats: LayerStats, phase: str) -> None:
        if self.events is not None:
            stats.pending_cuda_times.append((phase, *self.events))
        else:
            stats.time_s[phase] += self.elapsed
