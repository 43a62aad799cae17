"""Turn a controller's statistics into the JSON report of `SparseHandle.report()` and a short text table."""

from __future__ import annotations

from collections import Counter

import torch

from . import backend_health
from .controller import SparseController


_PHASES = ("dense", "build", "sparse", "fallback")


def _mean_list(total: torch.Tensor | None, n: int) -> list[float] | None:
    if total is None or n == 0:
        return None
    return [round(float(x), 6) for x in (total / n).cpu().tolist()]


def _avg(values: list[float] | None) -> float | None:
    return None if not values else round(sum(values) / len(values), 6)


def build_report(controller: SparseController, adapter, *, model_class: str, weights: str | None = None) -> dict:
    """Report dict (JSON-serialisable).

    Keys: `model`, `adapter`, `token_layout`, `weights`, `config`, `runs` (per pipeline call: total steps, steps
    that ran (fewer when the call was interrupted), dense warm-up steps, sparse steps, and `dense_fallback_steps`: later steps in which no layer ran sparse, i.e.
    re-plans, break-even fallbacks, errors),
    `dense_steps`/`sparse_steps`/`dense_fallback_steps`/`total_steps` (last call), `density` (kept key blocks / all
    key blocks over sparse calls, mean over layers and heads), `effective_density` (the same over every call after
    the dense warm-up, a re-plan, fallback, `dense_layers` or passed-through call counting as density 1: the share
    of attention work actually done),
    `planned_density` (mean density of the built masks,
    also those that ran dense above the break-even), `kept_mass` (mean `exp(lse_sparse - lse_dense)`: the kept
    softmax mass estimated against the dense LSE cached at the build step; it can exceed 1 when the scores grew since
    the build), `build_kept_mass` (exact kept mass at the build step), `calls` and `attention_time_s` per phase
    (`dense` warm-up, `build`, `sparse`, `fallback` = sparse-phase calls that ran dense; seconds of wall time inside
    intercepted attention), `complement_cache_mib` (peak memory of cached complements, `cache_complement`),
    `replans`, `backends`, `fallbacks` and `passthrough` (layer, reason, count), `disabled_backends` (backends
    switched off in this process after a kernel failed: name -> error), and
    `layers` with the same figures per layer and per head.
    """
    calls, times, replans, backends = Counter(), Counter(), Counter(), Counter()
    fallbacks, layers = [], {}
    weighted_density, weight, mass_values, build_values, planned = 0.0, 0, [], [], []
    effective_sum, effective_calls = 0.0, 0
    for name in controller.layer_names:
        st = controller.stats.get(name)
        if st is not None:
            st.resolve_times()
        if st is None:
            layers[name] = {"always_dense": name in controller.dense_layer_names, "calls": {}}
            continue
        calls.update(st.calls)
        times.update(st.time_s)
        replans.update(st.replans)
        backends.update(st.backends)
        fallbacks += [{"layer": name, "reason": r, "count": c} for r, c in st.fallbacks.items()]
        n_sparse = st.calls.get("sparse", 0)
        head_density = _mean_list(st.head_density_sum, n_sparse)
        head_mass = _mean_list(st.head_kept_mass_sum, st.sparse_calls_with_lse)
        head_build = _mean_list(st.build_kept_mass_sum, st.calls.get("build", 0))
        density = _avg(head_density)
        if density is not None:
            weighted_density += density * n_sparse
            weight += n_sparse
        n_dense_after = st.full_calls_after_warmup  # re-plans, fallbacks, dense_layers, passed-through calls
        n_after = n_sparse + n_dense_after
        work = (density or 0.0) * n_sparse + n_dense_after  # key blocks computed, in units of full calls
        effective = round(work / n_after, 6) if n_after else None
        effective_sum += work
        effective_calls += n_after
        if head_mass:
            mass_values.append(_avg(head_mass))
        if head_build:
            build_values.append(_avg(head_build))
        if st.planned_density:
            planned.append(_avg(st.planned_density))
        layers[name] = {
            "always_dense": name in controller.dense_layer_names,
            "calls": dict(st.calls),
            "time_s": {k: round(v, 6) for k, v in st.time_s.items()},
            "density": density,
            "effective_density": effective,
            "planned_density": _avg(st.planned_density),
            "head_density": head_density,
            "kept_mass": _avg(head_mass),
            "head_kept_mass": head_mass,
            "build_kept_mass": _avg(head_build),
            "replans": dict(st.replans),
        }
    runs = controller.finished_runs()
    last = (
        runs[-1] if runs else {"total_steps": None, "dense_steps": None, "sparse_steps": 0, "dense_fallback_steps": 0}
    )
    return {
        "model": model_class,
        "adapter": adapter.family,
        "token_layout": adapter.token_layout,
        "weights": weights,
        "config": controller.config.to_dict(),
        "runs": runs,
        "total_steps": last["total_steps"],
        "dense_steps": last["dense_steps"],
        "sparse_steps": last["sparse_steps"],
        "dense_fallback_steps": last["dense_fallback_steps"],
        "density": round(weighted_density / weight, 6) if weight else None,
        "effective_density": round(effective_sum / effective_calls, 6) if effective_calls else None,
        "planned_density": _avg(planned),
        "kept_mass": _avg(mass_values),
        "build_kept_mass": _avg(build_values),
        "calls": {k: calls.get(k, 0) for k in _PHASES},
        "attention_time_s": {k: round(times.get(k, 0.0), 6) for k in _PHASES},
        "complement_cache_mib": round(controller.complement_peak_bytes / 2**20, 3),
        "replans": dict(replans),
        "backends": dict(backends),
        "fallbacks": fallbacks,
        "disabled_backends": backend_health.disabled(),
        "passthrough": [
            {"layer": layer, "reason": reason, "count": c} for (layer, reason), c in controller.passthrough.items()
        ],
        "layers": layers,
    }


def format_report(report: dict) -> str:
    """A few lines summarising `report`, then one line per layer."""

    def fmt(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    if not report["runs"]:
        return (
            f"sparse-diffusion: {report['model']} ({report['adapter']} adapter): no denoising call yet; "
            f"{len(report['layers'])} self-attention layers hooked"
        )
    lines = [
        f"sparse-diffusion: {report['model']} ({report['adapter']} adapter, weights: {report['weights'] or 'user'})",
        f"  steps (last call): total {report['total_steps']}, dense warm-up {report['dense_steps']}, "
        f"sparse {report['sparse_steps']}, ran dense after warm-up {report['dense_fallback_steps']}",
        f"  density {fmt(report['density'])} over sparse calls, {fmt(report['effective_density'])} over all calls "
        f"after warm-up (re-plans, fallbacks and pass-throughs count 1; planned {fmt(report['planned_density'])}), kept mass "
        f"(LSE estimate) {fmt(report['kept_mass'])}, kept mass at build {fmt(report['build_kept_mass'])}",
        "  attention time s: "
        + ", ".join(f"{k} {v:.3f}" for k, v in report["attention_time_s"].items())
        + "; calls: "
        + ", ".join(f"{k} {v}" for k, v in report["calls"].items()),
    ]
    if report.get("complement_cache_mib"):
        lines.append(f"  complement cache: {report['complement_cache_mib']:.1f} MiB (peak)")
    if report["replans"]:
        lines.append(f"  re-plans: {report['replans']}")
    for item in report["fallbacks"] + report["passthrough"]:
        lines.append(f"  not sparse: {item['layer']}: {item['reason']} (x{item['count']})")
    lines.append(f"  {'layer':40s} {'density':>8s} {'effect.':>8s} {'kept':>6s} {'sparse':>6s}")
    for name, layer in report["layers"].items():
        tag = " (dense layer)" if layer["always_dense"] else ""
        lines.append(
            f"  {name:40s} {fmt(layer.get('density')):>8s} {fmt(layer.get('effective_density')):>8s} "
            f"{fmt(layer.get('kept_mass')):>6s} "
            f"{layer['calls'].get('sparse', 0):>6d}{tag}"
        )
    return "\n".join(lines)
