"""Sampler for masked diffusion language models (LLaDA / Dream style) that works with any model returning `.logits`.

LLaDA's generate loop (Nie et al., "Large Language Diffusion Models", arXiv 2502.09992): the canvas is the prompt
followed by `gen_length` mask tokens, decoded in semi-autoregressive blocks; each step runs one full bidirectional
forward, predicts every masked token and commits a per-block quota of them ranked by confidence ('low_confidence')
or at random ('random'). Committed tokens are never remasked. Dream (Ye et al., "Dream 7B", arXiv 2508.15487) starts
from an autoregressive model, so position i reads the model output at i-1 (`shift_logits=True`), and it ranks by its
own algorithms ('origin', 'maskgit_plus', 'topk_margin', 'entropy') on a time grid `linspace(1, eps, steps + 1)`.

When the model is accelerated with `sparse_diffusion.accelerate_model`, `generate` opens one call of `steps` forwards
on its handle, so the dense warm-up is a fraction of this call's steps (CFG runs both branches in one forward).
"""

from __future__ import annotations

import numbers

import torch

from ..errors import SparseDiffusionError


LLADA_REMASKING = ("low_confidence", "random")
DREAM_ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


def _positive_int(name: str, value, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (0 if allow_zero else 1):
        raise SparseDiffusionError(f"{name}={value!r} must be an int >= {0 if allow_zero else 1}.")
    return int(value)


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 or value == float("inf"):
        raise SparseDiffusionError(f"{name}={value!r} must be a finite number >= 0.")
    return float(value)


def commit_schedule(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to commit at each step of a block: `masked` // steps each, one more on the first `masked % steps` steps.

    Args:
        masked: int [B], masked tokens in the block at its start.

    Returns:
        int64 [B, steps]; each row sums to `masked`.
    """
    base = (masked // steps).long()
    extra = (masked % steps).long()
    return base[:, None] + (torch.arange(steps, device=masked.device)[None, :] < extra[:, None]).long()


def _gumbel_argmax(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """LLaDA's sampling: argmax of exp(logits) / (-log U)^temperature with U uniform in float64 (plain argmax at 0)."""
    if temperature == 0:
        return logits.argmax(-1)
    noisy = logits.double()
    u = torch.rand(noisy.shape, dtype=torch.float64, device=noisy.device, generator=generator)
    return (noisy.exp() / (-torch.log(u)) ** temperature).argmax(-1)


def _dream_sample(
    logits: torch.Tensor, temperature: float, algorithm: str, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's token sampling for [N, V] logits: (confidence [N], token [N]). Temperature > 0 draws from the tempered
    softmax; the confidence is the chosen token's probability, the top-1 minus top-2 margin ('topk_margin') or the
    negative entropy ('entropy')."""
    logits = logits.double()
    if temperature > 0:
        logits = logits / temperature
    probs = logits.softmax(-1)
    if temperature > 0:
        token = torch.multinomial(probs, 1, generator=generator)[:, 0]
        confidence = probs.gather(-1, token[:, None])[:, 0]
    else:
        confidence, token = probs.max(-1)
    if algorithm == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    elif algorithm == "entropy":
        confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
    return confidence, token


def _logits(model, x: torch.Tensor, prompt_index: torch.Tensor, mask_id: int, cfg_scale: float, shift: bool):
    """One forward (CFG batched: the unconditional copy has its prompt masked); returns float logits [B, L, V]."""
    if cfg_scale > 0:
        uncond = x.masked_fill(prompt_index, mask_id)
        both = model(torch.cat([x, uncond])).logits
        cond, unc = both.chunk(2)
        logits = unc + (cfg_scale + 1) * (cond - unc)
    else:
        logits = model(x).logits
    if shift:  # Dream: position i is predicted by output i-1; the first position reuses output 0
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits


def _topk_commit(confidence: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: the `counts[b]` highest-confidence positions of each row (-inf positions are never counted)."""
    commit = torch.zeros_like(confidence, dtype=torch.bool)
    for b in range(confidence.shape[0]):
        n = int(min(counts[b], torch.isfinite(confidence[b]).sum()))
        if n > 0:
            commit[b, confidence[b].topk(n).indices] = True
    return commit


def _check_prompt(prompt_ids) -> None:
    if not isinstance(prompt_ids, torch.Tensor):
        raise SparseDiffusionError(
            f"prompt_ids must be a LongTensor [B, P], got a Python {type(prompt_ids).__name__}; use "
            "torch.tensor([ids]) for one prompt."
        )
    if prompt_ids.dtype != torch.long:
        raise SparseDiffusionError(
            f"prompt_ids must be an int64 tensor [B, P], got dtype {prompt_ids.dtype}; use prompt_ids.long()."
        )
    if prompt_ids.dim() != 2:
        hint = "; use ids[None] for one prompt" if prompt_ids.dim() == 1 else ""
        raise SparseDiffusionError(
            f"prompt_ids must be an int64 tensor [B, P], got shape {tuple(prompt_ids.shape)}{hint}."
        )
    if 0 in prompt_ids.shape:
        raise SparseDiffusionError(
            f"prompt_ids has shape {tuple(prompt_ids.shape)}; give at least one prompt of at least one token."
        )


def _vocab_size(model) -> int | None:
    """The model's vocabulary size where discoverable: its input embedding, else `config.vocab_size`."""
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            n = getattr(get(), "num_embeddings", None)
        except (NotImplementedError, AttributeError):
            n = None
        if isinstance(n, int):
            return n
    config = getattr(model, "config", None)
    n = config.get("vocab_size") if isinstance(config, dict) else getattr(config, "vocab_size", None)
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _check_vocabulary(model, prompt_ids: torch.Tensor, mask_id: int) -> None:
    """Token ids the embedding would reject (negative, or past the vocabulary) raise here, naming them."""
    vocab = _vocab_size(model)
    low, high = int(prompt_ids.min()), int(prompt_ids.max())
    if low < 0:
        raise SparseDiffusionError(f"prompt_ids hold a negative token id ({low}); token ids start at 0.")
    if vocab is None:
        return
    if mask_id >= vocab:
        raise SparseDiffusionError(
            f"mask_id={mask_id} lies outside the model's vocabulary of {vocab} tokens (ids 0..{vocab - 1}); give the "
            "model's own mask token id."
        )
    if high >= vocab:
        raise SparseDiffusionError(
            f"prompt_ids hold token id {high}, outside the model's vocabulary of {vocab} tokens (ids 0..{vocab - 1}); "
            "tokenize with the model's tokenizer."
        )


def _check_args(
    model, prompt_ids, gen_length, steps, block_length, mask_id, remasking, temperature, cfg_scale, alg_temp, eps
):
    if not callable(model):
        raise SparseDiffusionError(
            f"model must be a callable returning an object with .logits, got {type(model).__name__}."
        )
    _check_prompt(prompt_ids)
    gen_length = _positive_int("gen_length", gen_length)
    steps = _positive_int("steps", steps)
    block_length = gen_length if block_length is None else _positive_int("block_length", block_length)
    if gen_length % block_length:
        raise SparseDiffusionError(
            f"gen_length={gen_length} must be a multiple of block_length={block_length} (semi-autoregressive blocks)."
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise SparseDiffusionError(
            f"steps={steps} must be a multiple of the number of blocks gen_length / block_length = {num_blocks}, "
            f"e.g. steps={num_blocks * max(1, steps // num_blocks)}."
        )
    mask_id = _positive_int("mask_id", mask_id, allow_zero=True)
    if bool((prompt_ids == mask_id).any()):
        raise SparseDiffusionError(
            f"prompt_ids contain mask_id={mask_id}; the prompt must not hold mask tokens (pad with another id)."
        )
    _check_vocabulary(model, prompt_ids, mask_id)
    if remasking not in LLADA_REMASKING + DREAM_ALGORITHMS:
        raise SparseDiffusionError(
            f"remasking={remasking!r} is not known; choose LLaDA's {LLADA_REMASKING} or Dream's {DREAM_ALGORITHMS}."
        )
    temperature, cfg_scale, alg_temp = (
        _non_negative(n, v)
        for n, v in (("temperature", temperature), ("cfg_scale", cfg_scale), ("alg_temp", alg_temp))
    )
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1:
        raise SparseDiffusionError(f"eps={eps!r} must lie in (0, 1) (Dream's final time).")
    return gen_length, steps, block_length, mask_id, temperature, cfg_scale, alg_temp, float(eps)


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int | None = None,
    mask_id: int,
    remasking: str = "low_confidence",
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    shift_logits: bool = False,
    alg_temp: float = 0.0,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    return_history: bool = False,
):
    r"""Generate `gen_length` tokens after `prompt_ids` with a masked diffusion LM.

    Args:
        model: callable `model(ids [B, L] int64)` returning an object with `.logits` [B, L, V] (bidirectional
            attention), e.g. LLaDA, Dream or `testing.dlm.TinyMaskedLM`.
        prompt_ids: int64 [B, P] prompts of one length (no mask tokens).
        gen_length: tokens to generate; a multiple of `block_length`.
        steps: forwards in all, a multiple of the number of blocks `gen_length // block_length`; each block gets
            `steps // num_blocks` of them.
        block_length: semi-autoregressive block (LLaDA); `None` = `gen_length` (one block, pure diffusion).
        mask_id: the mask token id (LLaDA 126336, Dream 151666).
        remasking: LLaDA's `"low_confidence"` (softmax probability of the predicted token) or `"random"`, committing
            per block `masked // steps_per_block` tokens per step with the remainder on the first steps; or Dream's
            `"origin"` (each masked token of the block revealed with probability 1 - s/t), `"maskgit_plus"` (top-1
            probability), `"topk_margin"` (top-1 minus top-2) or `"entropy"` (negative entropy), committing
            `int(masked * (1 - s/t))` tokens per step (all at the block's last step) on the grid
            `linspace(1, eps, steps_per_block + 1)`.
        temperature: 0 = greedy. LLaDA: Gumbel-max in float64, argmax of `exp(logits) / (-log U)^temperature`; Dream:
            sampling from `softmax(logits / temperature)`.
        cfg_scale: classifier-free guidance (LLaDA): an unconditional copy with the prompt masked runs in the same
            forward, `logits = uncond + (cfg_scale + 1) * (cond - uncond)`.
        shift_logits: Dream's shift: position i uses the output at i-1, position 0 the output at 0.
        alg_temp: Dream: > 0 draws the committed positions from `softmax(confidence / alg_temp)` instead of top-k.
        eps: Dream's final time.
        generator: RNG for every random draw. Per step, in order: a float64 uniform of the logits' shape (LLaDA,
            temperature > 0), a uniform [B, L] ('random'), a uniform per masked block token ('origin'), then
            multinomial draws (Dream sampling, alg_temp).
        return_history: also return the canvas after every step.

    Returns:
        int64 [B, P + gen_length] canvas (prompt then generated tokens); with `return_history`, `(canvas, history)`
        where `history` is a list of `steps` canvases [B, P + gen_length], one after each step.

    Raises:
        SparseDiffusionError: bad shapes or dtype, an empty prompt, token ids or `mask_id` outside the model's
            vocabulary (when it is discoverable: the input embedding or `config.vocab_size`), lengths not dividing
            into blocks and steps, mask tokens in the prompt, unknown `remasking`, negative temperatures or scales.
    """
    gen_length, steps, block_length, mask_id, temperature, cfg_scale, alg_temp, eps = _check_args(
        model, prompt_ids, gen_length, steps, block_length, mask_id, remasking, temperature, cfg_scale, alg_temp, eps
    )
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    x = torch.cat([prompt_ids, prompt_ids.new_full((batch, gen_length), mask_id)], dim=1)
    prompt_index = torch.zeros_like(x, dtype=torch.bool)
    prompt_index[:, :prompt_len] = True
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    _open_call(model, steps, prompt_len)
    history = []
    positions = torch.arange(x.shape[1], device=device)
    times = torch.linspace(1, eps, per_block + 1, dtype=torch.float64)
    for block in range(num_blocks):
        start = prompt_len + block * block_length
        in_block = (positions >= start) & (positions < start + block_length)
        quota = commit_schedule((x[:, in_block] == mask_id).sum(-1), per_block)
        for i in range(per_block):
            masked = (x == mask_id) & in_block
            logits = _logits(model, x, prompt_index, mask_id, cfg_scale, shift_logits)
            if remasking in LLADA_REMASKING:
                x0 = _gumbel_argmax(logits, temperature, generator)
                if remasking == "low_confidence":
                    score = logits.double().softmax(-1).gather(-1, x0[..., None])[..., 0]
                else:
                    score = torch.rand(x.shape, dtype=torch.float64, device=device, generator=generator)
                commit = _topk_commit(score.masked_fill(~masked, float("-inf")), quota[:, i])
            else:
                x0, commit = _dream_step(
                    logits, masked, i, per_block, times, remasking, temperature, alg_temp, generator
                )
            x = torch.where(commit, x0, x)
            if return_history:
                history.append(x.clone())
    return (x, history) if return_history else x


def _dream_step(logits, masked, i, per_block, times, algorithm, temperature, alg_temp, generator):
    """One Dream step on the active block: (proposed tokens [B, L], bool commits [B, L])."""
    t, s = float(times[i]), float(times[i + 1])
    last = i == per_block - 1
    x0 = torch.zeros(masked.shape, dtype=torch.long, device=masked.device)
    if algorithm == "origin":
        share = 1.0 if last else 1 - s / t
        reveal = torch.rand(int(masked.sum()), dtype=torch.float64, device=masked.device, generator=generator) < share
        commit = torch.zeros_like(masked)
        commit[masked] = reveal
        if bool(reveal.any()):
            x0[commit] = _dream_sample(logits[commit], temperature, algorithm, generator)[1]
        return x0, commit
    confidence, tokens = _dream_sample(logits[masked], temperature, algorithm, generator)
    x0[masked] = tokens
    full = torch.full(masked.shape, float("-inf"), dtype=torch.float64, device=masked.device)
    full[masked] = confidence
    n_masked = masked.sum(-1)
    counts = n_masked if last else (n_masked.double() * (1 - s / t)).long()
    if alg_temp == 0:
        return x0, _topk_commit(full, counts)
    commit = torch.zeros_like(masked)
    weights = (full / alg_temp).softmax(-1)
    for b in range(masked.shape[0]):
        n = int(counts[b])
        if n > 0:
            commit[b, torch.multinomial(weights[b], n, generator=generator)] = True
    return x0, commit


def _open_call(model, steps: int, prompt_len: int) -> None:
    """Tell an accelerated model that a call of `steps` forwards starts (`api.begin_call`; no-op for a plain model)."""
    from ..api import begin_call

    begin_call(model, total_steps=steps, prompt_length=prompt_len)


__all__ = ["DREAM_ALGORITHMS", "LLADA_REMASKING", "commit_schedule", "generate"]
