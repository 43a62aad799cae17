"""`StepSchedule`: which pipeline call and denoising step a denoiser forward belongs to, and the per-call records.

A pipeline call is one `pipe(...)` (or one `dlm.generate`); it runs `total_steps` denoising steps, of which the first
`num_dense_steps` are the dense warm-up (the last of them is the build step). Steps are counted from the timestep
each forward receives (a new value is a new step; CFG passes share one), or one per forward for diffusion LMs. A
call starts at `begin_call`, at the first forward, when the timestep moves against the schedule
(`restart_on_timestep_increase`), or once the forwards of the last call reach its steps. Within a step, a forward's
cache context (diffusers' `cache_context`: "cond" / "uncond") and its index among the step's forwards of that
context name its plans.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from .config import SparseAttentionConfig
from .errors import SparseDiffusionError


@dataclass
class RunRecord:
    """One pipeline call as the report shows it (`runs`)."""

    total_steps: int | None
    dense_steps: int | None  # warm-up steps; None while it could not be resolved (e.g. no step count)
    sparse: set[int] = field(default_factory=set)  # steps in which some layer ran sparse
    seen: set[int] = field(default_factory=set)  # steps that ran

    def to_dict(self) -> dict:
        """`total_steps`, `dense_steps`, `steps_run` (fewer than total when interrupted), `sparse_steps` and
        `dense_fallback_steps` (steps after the warm-up in which no layer ran sparse: re-plans, fallbacks, errors)."""
        warmup = self.dense_steps if self.dense_steps is not None else len(self.seen)
        return {
            "total_steps": self.total_steps,
            "dense_steps": self.dense_steps,
            "steps_run": len(self.seen),
            "sparse_steps": len(self.sparse),
            "dense_fallback_steps": len({s for s in self.seen if s >= warmup} - self.sparse),
        }


class StepSchedule:
    """Call/step state machine of one accelerated denoiser (see the module docstring).

    Args:
        config: its `dense_steps` gives the warm-up length (`resolve_dense_steps`).
        total_steps_fn: the current call's step count (None if unknown), read once per call.
        restart_on_timestep_increase: a timestep moving against the schedule starts a new call (`accelerate_model`).
        increasing_timesteps: the schedule's timesteps go up (Mochi).
        step_per_forward: every forward is one step (diffusion LMs: no timestep).
    """

    def __init__(
        self,
        config: SparseAttentionConfig,
        total_steps_fn: Callable[[], int | None],
        *,
        restart_on_timestep_increase: bool = False,
        increasing_timesteps: bool = False,
        step_per_forward: bool = False,
    ) -> None:
        self.config = config
        self.total_steps_fn = total_steps_fn
        self.restart_on_timestep_increase = restart_on_timestep_increase
        self.increasing_timesteps = increasing_timesteps
        self.step_per_forward = step_per_forward
        self.runs: list[RunRecord] = []
        self.reset()

    def reset(self) -> None:
        """Forget the current call (the records of finished calls are kept)."""
        self.step = -1
        self.last_t: float | None = None
        self.total_steps: int | None = None
        self.num_dense_steps = 0
        self.context: tuple | None = None  # (cache context name, forward index within the step) while in a forward
        self.text_len = 0
        self.grid: tuple[int, int, int] | None = None
        self.prompt_len: int | None = None
        self._opened: dict | None = None  # set by begin_call, consumed by the call's first forward
        self._explicit_call = False
        self._dense_error: SparseDiffusionError | None = None
        self._forwards_this_step: Counter = Counter()

    def begin_call(self, total_steps: int | None = None, prompt_length: int | None = None) -> None:
        """A new call starts at the next forward, with `total_steps` steps (None: ask `total_steps_fn`) and
        `prompt_length` prompt tokens first in the sequence."""
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
        self.runs.append(RunRecord(self.total_steps, warmup))

    def begin_forward(
        self,
        timestep: float | None,
        context_name: str | None,
        text_len: int = 0,
        grid: tuple[int, int, int] | None = None,
    ) -> bool:
        """Place a forward with this (max) timestep (None when `step_per_forward`), cache context, joint text length
        and latent token grid (F', H', W') when known. Returns whether it starts a new call."""
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
        if new_call:
            self._start_call()
        elif next_step:
            self.step += 1
            self._forwards_this_step.clear()
        self.last_t = timestep
        if self.runs:
            self.runs[-1].seen.add(self.step)
        name = context_name or "default"
        self.context = (name, self._forwards_this_step[name])
        self._forwards_this_step[name] += 1
        self.text_len = int(text_len)
        self.grid = grid
        return new_call

    def end_forward(self) -> None:
        self.context = None

    @property
    def in_forward(self) -> bool:
        return self.context is not None

    def warmup_phase(self) -> str | None:
        """ "dense" during the warm-up, "build" at its last step (unless no sparse step follows), None after it.

        Raises:
            SparseDiffusionError: the warm-up length could not be resolved for this call (a fractional
                `dense_steps` without a step count).
        """
        if self._dense_error is not None:
            raise self._dense_error
        last_dense = self.num_dense_steps - 1
        if self.step < last_dense:
            return "dense"
        if self.step == last_dense:
            if self.total_steps is not None and self.total_steps <= self.num_dense_steps:
                return "dense"  # no sparse step follows: skip the build, stay bit-identical
            return "build"
        return None

    @property
    def past_warmup(self) -> bool:
        return self.step >= self.num_dense_steps

    def mark_sparse(self) -> None:
        """Some layer ran sparse in the current step."""
        if self.runs:
            self.runs[-1].sparse.add(self.step)

    def finished_runs(self) -> list[dict]:
        return [run.to_dict() for run in self.runs]
