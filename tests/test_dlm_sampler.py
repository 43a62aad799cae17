"""The masked-diffusion LM sampler (`pipelines/dlm.py`) against oracles written here from the LLaDA / Dream specs."""

import pytest
import torch
from sparse_diffusion.pipelines import dlm

from sparse_diffusion import SparseDiffusionError
from sparse_diffusion.testing.dlm import build_tiny_masked_lm


MASK = 63


@pytest.fixture(scope="module")
def models():
    return {kind: build_tiny_masked_lm(kind, dtype=torch.float64, seed=3) for kind in ("llada", "dream")}


def _prompt(batch=1, length=7, seed=0):
    return torch.randint(0, MASK, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def oracle_llada(model, prompt, gen_length, steps, block_length, remasking, temperature, cfg, generator):
    """LLaDA's generate, step by step from the spec: quota per block, rank masked block positions, commit the best."""
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), MASK)], dim=1)
    blocks = gen_length // block_length
    per_block = steps // blocks
    history = []
    for blk in range(blocks):
        lo, hi = p + blk * block_length, p + (blk + 1) * block_length
        quotas = []
        for row in range(b):
            n = int((x[row, lo:hi] == MASK).sum())
            quotas.append([n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)])
        for i in range(per_block):
            if cfg > 0:
                uncond = x.clone()
                uncond[:, :p] = MASK
                out = model(torch.cat([x, uncond])).logits
                logits = out[b:] + (cfg + 1) * (out[:b] - out[b:])
            else:
                logits = model(x).logits
            if temperature > 0:
                u = torch.rand(logits.shape, dtype=torch.float64, generator=generator)
                pred = (logits.double().exp() / (-torch.log(u)) ** temperature).argmax(-1)
            else:
                pred = logits.argmax(-1)
            if remasking == "low_confidence":
                conf = torch.softmax(logits.double(), dim=-1).gather(-1, pred[..., None])[..., 0]
            else:
                conf = torch.rand((b, x.shape[1]), dtype=torch.float64, generator=generator)
            for row in range(b):
                open_positions = [j for j in range(lo, hi) if x[row, j] == MASK]
                open_positions.sort(key=lambda j: -float(conf[row, j]))
                for j in open_positions[: quotas[row][i]]:
                    x[row, j] = pred[row, j]
            history.append(x.clone())
    return history


@torch.no_grad()
def oracle_dream(model, prompt, gen_length, steps, algorithm, eps=1e-3):
    """Dream's greedy sampler (one block, temperature 0): shifted logits, count int(n * (1 - s/t)), top confidence."""
    x = torch.cat([prompt, torch.full((1, gen_length), MASK)], dim=1)
    grid = torch.linspace(1, eps, steps + 1, dtype=torch.float64)
    history = []
    for i in range(steps):
        out = model(x).logits[0]
        logits = torch.cat([out[:1], out[:-1]])  # position j reads output j-1
        probs = torch.softmax(logits.double(), dim=-1)
        open_positions = [j for j in range(x.shape[1]) if x[0, j] == MASK]
        scores = {}
        for j in open_positions:
            top = torch.sort(probs[j], descending=True).values
            scores[j] = {
                "maskgit_plus": top[0],
                "topk_margin": top[0] - top[1],
                "entropy": (probs[j] * torch.log(probs[j] + 1e-10)).sum(),
            }[algorithm]
        t, s = float(grid[i]), float(grid[i + 1])
        count = len(open_positions) if i == steps - 1 else int(len(open_positions) * (1 - s / t))
        for j in sorted(open_positions, key=lambda j: -float(scores[j]))[:count]:
            x[0, j] = probs[j].argmax()
        history.append(x.clone())
    return history


LLADA_CASES = [
    # gen_length, steps, block_length, remasking, temperature, cfg, batch
    (16, 16, 4, "low_confidence", 0.0, 0.0, 1),  # one token per step, four blocks
    (24, 10, 12, "low_confidence", 0.0, 0.0, 2),  # uneven quotas: 12 tokens over 5 steps -> 3,3,2,2,2
    (16, 6, 8, "random", 0.0, 0.0, 2),
    (16, 8, 16, "low_confidence", 0.0, 1.5, 1),
    (12, 6, 6, "low_confidence", 0.7, 0.0, 2),
    (12, 6, 4, "random", 1.0, 0.5, 1),
]


@pytest.mark.parametrize("gen_length, steps, block_length, remasking, temperature, cfg, batch", LLADA_CASES)
def test_llada_sampler_matches_oracle_at_every_step(
    models, gen_length, steps, block_length, remasking, temperature, cfg, batch
):
    model, prompt = models["llada"], _prompt(batch)
    expected = oracle_llada(
        model, prompt, gen_length, steps, block_length, remasking, temperature, cfg, torch.Generator().manual_seed(11)
    )
    out, history = dlm.generate(
        model,
        prompt,
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        mask_id=MASK,
        remasking=remasking,
        temperature=temperature,
        cfg_scale=cfg,
        generator=torch.Generator().manual_seed(11),
        return_history=True,
    )
    assert len(history) == steps == len(expected)
    for i, (got, want) in enumerate(zip(history, expected)):
        assert torch.equal(got, want), f"step {i}"
    assert torch.equal(out, history[-1])


@pytest.mark.parametrize("algorithm", ["maskgit_plus", "topk_margin", "entropy"])
def test_dream_shifted_sampler_matches_oracle(models, algorithm):
    model, prompt = models["dream"], _prompt()
    expected = oracle_dream(model, prompt, 12, 5, algorithm)
    _, history = dlm.generate(
        model,
        prompt,
        gen_length=12,
        steps=5,
        mask_id=MASK,
        remasking=algorithm,
        shift_logits=True,
        return_history=True,
    )
    for i, (got, want) in enumerate(zip(history, expected)):
        assert torch.equal(got, want), f"step {i}"


def _commits(history, start):
    """Bool [steps, B, L] of positions that changed at each step."""
    frames = [start] + history
    return torch.stack([b != a for a, b in zip(frames, frames[1:])])


@pytest.mark.parametrize(
    "remasking, temperature, cfg, shift",
    [
        ("low_confidence", 0.0, 0.0, False),
        ("random", 0.8, 1.0, False),
        ("origin", 0.5, 0.0, True),
        ("maskgit_plus", 0.8, 0.0, True),
        ("topk_margin", 0.0, 0.0, True),
        ("entropy", 0.0, 2.0, True),
    ],
)
def test_invariants(models, remasking, temperature, cfg, shift):
    prompt, gen_length, steps, block_length = _prompt(2, 5), 18, 12, 6
    model = models["dream" if shift else "llada"]
    out, history = dlm.generate(
        model,
        prompt,
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        mask_id=MASK,
        remasking=remasking,
        temperature=temperature,
        cfg_scale=cfg,
        shift_logits=shift,
        generator=torch.Generator().manual_seed(5),
        return_history=True,
    )
    start = torch.cat([prompt, torch.full((2, gen_length), MASK)], dim=1)
    commits = _commits(history, start)
    per_block = steps // (gen_length // block_length)
    assert all(torch.equal(h[:, :5], prompt) for h in history), "the prompt never changes"
    assert not bool((torch.stack(history) == MASK).logical_and(commits.cumsum(0) > 0).any()), "no remasking"
    assert bool((commits.sum(0) <= 1).all()), "a committed token never changes again"
    for i in range(steps):
        block = i // per_block
        lo, hi = 5 + block * block_length, 5 + (block + 1) * block_length
        outside = commits[i].clone()
        outside[:, lo:hi] = False
        assert not bool(outside.any()), f"step {i} committed outside block {block}"
        if remasking in dlm.LLADA_REMASKING:  # 6 tokens over 4 steps per block: 2, 2, 1, 1
            assert commits[i].sum(-1).tolist() == [[2, 2, 1, 1][i % per_block]] * 2
    assert not bool((out == MASK).any()) and torch.equal(out, history[-1])


def test_one_token_per_step_when_steps_equal_gen_length(models):
    _, history = dlm.generate(
        models["llada"], _prompt(), gen_length=8, steps=8, block_length=2, mask_id=MASK, return_history=True
    )
    start = torch.cat([_prompt(), torch.full((1, 8), MASK)], dim=1)
    assert _commits(history, start).sum((1, 2)).tolist() == [1] * 8


def test_commit_schedule_spreads_the_remainder_over_the_first_steps():
    sched = dlm.commit_schedule(torch.tensor([12, 3, 0]), 5)
    assert sched.tolist() == [[3, 3, 2, 2, 2], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gen_length=10, block_length=4), "multiple of block_length"),
        (dict(gen_length=16, block_length=4, steps=6), "multiple of the number of blocks"),
        (dict(remasking="greedy"), "remasking='greedy'"),
        (dict(temperature=-1.0), "temperature"),
        (dict(cfg_scale=float("nan")), "cfg_scale"),
        (dict(steps=0), "steps=0"),
        (dict(eps=0.0), "eps"),
    ],
)
def test_bad_arguments_raise_clear_errors(models, kwargs, match):
    args = dict(gen_length=8, steps=4, mask_id=MASK) | kwargs
    with pytest.raises(SparseDiffusionError, match=match):
        dlm.generate(models["llada"], _prompt(), **args)


def test_bad_prompts_raise_clear_errors(models):
    with pytest.raises(SparseDiffusionError, match="must not hold mask tokens"):
        dlm.generate(models["llada"], torch.tensor([[1, MASK, 2]]), gen_length=4, steps=4, mask_id=MASK)
    with pytest.raises(SparseDiffusionError, match=r"int64 tensor \[B, P\]"):
        dlm.generate(models["llada"], torch.tensor([1, 2, 3]), gen_length=4, steps=4, mask_id=MASK)


@pytest.mark.parametrize(
    "prompt, match",
    [
        ([[1, 2, 3]], r"LongTensor \[B, P\], got a Python list"),
        (torch.tensor([[1, 2, 3]], dtype=torch.int32), r"got dtype torch\.int32; use prompt_ids\.long\(\)"),
        (torch.tensor([1, 2, 3]), r"shape \(3,\); use ids\[None\]"),
        (torch.zeros((1, 0), dtype=torch.long), r"shape \(1, 0\); give at least one prompt"),
        (torch.tensor([[1, 64, 2]]), "token id 64, outside the model's vocabulary of 64 tokens"),
        (torch.tensor([[1, -5, 2]]), r"negative token id \(-5\)"),
    ],
)
def test_bad_prompts_name_the_problem(models, prompt, match):
    with pytest.raises(SparseDiffusionError, match=match):
        dlm.generate(models["llada"], prompt, gen_length=4, steps=4, mask_id=MASK)


class _EmbeddingModel(torch.nn.Module):
    """A model exposing its vocabulary through `get_input_embeddings` only."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, ids):
        raise AssertionError("the checks must fail before any forward")


def test_mask_id_outside_the_vocabulary_is_named(models):
    with pytest.raises(SparseDiffusionError, match="mask_id=64 lies outside the model's vocabulary of 64 tokens"):
        dlm.generate(models["llada"], _prompt(), gen_length=4, steps=4, mask_id=64)
    with pytest.raises(SparseDiffusionError, match="mask_id=12 lies outside the model's vocabulary of 10 tokens"):
        dlm.generate(_EmbeddingModel(), torch.tensor([[1, 2]]), gen_length=4, steps=4, mask_id=12)
