"""Per-layer statistics of an accelerated denoiser: call counts and times per phase, density, kept mass, re-plans,
fallbacks and backends (`LayerStats`), read by `report.build_report`; and the phase `Timer`."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch


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


def running_sum(acc: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """Running sum kept on the value's device (no host copy per call)."""
    value = value.detach().double()
    return value if acc is None or acc.shape != value.shape else acc + value.to(acc.device)


class Timer:
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
