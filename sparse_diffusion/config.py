"""`SparseAttentionConfig`: every knob of the dense warm-up, the mask planner and the backend choice."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from .block_mask import normalize_block_size
from .errors import SparseDiffusionError


logger = logging.getLogger(__name__)

POLICIES = ("mass", "topk")


@dataclass
class SparseAttentionConfig:
    r"""Configuration of block-sparse attention for a diffusers pipeline.

    The method: the first `dense_steps` denoising steps run dense attention; the last of them also measures, per
    (batch element, head), the exact softmax mass of every (query-block, key-block) tile and the row log-sum-exp
    (LSE); the planner keeps the fewest key blocks per query block that satisfy `policy`; every later step reuses
    that cached block mask with a block-sparse kernel (SparseD, arXiv 2509.24014; AdaSpa, arXiv 2502.21079).

    Args:
        dense_steps (`int` or `float`, defaults to `0.25`):
            Dense warm-up length. An `int` counts denoising steps (>= 1); a `float` in (0, 1) is a fraction of the
            call's denoising steps, rounded up and at least one step. The mask is built at the last warm-up step.
        block_size (`int` or `tuple[int, int]`, defaults to `128`):
            Mask tile in tokens, `(BLOCK_Q, BLOCK_K)`; an int means square tiles. Multiples of 16 in [16, 512].
        policy (`str`, defaults to `"mass"`):
            `"mass"`: per head and query block keep the fewest key blocks whose softmax mass reaches
            `mass_threshold` (AdaSpa-style recall target). `"topk"`: keep `ceil(topk_ratio * KB)` key blocks with the
            largest mass (SparseD).
        mass_threshold (`float`, defaults to `0.9`):
            Share of a query block's softmax mass the kept key blocks must cover, in (0, 1]. Higher keeps more blocks.
        topk_ratio (`float`, defaults to `0.3`):
            Share of key blocks kept per query block by `policy="topk"`, in (0, 1].
        sparsed_selection (`bool`, defaults to `False`):
            SparseD's "isolated" selection for diffusion LMs (needs `policy="topk"`): per head and query block,
            `int(topk_ratio * n) + 1` key blocks are taken separately among the prompt key blocks (ranked by the
            tile-mean softmax probability over all keys) and among the generated key blocks (softmax over generated
            keys only), then OR-ed; a block straddling the prompt end counts as prompt. No diagonal is forced and
            `min_kv_blocks` / `max_density` do not apply. The prompt length comes from `begin_call` (unknown: all
            keys count as generated). Softmax scale: the call's (1/sqrt(head_dim) by default).
        min_kv_blocks (`int`, defaults to `1`):
            Floor on key blocks chosen per query block (before the always-kept diagonal and text blocks), >= 1.
        max_density (`float`, defaults to `1.0`):
            Ceiling on the share of key blocks chosen per query block, in (0, 1]; forced blocks (diagonal, text
            tokens) are kept on top of it.
        dense_layers (`tuple[str | int, ...]`, defaults to `()`):
            Self-attention layers that always stay dense, by index in hook order (negative counts from the end) or
            by module name (e.g. `"blocks.0.attn1"`).
        backend (`str`, defaults to `"auto"`):
            `"auto"`, `"triton"` (CUDA, or the Triton interpreter), `"cpu"` (native C++ kernel, compiled on first
            use), `"flex"` (compiled flex_attention), `"gather"` (gather kept K/V blocks + SDPA, any device) or
            `"reference"` (slow PyTorch oracle).
        refresh_threshold (`float`, defaults to `0.7`):
            In sparse steps the kernel's LSE against the cached dense LSE estimates the kept mass
            `exp(lse_sparse - lse_dense)` per head; when a layer's mean estimate falls below this value the layer is
            re-planned from a dense pass at its next call. `0` disables re-planning.
        sparse_density_limit (`float` or `None`, defaults to `None`):
            A layer whose planned mask keeps more than this share of key blocks runs dense attention in sparse steps
            instead (sparse kernels lose to dense SDPA above their break-even density). `None` uses the chosen
            backend's measured break-even (`dispatch.BREAK_EVEN_DENSITY`); `1.0` always runs sparse.
        token_tile (`tuple[int, int, int]` or `None`, defaults to `None`):
            Reorder video tokens into space-time tiles of (frames, rows, columns) latent tokens before the build and
            sparse steps, so a mask block is a compact 3-D neighbourhood (adapters with a video grid: Wan). Choose a
            tile volume equal to `BLOCK_Q`, e.g. `(2, 8, 8)` for 128 (other volumes stay exact but log a warning:
            blocks then straddle tiles). `None` keeps raster order.
        cache_complement (`bool`, defaults to `False`):
            Complement caching: at the build step also keep, per layer, the dense attention output of the dropped key
            blocks (in units of the dense row LSE) and their softmax mass; each sparse step merges that cached part
            with the fresh kept-block result by their LSEs (the standard merge of partial softmax results). Costs one
            output-sized tensor (`[B, H, Sq, D]`, the input dtype) per layer and CFG branch; the report gives the total.
        keep_text_tokens (`bool`, defaults to `True`):
            Keep joint-attention text tokens (CogVideoX, Flux put them first) as dense rows and columns.
        keep_generated_tokens (`bool`, defaults to `True`):
            Diffusion LMs: keep the generated tokens (those after the prompt, whose length the sampler passes to
            `begin_call(prompt_length=...)`) as dense rows and columns, i.e. every block holding one. They are the
            tokens being predicted and few next to a long prompt; block-level selection otherwise ranks their key
            blocks by a tile mass shared with the prompt rows of the same block, which can drop the one far block an
            answer needs. No effect without a prompt length, or with `sparsed_selection`. Prefix attention
            (DiffusionGemma's decoder: every query is a canvas token) keeps the canvas key columns instead.
        collect_timings (`bool`, defaults to `True`):
            Time every intercepted attention call (wall clock on CPU; CUDA events on GPU, read when reported).
    """

    dense_steps: int | float = 0.25
    block_size: int | tuple[int, int] = 128
    policy: str = "mass"
    mass_threshold: float = 0.9
    topk_ratio: float = 0.3
    sparsed_selection: bool = False
    min_kv_blocks: int = 1
    max_density: float = 1.0
    dense_layers: tuple[str | int, ...] = field(default_factory=tuple)
    backend: str = "auto"
    refresh_threshold: float = 0.7
    sparse_density_limit: float | None = None
    token_tile: tuple[int, int, int] | None = None
    cache_complement: bool = False
    keep_text_tokens: bool = True
    keep_generated_tokens: bool = True
    collect_timings: bool = True

    def __post_init__(self) -> None:
        ds = self.dense_steps
        if isinstance(ds, numbers.Integral) and not isinstance(ds, bool):
            ds = self.dense_steps = int(ds)
        elif isinstance(ds, numbers.Real) and not isinstance(ds, bool):
            ds = self.dense_steps = float(ds)
        if isinstance(ds, bool) or not isinstance(ds, (int, float)):
            raise SparseDiffusionError(
                f"dense_steps={ds!r} must be an int (number of dense warm-up steps, >= 1) or a float in (0, 1) "
                "(fraction of the call's denoising steps)."
            )
        if isinstance(ds, int) and ds < 1:
            raise SparseDiffusionError(
                f"dense_steps={ds} must be >= 1: the mask is built from the last dense warm-up step, so at least one "
                "dense step is needed. Use dense_steps=1 for the shortest warm-up."
            )
        if isinstance(ds, float) and not (0.0 < ds < 1.0):
            raise SparseDiffusionError(
                f"dense_steps={ds} as a float is a fraction of the denoising steps and must lie in (0, 1); give an "
                "int to count steps (e.g. dense_steps=10)."
            )
        self.block_size = normalize_block_size(self.block_size, low=16, high=512)
        if self.policy not in POLICIES:
            raise SparseDiffusionError(f"policy={self.policy!r} is not known; choose one of {POLICIES}.")
        for name in ("mass_threshold", "topk_ratio", "max_density"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0.0 < float(v) <= 1.0):
                raise SparseDiffusionError(f"{name}={v!r} must be a number in (0, 1].")
            setattr(self, name, float(v))
        mk = self.min_kv_blocks
        # every policy keeps at least one block per query block, so 0 would be the same as 1
        if isinstance(mk, bool) or not isinstance(mk, numbers.Integral) or mk < 1:
            raise SparseDiffusionError(
                f"min_kv_blocks={mk!r} must be an int >= 1 (every policy keeps at least one key block; 1 = no floor)."
            )
        self.min_kv_blocks = int(mk)
        rt = self.refresh_threshold
        if isinstance(rt, bool) or not isinstance(rt, numbers.Real) or not (0.0 <= float(rt) <= 1.0):
            raise SparseDiffusionError(
                f"refresh_threshold={rt!r} must be a number in [0, 1] (0 disables re-planning)."
            )
        self.refresh_threshold = float(rt)
        limit = self.sparse_density_limit
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, numbers.Real) or not (0.0 < float(limit) <= 1.0):
                raise SparseDiffusionError(
                    f"sparse_density_limit={limit!r} must be a number in (0, 1] or None (backend break-even)."
                )
            self.sparse_density_limit = float(limit)
        from .dispatch import check_name

        check_name(self.backend)
        if self.token_tile is not None:
            tile = self.token_tile
            if (
                not isinstance(tile, (tuple, list))
                or len(tile) != 3
                or not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 1 for t in tile)
            ):
                raise SparseDiffusionError(
                    f"token_tile={tile!r} must be three positive ints (frames, rows, columns), e.g. (2, 8, 8), or None."
                )
            self.token_tile = tuple(int(t) for t in tile)
            _warn_tile_volume(self.token_tile, self.block_size[0])
        for name in (
            "cache_complement",
            "keep_text_tokens",
            "keep_generated_tokens",
            "collect_timings",
            "sparsed_selection",
        ):
            if not isinstance(getattr(self, name), bool):
                raise SparseDiffusionError(f"{name}={getattr(self, name)!r} must be True or False.")
        if self.sparsed_selection:
            failing = [(f"policy='topk' (got {self.policy!r})", "policy='topk'")] if self.policy != "topk" else []
            if self.max_density < 1.0:
                failing.append((f"max_density=1.0 (got {self.max_density})", "max_density=1.0"))
            if failing:
                raise SparseDiffusionError(
                    f"sparsed_selection=True is SparseD's top-k rule: it needs {' and '.join(f for f, _ in failing)}; "
                    f"set {' and '.join(fix for _, fix in failing)}, or sparsed_selection=False."
                )
        if isinstance(self.dense_layers, (str, int)):
            self.dense_layers = (self.dense_layers,)
        if not isinstance(self.dense_layers, (tuple, list)):
            raise SparseDiffusionError(
                f"dense_layers={self.dense_layers!r} must be a tuple of layer indices or module names, e.g. (0, -1)."
            )
        layers = tuple(
            int(e) if isinstance(e, numbers.Integral) and not isinstance(e, bool) else e for e in self.dense_layers
        )
        for entry in layers:
            if isinstance(entry, bool) or not isinstance(entry, (str, int)):
                raise SparseDiffusionError(
                    f"dense_layers entry {entry!r} must be a layer index (int) or a module name (str)."
                )
        self.dense_layers = layers

    def resolve_dense_steps(self, total_steps: int | None) -> int:
        """Number of dense warm-up steps for a call with `total_steps` denoising steps.

        Raises:
            SparseDiffusionError: `dense_steps` is a fraction and `total_steps` is unknown.
        """
        if isinstance(self.dense_steps, int):
            return self.dense_steps
        if total_steps is None:
            raise SparseDiffusionError(
                f"dense_steps={self.dense_steps} is a fraction, but the number of denoising steps of this call is "
                "unknown (no pipeline scheduler). Give dense_steps as an int, pass num_inference_steps to "
                "accelerate_model(), or open each call with handle.begin_call(total_steps) (dlm.generate does)."
            )
        return max(1, math.ceil(self.dense_steps * total_steps - 1e-9))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all fields (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["block_size"] = list(normalize_block_size(self.block_size, low=16, high=512))
        out["dense_layers"] = list(self.dense_layers)
        out["token_tile"] = None if self.token_tile is None else list(self.token_tile)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SparseAttentionConfig":
        """Inverse of `to_dict`; unknown keys raise `SparseDiffusionError` naming them."""
        if not isinstance(data, dict):
            raise SparseDiffusionError(
                f"from_dict needs a dict of SparseAttentionConfig fields, got {type(data).__name__}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SparseDiffusionError(
                f"unknown SparseAttentionConfig fields {unknown}; known fields: {sorted(known)}."
            )
        data = dict(data)
        if isinstance(data.get("block_size"), list):
            data["block_size"] = tuple(data["block_size"])
        for name in ("dense_layers", "token_tile"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        return cls(**data)

    def replace(self, **overrides: Any) -> "SparseAttentionConfig":
        """Copy with some fields changed (validated again); unknown names raise `SparseDiffusionError`."""
        merged = self.to_dict()
        merged.update(overrides)
        return SparseAttentionConfig.from_dict(merged)


@functools.lru_cache(maxsize=None)
def _warn_tile_volume(tile: tuple[int, int, int], block_q: int) -> None:
    """Warn once per (tile, BLOCK_Q): any tile is exact (a token permutation), but only a volume equal to BLOCK_Q
    makes every mask block one compact space-time tile."""
    volume = tile[0] * tile[1] * tile[2]
    if volume != block_q:
        logger.warning(
            "token_tile=%s has volume %d but block_size[0] (BLOCK_Q) is %d: attention stays exact, but mask blocks "
            "are not single space-time tiles; choose a tile of volume %d, e.g. (2, 8, 8) for 128.",
            tile,
            volume,
            block_q,
            block_q,
        )
