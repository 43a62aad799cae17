"""`SparseController`: the phase of every intercepted attention call (dense warm-up, build, sparse, fallback), its
token layout, its execution with fallbacks, and the statistics the report reads.

One controller serves one accelerated denoiser. The denoiser hook tells it when a forward starts (timestep, cache
context, text length; `schedule.StepSchedule` places it in a call and step); the attention hooks hand it every
eligible self-attention call as an `AttentionCall`. A layer may make several calls per forward (Mochi: one per batch
element, each with its own valid text length): plans (`plans.LayerPlan`) are kept per (context, layer, call index).
"""

from __future__ import annotations

import enum
import logging
from collections import Counter, defaultdict
from typing import Callable

import torch

from . import backend_health
from . import plans as planner
from .attention_call import AttentionCall, CallGeometry
from .block_mask import BlockSparseMask
from .config import SparseAttentionConfig
from .errors import SparseDiffusionError
from .reorder import tile_permutation
from .schedule import StepSchedule
from .stats import LayerStats, Timer, running_sum


logger = logging.getLogger(__name__)


class Phase(str, enum.Enum):
    DENSE = "dense"  # dense warm-up (or an always-dense layer)
    BUILD = "build"  # dense pass that measures LSE and tile mass, then plans
    SPARSE = "sparse"
    FALLBACK = "fallback"  # a sparse-phase call that ran dense (above break-even, an error, non-finite output)


class SparseController:
    """Decides DENSE / BUILD / SPARSE per intercepted call and keeps plans and statistics.

    Args:
        config: the `SparseAttentionConfig`.
        layer_names: accelerated self-attention module names in hook order (indices of `dense_layers` refer to it).
        total_steps_fn: the current call's step count (None if unknown), read once per call.
        schedule_options: `restart_on_timestep_increase`, `increasing_timesteps`, `step_per_forward` of
            `schedule.StepSchedule`.
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
        *,
        text_position: str | None = None,
        query_is_key_suffix: bool = False,
        **schedule_options: bool,
    ) -> None:
        self.config = config
        self.query_is_key_suffix = query_is_key_suffix
        self.text_position = text_position
        self.layer_names = list(layer_names)
        self.dense_layer_names = self._resolve_dense_layers(config.dense_layers)
        self.schedule = StepSchedule(config, total_steps_fn, **schedule_options)
        self.plans: dict[tuple, planner.LayerPlan] = {}
        self.stats: dict[str, LayerStats] = defaultdict(LayerStats)
        self.passthrough: Counter = Counter()  # (layer, reason) -> calls passed through unchanged
        self.last_masks: dict[str, BlockSparseMask] = {}  # latest build per layer, kept after the call for pictures
        self.complement_peak_bytes = 0  # most memory cached complements held at once (cache_complement)
        self._pending_checks: list = []  # (plan key, finite flag, kept-mass estimate) on the GPU, per forward

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

    # ---- calls and steps (`StepSchedule`) ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the current call and every cached plan (statistics are kept)."""
        self.schedule.reset()
        self._drop_plans()

    def _drop_plans(self) -> None:
        self.plans.clear()
        self._pending_checks = []

    def begin_call(self, total_steps: int | None = None, prompt_length: int | None = None) -> None:
        """Start a new call at the next forward: `total_steps` steps (None: ask `total_steps_fn`), prompt tokens
        first in the sequence (`prompt_length`, used by `sparsed_selection`). Drops the cached plans."""
        self.schedule.begin_call(total_steps, prompt_length)
        self._drop_plans()

    def begin_forward(self, timestep: float | None, context: str | None, text_len: int = 0, grid=None) -> None:
        """Called before every denoiser forward with the (max) timestep value of that forward (None in
        `step_per_forward` mode), its cache context name, the joint text length and the latent token grid (F', H',
        W') when known (`StepSchedule.begin_forward`)."""
        self._resolve_checks()  # a forward that ended without end_forward (an exception in between)
        if self.schedule.begin_forward(timestep, context, text_len, grid):
            self._drop_plans()

    def end_forward(self) -> None:
        self._resolve_checks()
        self.schedule.end_forward()

    @property
    def in_forward(self) -> bool:
        return self.schedule.in_forward

    @property
    def step(self) -> int:
        return self.schedule.step

    @property
    def context(self) -> tuple | None:
        return self.schedule.context

    @property
    def text_len(self) -> int:
        return self.schedule.text_len

    def finished_runs(self) -> list[dict]:
        return self.schedule.finished_runs()

    # ---- per-call decisions --------------------------------------------------------------------------------

    def _phase(self, layer: str, key: tuple, geometry: CallGeometry, allowed) -> tuple[Phase, str | None]:
        if layer in self.dense_layer_names:
            return Phase.DENSE, None
        warmup = self.schedule.warmup_phase()
        if warmup is not None:
            return Phase(warmup), None
        plan = self.plans.get(key)
        if plan is None:
            return Phase.BUILD, "no plan for this context"
        if plan.geometry != geometry:
            return Phase.BUILD, "input geometry changed"
        if not _same_tiles(plan.allowed, allowed):
            return Phase.BUILD, "attention mask changed"
        if plan.refresh:
            return Phase.BUILD, "kept-mass estimate below refresh_threshold"
        return Phase.SPARSE, None

    def _call_text_len(self, seq_len: int) -> int:
        """Joint text tokens in a call of `seq_len` tokens: the forward's text length, or, when the video grid is
        known, the tokens beyond the video (Mochi keeps only each sample's valid text tokens)."""
        if self.schedule.grid is not None and self.text_position is not None:
            extra = seq_len - self.schedule.grid[0] * self.schedule.grid[1] * self.schedule.grid[2]
            if 0 <= extra <= self.schedule.text_len:
                return extra
        return self.schedule.text_len

    def _tile_permutation(self, q: torch.Tensor, k: torch.Tensor, text_len: int):
        """(order, inverse) token permutation into space-time tiles, when configured and the layout is known."""
        tile, grid = self.config.token_tile, self.schedule.grid
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
        prompt = self.schedule.prompt_len
        if generated and not query_offset and prompt and prompt < seq_len:
            spans.append((prompt, seq_len - prompt))
        ranges = []
        for start, length in spans:
            start = (start - rotation) % seq_len
            end = start + length
            pieces = [(start, end)] if end <= seq_len else [(start, seq_len), (0, end - seq_len)]
            ranges += [(s + query_offset, e + query_offset) for s, e in pieces]
        return ranges, [(query_offset, sk)] if generated and query_offset else []

    # ---- execution with fallbacks ----------------------------------------------------------------------------

    def attention(self, call: AttentionCall) -> torch.Tensor:
        """Serve one eligible attention call: dense, build or sparse by its phase; any failure of the build or sparse
        path runs `call.dense_fn()` instead and is reported. Returns [B, H, Sq, D] in the call's token order."""
        text_len = self._call_text_len(call.q.shape[2])
        perm = None if call.rotation or call.allowed is not None else self._tile_permutation(call.q, call.k, text_len)
        geometry = call.geometry(text_len, self.schedule.grid if perm else None)
        key = (self.schedule.context, call.layer, call.call_index)
        phase, replan_reason = self._phase(call.layer, key, geometry, call.allowed)
        inverse, served = None, False
        if perm is not None and phase in (Phase.BUILD, Phase.SPARSE):
            order, inverse = perm
            call = call.permuted(order)
        stats = self.stats[call.layer]
        timer = Timer(self.config.collect_timings, call.q.device)
        with timer:
            if phase is Phase.DENSE:
                out = call.dense_fn()
            elif phase is Phase.BUILD:
                if replan_reason:
                    stats.replans[replan_reason] += 1
                try:
                    out = self._build(call, key, geometry, text_len)
                    served = True
                except SparseDiffusionError as exc:  # never fail after the warm-up has been paid for
                    stats.fallbacks[f"build failed, ran dense: {exc}"] += 1
                    phase, out, served = Phase.FALLBACK, call.dense_fn(), False
            else:
                try:
                    out, served = self._sparse(key, call, stats)
                except SparseDiffusionError as exc:
                    stats.fallbacks[f"sparse call failed, ran dense: {exc}"] += 1
                    out, served = call.dense_fn(), False
                if not served:
                    phase = Phase.FALLBACK
                else:
                    self.schedule.mark_sparse()
            if phase in (Phase.BUILD, Phase.SPARSE) and served and inverse is not None:
                out = out.index_select(2, inverse)
        stats.calls[phase.value] += 1
        if phase is not Phase.SPARSE and self.schedule.past_warmup:
            stats.full_calls_after_warmup += 1  # once per call: a failed re-plan is not also a fallback
        timer.add_to(stats, phase.value)
        return out

    def _build(self, call: AttentionCall, key: tuple, geometry: CallGeometry, text_len: int) -> torch.Tensor:
        ranges = self._dense_ranges(call.seq_lengths, text_len, call.rotation, call.query_offset)
        result = planner.build(call, geometry, self.config, ranges, self.schedule.prompt_len)
        plan = result.plan
        self.plans[key] = plan
        if plan.complement is not None:
            self.complement_peak_bytes = max(self.complement_peak_bytes, self.complement_bytes())
        stats = self.stats[call.layer]
        stats.planned_density.append(float(plan.head_density.mean()))
        self.last_masks[call.layer] = plan.mask.to("cpu")
        stats.build_kept_mass_sum = running_sum(stats.build_kept_mass_sum, result.kept_mass.mean(0))
        return result.out

    def complement_bytes(self) -> int:
        """Memory held by cached complements now (bytes)."""
        return sum(p.nbytes_complement() for p in self.plans.values())

    def _rebind(self, plan: planner.LayerPlan, q: torch.Tensor, stats: LayerStats) -> bool:
        """The plan's backend was disabled after a failure: with `backend="auto"` serve it with the next one (the
        break-even density of the new backend applies). Returns whether the plan moved; a forced backend does not
        (it keeps failing into the dense fallback)."""
        failed = backend_health.disabled_reason(plan.backend)
        if failed is None or self.config.backend != "auto":
            return False
        old = plan.backend
        plan.backend = planner.choose_backend(self.config, q, plan.seq_lens_k is not None)
        stats.fallbacks[f"backend {old} disabled after it failed ({failed}); served by {plan.backend}"] += 1
        if plan.dense_reason is None:
            plan.dense_reason = planner.above_break_even(self.config, float(plan.head_density.mean()), plan.backend)
        return True

    def _sparse(self, key: tuple, call: AttentionCall, stats: LayerStats) -> tuple[torch.Tensor, bool]:
        plan = self.plans[key]
        self._rebind(plan, call.q, stats)
        while True:  # ends: each retry follows a backend disabled for good, and `reference` is never disabled
            if plan.dense_reason:
                stats.fallbacks[plan.dense_reason] += 1
                return call.dense_fn(), False
            try:
                out, lse = planner.kept_attention(call, plan)
                break
            except SparseDiffusionError:  # the backend failed just now: move the plan and retry, else run dense
                if not self._rebind(plan, call.q, stats):
                    raise
        stats.backends[plan.backend] += 1
        finite = torch.isfinite(out).all()
        if not out.is_cuda and not finite:
            stats.fallbacks["non-finite sparse output; recomputed dense"] += 1
            return call.dense_fn(), False
        stats.head_density_sum = running_sum(stats.head_density_sum, plan.head_density)
        if plan.complement is not None and lse is not None:
            out = planner.merge_complement(plan, out, lse)
        kept = None
        if lse is not None:
            estimate = torch.exp(lse - plan.lse).mean(-1)  # [B, H]
            stats.head_kept_mass_sum = running_sum(stats.head_kept_mass_sum, estimate.mean(0))
            stats.sparse_calls_with_lse += 1
            kept = estimate.mean()
        if out.is_cuda:  # no host sync per call: checked once at the end of the forward (`_resolve_checks`)
            self._pending_checks.append((key, finite, kept))
        elif kept is not None and self.config.refresh_threshold > 0 and float(kept) < self.config.refresh_threshold:
            plan.refresh = True
        return out, True

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

    # ---- calls served outside `attention()` ------------------------------------------------------------------

    def _count_full_call(self, layer: str) -> None:
        """A call that ran the original attention outside `attention()`: full work once past the warm-up."""
        if self.schedule.past_warmup:
            self.stats[layer].full_calls_after_warmup += 1

    def record_passthrough(self, layer: str, reason: str) -> None:
        self.passthrough[(layer, reason)] += 1
        self._count_full_call(layer)

    def record_not_intercepted(self, layer: str) -> None:
        self._count_full_call(layer)
        self.stats[layer].fallbacks[
            "no F.scaled_dot_product_attention call seen (a non-native attention backend or custom processor); ran "
            "unchanged"
        ] += 1


def _same_tiles(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and torch.equal(a, b))
