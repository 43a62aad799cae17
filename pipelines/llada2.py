"""LLaDA2 in diffusers' `LLaDA2Pipeline` (+ `BlockRefinementScheduler`): block diffusion with a block-causal mask.

The pipeline's `model` (remote code `LLaDA2MoeModelLM`, or `testing.dlm.TinyBlockDiffusionLM`) is called once per
refinement step on the canvas so far, `x[:, :(block + 1) * block_length]`, so every forward is one step and the
canvas grows by one block at a time; the call's steps are `pipe.num_timesteps` (steps per block x blocks; threshold
commits can end a block early, and a block that finishes runs one more forward). Its attention is bidirectional
inside a block and causal across blocks: the interception turns that mask into a tile table when `block_length` is a
multiple of the tiles and ANDs every planned mask with it; otherwise the calls run dense and the report says why.
A grown canvas changes the geometry, so the first sparse-phase forward of every block re-plans (dense pass + plan).
"""

from .base import Adapter


LLADA2 = Adapter(
    family="llada2",
    transformer_classes=("LLaDA2MoeModelLM", "TinyBlockDiffusionLM"),
    self_attention=r"(?:.+\.)?layers\.\d+\.(?:attention|self_attn|attn)",
    text_position=None,
    denoiser_components=("model",),
    step_source="forward",
    steps_attribute="num_timesteps",
    call_marker="check_inputs",
    token_layout="[prompt | blocks so far], block-causal mask honoured per tile; the canvas grows per block (re-plan)",
)
