"""Helpers shared by the pipeline tests: one seeded pipeline call and a spy on the controller's attention calls."""

import torch


def run_pipeline(pipe, call: dict, steps: int, seed: int = 0, **extra):
    """One seeded call with `output_type="np"` (`extra` overrides `call`); returns the video [F, H, W, 3] or the
    image [H, W, 3]."""
    kwargs = {**call, **extra, "num_inference_steps": steps, "output_type": "np"}
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(seed))
    return out.frames[0] if hasattr(out, "frames") else out.images[0]


def spy_attention(handle) -> list:
    """Record (step, context, layer, q shape, text length, v) of every attention call the controller serves."""
    calls = []
    controller = handle.controller
    original = controller.attention

    def attention(call):
        calls.append(
            (controller.step, controller.context, call.layer, tuple(call.q.shape), controller.text_len, call.v)
        )
        return original(call)

    controller.attention = attention
    return calls
