"""Product presets of `sparse-diffusion demo`: its prompt, the trained model's sparse config, the random-weights prior."""

DEMO_PROMPT = "a red circle moving left"
# Chosen from the quality curve of the trained model (docs/quality_curve.json, model version 3): with the mask fixed
# after a half-length dense warm-up and the complement cached, top-k 0.4 over 64-token blocks keeps every prompt
# above 33 dB (36.6 dB mean, 33.3 worst, effective density 0.423, 1.09x end to end on the 2-core CPU).
DEMO_CONFIG = {
    "dense_steps": 0.5,
    "block_size": 64,
    "policy": "topk",
    "topk_ratio": 0.4,
    "cache_complement": True,
    "refresh_threshold": 0.0,
}
DEMO_LOCALITY = 3.0  # --weights random: locality prior of the random attention
