"""Tiny random-weight masked diffusion LMs for tests and demos: LLaDA-like (MHA) and Dream-like (GQA) layouts.

`TinyMaskedLM` is a pre-norm transformer (RMSNorm, rotary embeddings, SwiGLU) whose attention is one bidirectional
`F.scaled_dot_product_attention` call per layer over the whole canvas (K/V not repeated for GQA: `enable_gqa`), the
shape LLaDA-8B (32 q / 32 kv heads) and Dream-7B (28 q / 4 kv heads) have. Its forward takes `input_ids` [B, L] and
returns `.logits` [B, L, V]; the Dream logit shift belongs to the sampler (`dlm.generate(shift_logits=True)`).
`TinyBlockDiffusionLM` is the LLaDA2 stand-in (block-causal attention mask) for diffusers' `LLaDA2Pipeline`, whose
real model is remote code.
Weights are deterministic in `seed` and building does not touch the global RNG. `load_trained_tiny_dlm()` loads the
project-trained needle-retrieval model shipped in `weights/tiny_dlm_retrieval` (`scripts/train_tiny_dlm.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SparseDiffusionError


@dataclass
class MaskedLMOutput:
    logits: torch.Tensor  # [B, L, V]


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary embedding (RoFormer, arXiv 2104.09864) of x [B, H, L, D] at integer positions [B, L] or [L]."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    angles = positions.to(torch.float64)[..., None] * freqs  # [.., L, D/2]
    if angles.dim() == 3:
        angles = angles[:, None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class TinyAttention(nn.Module):
    """Self-attention with H query and HK key/value heads; `mask` (bool or additive [B, 1, L, L]) goes to SDPA.

    `token_shift` = w > 0: queries, keys and values are projected from `x + conv(x)`, a depthwise convolution over
    the w tokens on each side (weights start at zero), so a token can describe its neighbours: look-ups then need one
    attention hop instead of two, which makes them far quicker to learn (short convolutions as in H3 / Based). The
    attention call itself is unchanged.
    """

    def __init__(
        self, hidden: int, heads: int, kv_heads: int, token_shift: int = 0, rope_theta: float = 10000.0
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(hidden, heads * self.head_dim)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)
        self.token_shift = int(token_shift)
        self.shift = nn.Parameter(0.3 * torch.randn(2 * self.token_shift + 1, hidden)) if self.token_shift else None

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """x + the depthwise convolution over the `token_shift` neighbours on each side (zero padded)."""
        w, n = self.token_shift, x.shape[1]
        if not w:
            return x
        padded = F.pad(x, (0, 0, w, w))
        return x + sum(padded[:, i : i + n] * self.shift[i] for i in range(2 * w + 1))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.mix(x)
        q = rotary(self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2), positions, self.rope_theta)
        k = rotary(self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2), positions, self.rope_theta)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyLayer(nn.Module):
    def __init__(
        self, hidden: int, heads: int, kv_heads: int, token_shift: int = 0, rope_theta: float = 10000.0
    ) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(hidden)
        self.attn = TinyAttention(hidden, heads, kv_heads, token_shift, rope_theta)
        self.mlp_norm = nn.RMSNorm(hidden)
        self.gate = nn.Linear(hidden, 2 * hidden, bias=False)
        self.up = nn.Linear(hidden, 2 * hidden, bias=False)
        self.down = nn.Linear(2 * hidden, hidden, bias=False)

    def forward(self, x, positions, mask=None):
        x = x + self.attn(self.attn_norm(x), positions, mask)
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class TinyMaskedLM(nn.Module):
    """Bidirectional transformer LM: `forward(input_ids [B, L]) -> MaskedLMOutput(logits [B, L, V])`.

    Layers are `layers.N`, their attention `layers.N.attn` (what the `dlm` adapter accelerates).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden: int,
        num_layers: int,
        heads: int,
        kv_heads: int,
        token_shift: int = 0,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        self.config = dict(
            vocab_size=vocab_size,
            hidden=hidden,
            num_layers=num_layers,
            heads=heads,
            kv_heads=kv_heads,
            token_shift=token_shift,
            rope_theta=rope_theta,
        )
        self.embed = nn.Embedding(vocab_size, hidden)
        self.layers = nn.ModuleList(
            TinyLayer(hidden, heads, kv_heads, token_shift, rope_theta) for _ in range(num_layers)
        )
        self.norm = nn.RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab_size)

    @property
    def device(self) -> torch.device:  # what diffusers pipelines read from their components
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def attention_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The mask every layer's SDPA receives (None: fully bidirectional)."""
        return attention_mask

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final normed hidden states [B, L, hidden] (`lm_head` of them are the logits)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) if position_ids is None else position_ids
        mask = self.attention_mask(input_ids, attention_mask)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, positions, mask)
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> MaskedLMOutput:
        return MaskedLMOutput(self.lm_head(self.hidden_states(input_ids, attention_mask, position_ids)))


class TinyBlockDiffusionLM(TinyMaskedLM):
    """A block-diffusion LM (LLaDA2 layout: bidirectional inside a block of `block_length` tokens, causal across
    blocks) with the call signature diffusers' `LLaDA2Pipeline` uses: `forward(input_ids [B, L], attention_mask [B, L]
    (1 = real token), position_ids [B, L])`. Every layer's SDPA gets the block-causal mask AND the key padding as an
    additive float mask (0 / dtype min), the form transformers writes."""

    def __init__(self, *args, block_length: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.block_length = block_length

    def attention_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        block = torch.arange(input_ids.shape[1], device=input_ids.device) // self.block_length
        allowed = (block[:, None] >= block[None, :])[None, None]  # [1, 1, L, L]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        dtype = self.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )


def build_tiny_masked_lm(
    kind: str = "llada",
    *,
    vocab_size: int = 64,
    hidden: int = 64,
    num_layers: int = 2,
    heads: int | None = None,
    kv_heads: int | None = None,
    locality: float = 0.0,
    mask_id: int | None = None,
    block_length: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> TinyMaskedLM:
    """A `TinyMaskedLM` with random weights fixed by `seed`, in eval mode.

    Args:
        kind: `"llada"` (MHA, 4 heads by default), `"dream"` (GQA, 4 query heads over 2 key/value heads by default;
            sample with `shift_logits=True`) or `"llada2"` (a `TinyBlockDiffusionLM`, GQA 4 over 2, block-causal with
            `block_length`, for diffusers' `LLaDA2Pipeline`).
        block_length: the block-causal block of `"llada2"` (use the pipeline's `block_length`).
        locality: > 0 adds a shared random q/k bias of this size, so after RoPE attention concentrates on nearby
            positions (random weights alone give near-uniform attention, which no block mask can thin out).
        mask_id: a token the model never predicts (logit bias -1e4), as a trained DLM never predicts its mask
            token; default `vocab_size - 1`.
        dtype: parameter dtype (float64 for exact sampler comparisons).

    Raises:
        SparseDiffusionError: unknown kind, head counts that do not divide, or `mask_id` outside the vocabulary.
    """
    defaults = {"llada": (4, 4), "dream": (4, 2), "llada2": (4, 2)}
    if kind not in defaults:
        raise SparseDiffusionError(f"kind={kind!r} must be one of {sorted(defaults)}.")
    heads = heads or defaults[kind][0]
    kv_heads = kv_heads or defaults[kind][1]
    if hidden % heads or heads % kv_heads or (hidden // heads) % 2:
        raise SparseDiffusionError(
            f"hidden={hidden}, heads={heads}, kv_heads={kv_heads}: need hidden % heads == 0, heads % kv_heads == 0 "
            "and an even head dim (rotary pairs channels)."
        )
    mask_id = vocab_size - 1 if mask_id is None else mask_id
    if not 0 <= mask_id < vocab_size:
        raise SparseDiffusionError(f"mask_id={mask_id} must lie in [0, vocab_size={vocab_size}).")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if kind == "llada2":
            model = TinyBlockDiffusionLM(vocab_size, hidden, num_layers, heads, kv_heads, block_length=block_length)
        else:
            model = TinyMaskedLM(vocab_size, hidden, num_layers, heads, kv_heads)
        model.lm_head.bias.zero_()[mask_id] = -1e4
        if locality:
            for layer in model.layers:
                bias = torch.randn(layer.attn.head_dim).repeat(heads) * locality
                layer.attn.q_proj.bias.copy_(bias)
                layer.attn.k_proj.bias.copy_(bias[: kv_heads * layer.attn.head_dim])
    return model.to(dtype).eval()


#: Folder of the project-trained retrieval model (`scripts/train_tiny_dlm.py`).
TRAINED_DLM_DIR = Path(__file__).resolve().parent / "weights" / "tiny_dlm_retrieval"
_ARCH_KEYS = ("vocab_size", "hidden", "num_layers", "heads", "kv_heads", "token_shift", "rope_theta")


def save_tiny_dlm(model: TinyMaskedLM, folder: str | Path, extra_config: dict | None = None) -> Path:
    """Write `model.safetensors` (float32) and `config.json` (architecture + `extra_config`) to `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
    )
    (folder / "config.json").write_text(json.dumps(dict(model.config, **(extra_config or {})), indent=2) + "\n")
    return folder


def load_trained_tiny_dlm(folder: str | Path | None = None, *, dtype: torch.dtype = torch.float32) -> TinyMaskedLM:
    """The project-trained `TinyMaskedLM` (multi-key needle retrieval, `testing.retrieval`), loaded offline
    in eval mode. `model.config` holds the architecture plus `mask_id` and the task description; see the folder's
    MODEL_CARD.md for the recipe and accuracies.

    Raises:
        SparseDiffusionError: the weight folder is missing (a source checkout without `sparse_diffusion/testing/weights`).
    """
    from safetensors.torch import load_file

    folder = TRAINED_DLM_DIR if folder is None else Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise SparseDiffusionError(
            f"the trained tiny DLM is missing at {folder}; reinstall the package or retrain it with "
            "`python scripts/train_tiny_dlm.py --out sparse_diffusion/testing/weights/tiny_dlm_retrieval`."
        )
    config = json.loads((folder / "config.json").read_text())
    model = TinyMaskedLM(*(config[k] for k in _ARCH_KEYS))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.config.update({k: v for k, v in config.items() if k not in _ARCH_KEYS})
    return model.to(dtype).eval()


__all__ = [
    "MaskedLMOutput",
    "TRAINED_DLM_DIR",
    "TinyBlockDiffusionLM",
    "TinyMaskedLM",
    "build_tiny_masked_lm",
    "load_trained_tiny_dlm",
    "rotary",
    "save_tiny_dlm",
]
