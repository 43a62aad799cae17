"""Bidirectional masked diffusion LMs (LLaDA, Dream and look-alikes such as `testing.dlm.TinyMaskedLM`).

Every step is one full forward over prompt + canvas with square, unmasked bidirectional attention, so each forward
counts as one step (`step_source="forward"`); `dlm.generate` opens a call of `steps` forwards. Module names: LLaDA's
remote code attends inside `model.transformer.blocks.N` (the block calls SDPA itself), Dream's in
`model.layers.N.self_attn`, the tiny model's in `layers.N.attn`. GQA (Dream: 28 query over 4 key/value heads) runs
without repeating K/V when the model passes `enable_gqa=True`; a model that repeats K/V itself is served as MHA.
"""

from .base import Adapter


# defaults without a config object: SparseD's ratio top-k at 10% plus complement caching (prompt tokens do not change
# between steps, so the cached dropped-block output stays close to exact) and, as in SparseD, one mask per call (the
# LSE kept-mass estimate is low by design here); see the README's accuracy table on the trained tiny_dlm_retrieval model
DLM_CONFIG_DEFAULTS = (("policy", "topk"), ("topk_ratio", 0.1), ("cache_complement", True), ("refresh_threshold", 0.0))


MASKED_LM = Adapter(
    family="dlm",
    transformer_classes=("LLaDAModelLM", "DreamModel", "TinyMaskedLM"),
    self_attention=r"(?:.+\.)?(?:blocks\.\d+|layers\.\d+\.(?:self_attn|attn))",
    text_position=None,
    denoiser_components=("model",),
    step_source="forward",
    token_layout="[prompt | generated] tokens, bidirectional; every forward is one step",
    config_defaults=DLM_CONFIG_DEFAULTS,
)
