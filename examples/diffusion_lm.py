"""Accelerate a masked diffusion LM: dense and block-sparse sampling of the project-trained tiny DLM.

The model (`sparse_diffusion.testing.dlm.load_trained_tiny_dlm`, shipped with the package) was trained on needle
retrieval: a 2048-token prompt hides 16 `key v1 v2 v3 v4` needles in random filler and ends with one key; the model
generates that key's 4-token value. Offline and CPU-only.

    HF_HUB_OFFLINE=1 python examples/diffusion_lm.py
"""

import time

import torch
from sparse_diffusion.pipelines.dlm import generate

from sparse_diffusion import accelerate_model
from sparse_diffusion.testing import retrieval as task
from sparse_diffusion.testing.dlm import load_trained_tiny_dlm


CONTEXT, COUNT = 2048, 8  # 8 held-out prompts of 2048 tokens
GEN = dict(gen_length=task.VALUE_LEN, steps=task.VALUE_LEN, mask_id=task.MASK)  # one token per step, greedy


def sample(model, prompts):
    start = time.perf_counter()
    ids = generate(model, prompts, **GEN)  # int64 [B, P + gen_length]: prompt, then the generated tokens
    return ids[:, prompts.shape[1] :], time.perf_counter() - start


def main():
    torch.set_num_threads(2)
    model = load_trained_tiny_dlm()
    data = task.held_out_set(COUNT, CONTEXT)  # data.prompts [8, 2048], data.answers [8, 4]
    dense, dense_s = sample(model, data.prompts)

    # no config: the dlm adapter's defaults (top-k 0.1 + complement caching, one mask per call); `generate` opens a
    # call of `steps` forwards on the handle, so dense_steps 0.25 (the default) gives 1 dense step (the build) + 3 sparse
    with accelerate_model(model) as handle:
        sparse, sparse_s = sample(model, data.prompts)
        report = handle.report()
        print(handle.format_report())
    # leaving the `with` block removed the hooks: the model is dense again

    print()
    print(
        f"steps: {report['dense_steps']} dense (build), {report['sparse_steps']} sparse (of {report['total_steps']})"
    )
    print(f"density {report['density']:.3f} of key blocks over sparse calls")
    print(
        f"accuracy: dense {(dense == data.answers).double().mean():.3f}, sparse {(sparse == data.answers).double().mean():.3f}"
    )
    print(f"sparse tokens equal to the dense ones: {(sparse == dense).double().mean():.3f}")
    print(f"wall time: dense {dense_s:.1f} s, sparse {sparse_s:.1f} s")


if __name__ == "__main__":
    main()
