"""Bidirectional masked diffusion LMs (LLaDA, Dream and look-alikes such as `tiny_dlm.TinyMaskedLM`).

Every step is one full forward over prompt + canvas with square, unmasked bidirectional attention, so each forward
counts as one step (`step_source="forward"`); `dlm.generate` opens a call of `steps` forwards. Module names: LLaDA's
remote code attends inside `model.transformer.blocks.N` (the block calls SDPA itself), Dream's in
`model.layers.N.self_attn`, the tiny model's in `layers.N.attn`. GQA (Dream: 28 query over 4 key/value heads) runs
without repeating K/V when the model passes `enable_gqa=True`; a model that repeats K/V itself is served as MHA.
"""

from .base import Adapter


MASKED_LM = Adapter(
    family="dlm",
    transformer_classes=("LLaDAModelLM", "DreamModel", "TinyMaskedLM"),
    self_attention=r"(?:.+\.)?(?:blocks\.\d+|layers\.\d+\.(?:self_attn|attn))",
    text_position=None,
    denoiser_components=("model",),
    step_source="forward",
    token_layout="[prompt | generated] tokens, bidirectional; every forward is one step",
    # SparseD's ratio top-k rather than a mass target: see the README's accuracy table (tiny_dlm_retrieval)
    config_defaults=(("policy", "topk"), ("topk_ratio", 0.2)),
)
