"""End-to-end diffusion-LM sampling time, dense vs block-sparse attention (`sparse-diffusion bench dlm`).

For each context length, `dlm.generate` runs the same prompt twice on one model: dense (every step dense) and
accelerated (dense warm-up, a build step, then block-sparse steps). The model is a `testing.dlm.TinyMaskedLM` with
realistic head sizes and random weights; random weights give near-uniform attention, so the sparse run uses a fixed
synthetic density (`policy="topk"`, `topk_ratio=density`, always sparse) instead of learned selection. The table
gives wall time of each run, the share of it spent inside attention (the controller's timers: SDPA in the dense run;
dense warm-up, build and sparse kernel in the accelerated run) and the speed-ups.

The model is accelerated by `accelerate_model`, the same hooks as every other model.
"""

from __future__ import annotations

import time

import torch

from .config import SparseAttentionConfig
from .errors import SparseDiffusionError


def attach(model: torch.nn.Module, config: SparseAttentionConfig | None = None, **overrides):
    """`accelerate_model(model, config, **overrides)` (no config: the dlm adapter's defaults)."""
    from .api import accelerate_model

    return accelerate_model(model, config, **overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_generate(model, prompt, config, *, gen_length, steps, block_length, mask_id):
    from .pipelines.dlm import generate

    handle = attach(model, config)
    try:
        _sync(prompt.device)
        start = time.perf_counter()
        ids = generate(model, prompt, gen_length=gen_length, steps=steps, block_length=block_length, mask_id=mask_id)
        _sync(prompt.device)
        wall = time.perf_counter() - start
        report = handle.report()
    finally:
        handle.remove()
    return ids, wall, report


def _whole(name: str, value, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, else `SparseDiffusionError` naming it."""
    import numbers

    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise SparseDiffusionError(f"{name}={value!r} must be a whole number >= {minimum}.")
    return int(value)


def _lengths(context_lengths) -> tuple[int, ...]:
    """`context_lengths` as a tuple of ints >= 1, else `SparseDiffusionError` naming it."""
    if not isinstance(context_lengths, (tuple, list)):
        raise SparseDiffusionError(
            f"context_lengths={context_lengths!r} must be a tuple of token counts, e.g. ({context_lengths!r},)."
        )
    return tuple(_whole("context length", n) for n in context_lengths)


def check_sizes(context_lengths: tuple[int, ...], gen_length: int, steps: int) -> tuple[int, ...]:
    """The context lengths as a tuple of ints; raise `SparseDiffusionError` naming what is wrong when `bench_dlm`
    cannot run these sizes."""
    context_lengths = _lengths(context_lengths)
    gen_length, steps = _whole("gen_length", gen_length, 0), _whole("steps", steps, 0)
    bad = [f"{name}={v} must be >= 1" for name, v in (("gen_length", gen_length), ("steps", steps)) if v < 1]
    if bad:
        raise SparseDiffusionError("; ".join(bad) + ".")
    short = [n for n in context_lengths if n <= gen_length]
    if short:
        raise SparseDiffusionError(
            f"context lengths {short} must exceed gen_length={gen_length} (the prompt is the rest); give longer "
            "contexts or a smaller gen_length."
        )
    return context_lengths


def bench_dlm(
    context_lengths: tuple[int, ...] = (4096, 8192, 16384),
    *,
    heads: int = 4,
    kv_heads: int | None = None,
    head_dim: int = 64,
    layers: int = 2,
    gen_length: int = 32,
    steps: int = 8,
    block_length: int | None = None,
    density: float = 0.2,
    dense_steps: int | float = 0.25,
    block_size: int = 128,
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    warmup: bool | None = None,
    seed: int = 0,
) -> dict:
    """Time `dlm.generate` dense and accelerated at each context length (prompt + `gen_length` tokens).

    Args:
        heads, kv_heads, head_dim, layers: the random `TinyMaskedLM` (hidden = heads * head_dim, vocabulary 256).
        density: `topk_ratio` of the sparse run (`policy="topk"`, `sparse_density_limit=1.0`,
            `refresh_threshold=0`); the diagonal block is kept on top, so the measured density is a little higher.
        warmup: run both modes once untimed at each length first (Triton autotuning, CUDA context); default: on CUDA.

    Returns:
        `{"setup": {...}, "rows": [{"context", "prompt", "dense_s", "sparse_s", "speedup", "dense_attention_s",
        "sparse_attention_s", "attention_share_dense", "attention_share_sparse", "attention_speedup", "density",
        "dense_steps", "sparse_steps", "sparse_attention_by_phase_s"}...]}`; `speedup`, `attention_speedup` and
        `density` are None when no attention call ran sparse.

    Raises:
        SparseDiffusionError: bad sizes (context not above gen_length, heads not a multiple of kv_heads, ...).
    """
    from .testing.dlm import build_tiny_masked_lm

    context_lengths = check_sizes(context_lengths, gen_length, steps)
    heads, head_dim, layers = _whole("heads", heads), _whole("head_dim", head_dim), _whole("layers", layers)
    kv_heads = heads if kv_heads is None else _whole("kv_heads", kv_heads)
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise SparseDiffusionError(f"density={density!r} must be a number in (0, 1].")
    if not 0 < density <= 1:
        raise SparseDiffusionError(f"density={density} must lie in (0, 1].")
    dev = torch.device(device)
    warmup = dev.type == "cuda" if warmup is None else warmup
    vocab = 256
    model = build_tiny_masked_lm(
        "llada",
        vocab_size=vocab,
        hidden=heads * head_dim,
        num_layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        seed=seed,
        dtype=dtype,
    ).to(dev)
    mask_id = vocab - 1
    dense_config = SparseAttentionConfig(dense_steps=steps, block_size=block_size, backend=backend)
    sparse_config = SparseAttentionConfig(
        dense_steps=dense_steps,
        block_size=block_size,
        policy="topk",
        topk_ratio=density,
        sparse_density_limit=1.0,
        refresh_threshold=0.0,
        backend=backend,
    )
    call = dict(gen_length=gen_length, steps=steps, block_length=block_length, mask_id=mask_id)
    rows = []
    for n in context_lengths:
        gen = torch.Generator().manual_seed(seed + n)
        prompt = torch.randint(0, mask_id, (1, n - gen_length), generator=gen).to(dev)
        if warmup:
            for config in (dense_config, sparse_config):
                _timed_generate(model, prompt, config, **dict(call, steps=2, gen_length=gen_length, block_length=None))
        _, dense_s, dense_report = _timed_generate(model, prompt, dense_config, **call)
        _, sparse_s, sparse_report = _timed_generate(model, prompt, sparse_config, **call)
        dense_att = sum(dense_report["attention_time_s"].values())
        sparse_att = sum(sparse_report["attention_time_s"].values())
        # no sparse attention call (warm-up covers every step, or too few key blocks): both runs were dense
        ran_sparse = sparse_report["density"] is not None
        rows.append(
            {
                "context": n,
                "prompt": n - gen_length,
                "dense_s": round(dense_s, 4),
                "sparse_s": round(sparse_s, 4),
                "speedup": round(dense_s / sparse_s, 3) if ran_sparse else None,
                "dense_attention_s": round(dense_att, 4),
                "sparse_attention_s": round(sparse_att, 4),
                "attention_share_dense": round(dense_att / dense_s, 3),
                "attention_share_sparse": round(sparse_att / sparse_s, 3),
                "attention_speedup": round(dense_att / sparse_att, 3) if sparse_att and ran_sparse else None,
                "density": sparse_report["density"],
                "dense_steps": sparse_report["dense_steps"],
                "sparse_steps": sparse_report["sparse_steps"],
                "sparse_attention_by_phase_s": sparse_report["attention_time_s"],
                "backends": sparse_report["backends"],
            }
        )
    setup = {
        "model": f"TinyMaskedLM, random weights, {layers} layers, {heads} query / {kv_heads} kv heads of {head_dim}",
        "gen_length": gen_length,
        "steps": steps,
        "block_length": block_length or gen_length,
        "dense_steps": dense_steps,
        "density_target": density,
        "block_size": block_size,
        "backend": backend,
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "torch": torch.__version__,
        "note": "one timed run per mode and length; attention time = wall time inside intercepted attention calls",
    }
    if dev.type == "cuda":
        setup["gpu"] = torch.cuda.get_device_name(dev)
    return {"setup": setup, "rows": rows}


def format_table(result: dict) -> str:
    """The rows as a fixed-width text table."""
    s = result["setup"]
    lines = [
        f"{s['model']}; gen {s['gen_length']}, {s['steps']} steps ({s['dense_steps']} dense warm-up), block "
        f"{s['block_size']}, target density {s['density_target']}, {s['dtype']} on {s['device']}",
        f"{'context':>8s} {'dense s':>9s} {'sparse s':>9s} {'e2e':>6s} {'attn share':>11s} {'attn s':>15s} "
        f"{'attn':>6s} {'density':>8s} {'steps d/s':>9s}",
    ]
    for r in result["rows"]:
        attn = f"{r['dense_attention_s']:.2f}->{r['sparse_attention_s']:.2f}"
        share = f"{r['attention_share_dense']:.2f}/{r['attention_share_sparse']:.2f}"
        if r["density"] is None:
            e2e, speed, density = "no sparse step", "-", "-"
        else:
            e2e = f"{r['speedup']:.2f}x"
            speed = f"{r['attention_speedup']:.2f}x" if r["attention_speedup"] else "n/a"
            density = f"{r['density']:.3f}"
        lines.append(
            f"{r['context']:8d} {r['dense_s']:9.2f} {r['sparse_s']:9.2f} {e2e:>6s} {share:>11s} "
            f"{attn:>15s} {speed:>6s} {density:>8s} {r['dense_steps']:>4d}/{r['sparse_steps']:<4d}"
        )
    lines.append("attn share: attention time / wall time (dense/sparse run); e2e and attn: dense time / sparse time")
    if any(r["density"] is None for r in result["rows"]):
        lines.append(
            "no sparse step: no attention call ran sparse (the dense warm-up covers every step, or the context holds "
            "fewer than two key blocks), so both runs were dense and no speed-up is given"
        )
    return "\n".join(lines)


#: The accuracy sweep's points: label -> config overrides (None = the untouched dense model).
ACCURACY_POINTS: dict[str, dict | None] = {
    "dense": None,
    "dlm default (topk 0.1 + complement)": {},
    "  without generated rows kept dense": {"keep_generated_tokens": False},
    "  without complement = topk 0.1": {"cache_complement": False},
    "topk 0.2": {"topk_ratio": 0.2, "cache_complement": False},
    "topk 0.3": {"topk_ratio": 0.3, "cache_complement": False},
    "topk 0.5": {"topk_ratio": 0.5, "cache_complement": False},
    "topk 0.2 + complement": {"topk_ratio": 0.2},
    "mass 0.9 (SparseAttentionConfig())": {"policy": "mass", "cache_complement": False},
    "SparseD parity (select 0.3, skip 0.2)": {
        "topk_ratio": 0.3,
        "sparsed_selection": True,
        "refresh_threshold": 0.0,
        "dense_steps": "sparsed",
        "cache_complement": False,
    },
}


def accuracy_sweep(
    context_lengths: tuple[int, ...] = (1024, 2048, 4096),
    *,
    count: int = 64,
    points: dict | None = None,
    base: SparseAttentionConfig | None = None,
    batch_size: int = 4,
    model=None,
    on_row=None,
) -> dict:
    """Retrieval accuracy of the project-trained tiny DLM (`testing.dlm.load_trained_tiny_dlm`), dense and accelerated,
    on `count` held-out prompts (`testing.retrieval.held_out_set`) per context length: answers sampled with
    `dlm.generate` (4 tokens, 4 steps, one forward per step), dense and with every point of `points` (label ->
    config overrides on `base`, or with `base=None` on the dlm adapter's defaults; `"dense_steps": "sparsed"` means
    SparseD's `int(steps * 0.2) + 2`). Default points: `ACCURACY_POINTS` without `base`; with `base`, only dense and
    `base` itself (label "base config"), since the fixed labels describe overrides of the adapter's defaults.

    Returns:
        `{"setup": {...}, "rows": [{"context", "label", "accuracy", "same_as_dense", "density", "effective_density",
        "planned_density", "dense_steps", "sparse_steps", "fallback_calls", "config"}...]}`; `density` is the mean
        kept share of key blocks over sparse calls (`effective_density`: over every call after the warm-up, dense
        ones counting 1), `same_as_dense` the share of answer tokens identical to the dense run's.
        `on_row(row)` is called as each row is done.
    """
    from .testing import retrieval as task
    from .testing.dlm import load_trained_tiny_dlm

    context_lengths = _lengths(context_lengths)
    count, batch_size = _whole("count", count), _whole("batch_size", batch_size)
    if points is not None and not (
        isinstance(points, dict) and all(o is None or isinstance(o, dict) for o in points.values())
    ):
        raise SparseDiffusionError(
            f"points={points!r} must be a dict of label -> config overrides (None for the dense run), e.g. "
            '{"dense": None, "top-k 0.2": {"topk_ratio": 0.2}}.'
        )
    model = load_trained_tiny_dlm() if model is None else model
    if points is None:
        points = ACCURACY_POINTS if base is None else {"dense": None, "base config": {}}
    steps = task.NUM_QUERIES * task.VALUE_LEN  # one answer token per step
    rows = []
    for n in context_lengths:
        data = task.held_out_set(count, n)
        dense_tokens = None
        for label, overrides in points.items():
            row = {"context": n, "label": label}
            if overrides is None:
                acc, tokens = task.retrieval_accuracy(model, data, batch_size=batch_size, return_tokens=True)
                dense_tokens = tokens
                row.update(accuracy=acc, density=1.0, effective_density=1.0, planned_density=None, config=None)
            else:
                overrides = dict(overrides)
                if overrides.get("dense_steps") == "sparsed":
                    overrides["dense_steps"] = int(steps * 0.2) + 2
                handle = attach(model, base, **overrides)
                try:
                    acc, tokens = task.retrieval_accuracy(model, data, batch_size=batch_size, return_tokens=True)
                    report = handle.report()
                finally:
                    handle.remove()
                config = handle.config
                row.update(
                    accuracy=acc,
                    density=report["density"],
                    effective_density=report["effective_density"],
                    planned_density=report["planned_density"],
                    dense_steps=report["dense_steps"],
                    sparse_steps=report["sparse_steps"],
                    fallback_calls=report["calls"]["fallback"],
                    config=config.to_dict(),
                )
            if dense_tokens is not None:
                row["same_as_dense"] = float((tokens == dense_tokens).double().mean())
            rows.append(row)
            if on_row is not None:
                on_row(row)
    setup = {
        "model": "tiny_dlm_retrieval (project-trained, see its MODEL_CARD.md)",
        "count": count,
        "task": f"{task.NUM_NEEDLES} needles, {task.NUM_QUERIES} query of {task.VALUE_LEN} tokens; gen_length = steps = {steps}",
        "base_config": None if base is None else base.to_dict(),
        "threads": torch.get_num_threads(),
    }
    return {"setup": setup, "rows": rows}


ACCURACY_HEADER = (
    f"{'context':>7s} {'point':42s} {'accuracy':>8s} {'=dense':>7s} {'density':>8s} {'planned':>8s} "
    f"{'steps d/s':>9s} {'fallback':>8s}"
)
ACCURACY_NOTE = (
    "accuracy: share of answer tokens right; =dense: share identical to the dense answers; density: kept "
    "key blocks over sparse calls; steps d/s: dense / sparse steps of the last call"
)


def format_accuracy_row(r: dict) -> str:
    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    steps = f"{r['dense_steps']}/{r['sparse_steps']}" if "sparse_steps" in r else "all/0"
    return (
        f"{r['context']:7d} {r['label']:42s} {r['accuracy']:8.3f} {fmt(r.get('same_as_dense')):>7s} "
        f"{fmt(r['density']):>8s} {fmt(r['planned_density']):>8s} {steps:>9s} {r.get('fallback_calls', 0):8d}"
    )


def format_accuracy_table(result: dict) -> str:
    return "\n".join([ACCURACY_HEADER, *(format_accuracy_row(r) for r in result["rows"]), ACCURACY_NOTE])


__all__ = [
    "ACCURACY_POINTS",
    "accuracy_sweep",
    "attach",
    "bench_dlm",
    "check_sizes",
    "format_accuracy_row",
    "format_accuracy_table",
    "format_table",
]
