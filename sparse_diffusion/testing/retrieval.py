"""Synthetic long-context retrieval for masked diffusion LMs (multi-key needle-in-a-haystack, RULER-style).

A prompt is `[BOS] haystack [SEP] q1 .. qQ`: the haystack is random filler tokens with `needles` needles
`key v1 .. vV` (a key, then its value of `value_len` tokens; keys distinct, from their own vocabulary) at random
places; `q1 .. qQ` are `Q` of those keys. The answer, generated after the prompt, is their values in query order
(default: one key, a 4-token value, as RULER's multi-key needle test asks for a multi-digit number). Filler, keys and
values use disjoint token ranges, and the mask token is never part of a prompt, so retrieval is the only way to
answer: a model that does not look up the needle scores about 1 / `NUM_VALUES` per token.

`retrieval_accuracy` samples answers with `dlm.generate` (one token per step) and scores them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SparseDiffusionError


BOS, SEP, MASK = 0, 1, 2
NUM_FILLER, NUM_KEYS, NUM_VALUES = 64, 128, 64
FILLER0 = 3
KEY0 = FILLER0 + NUM_FILLER
VALUE0 = KEY0 + NUM_KEYS
VOCAB_SIZE = VALUE0 + NUM_VALUES  # 259
NUM_QUERIES = 1
VALUE_LEN = 4
NUM_NEEDLES = 16


@dataclass
class RetrievalBatch:
    prompts: torch.Tensor  # int64 [B, P]: [BOS] haystack [SEP] queries
    answers: torch.Tensor  # int64 [B, Q * value_len]: the queried keys' values, in query order
    needle_positions: torch.Tensor  # int64 [B, Q]: position of each queried key in the haystack (its value follows)


def sample_retrieval(
    batch: int,
    context_len: int,
    *,
    generator: torch.Generator,
    needles: int = NUM_NEEDLES,
    queries: int = NUM_QUERIES,
    value_len: int = VALUE_LEN,
) -> RetrievalBatch:
    """`batch` prompts of `context_len` tokens (answer not included), drawn from `generator` only.

    Raises:
        SparseDiffusionError: the haystack cannot hold the needles, or more queries than needles / keys.
    """
    haystack = context_len - 2 - queries
    span = 1 + value_len
    if not 1 <= queries <= needles <= NUM_KEYS or value_len < 1 or span * needles > haystack:
        raise SparseDiffusionError(
            f"context_len={context_len}, needles={needles}, queries={queries}, value_len={value_len}: need queries "
            f"<= needles <= {NUM_KEYS} and (1 + value_len) * needles <= context_len - 2 - queries."
        )
    prompts = torch.randint(FILLER0, FILLER0 + NUM_FILLER, (batch, context_len), generator=generator)
    prompts[:, 0] = BOS
    prompts[:, haystack + 1] = SEP
    answers = torch.empty(batch, queries, value_len, dtype=torch.long)
    where = torch.empty(batch, queries, dtype=torch.long)
    offsets = torch.arange(1, span)
    for b in range(batch):
        keys = KEY0 + torch.randperm(NUM_KEYS, generator=generator)[:needles]
        values = VALUE0 + torch.randint(0, NUM_VALUES, (needles, value_len), generator=generator)
        # needle starts: distinct sorted picks among the free places, each earlier needle pushing the later ones on
        free = haystack - (span - 1) * needles
        starts = (
            1 + torch.randperm(free, generator=generator)[:needles].sort().values + (span - 1) * torch.arange(needles)
        )
        prompts[b, starts] = keys
        prompts[b, starts[:, None] + offsets] = values
        asked = torch.randperm(needles, generator=generator)[:queries]
        prompts[b, haystack + 2 :] = keys[asked]
        answers[b] = values[asked]
        where[b] = starts[asked]
    return RetrievalBatch(prompts, answers.flatten(1), where)


def held_out_set(count: int, context_len: int, seed: int = 10_000, **kwargs) -> RetrievalBatch:
    """A fixed evaluation set (training draws from seeds below 10,000 in `scripts/train_tiny_dlm.py`)."""
    return sample_retrieval(count, context_len, generator=torch.Generator().manual_seed(seed + context_len), **kwargs)


@torch.no_grad()
def retrieval_accuracy(
    model, data: RetrievalBatch, *, batch_size: int = 8, steps: int | None = None, return_tokens: bool = False
):
    """Answer every prompt with `dlm.generate` (gen_length = answer length, `steps` = gen_length by default: one
    token per step, greedy, low-confidence order) and return the share of answer tokens that are right (and the
    answers if asked)."""
    from ..pipelines.dlm import generate

    gen_length = data.answers.shape[1]
    outputs = []
    for i in range(0, data.prompts.shape[0], batch_size):
        prompts = data.prompts[i : i + batch_size]
        ids = generate(model, prompts, gen_length=gen_length, steps=steps or gen_length, mask_id=MASK)
        outputs.append(ids[:, prompts.shape[1] :])
    tokens = torch.cat(outputs)
    accuracy = float((tokens == data.answers).double().mean())
    return (accuracy, tokens) if return_tokens else accuracy


__all__ = [
    "BOS",
    "MASK",
    "NUM_NEEDLES",
    "NUM_QUERIES",
    "RetrievalBatch",
    "SEP",
    "VALUE_LEN",
    "VOCAB_SIZE",
    "held_out_set",
    "retrieval_accuracy",
    "sample_retrieval",
]
