"""Test models and data, offline: tiny diffusers pipelines, tiny diffusion LMs, procedural shapes, a retrieval task.

Modules: ``components`` (vocabulary, tokenizers, text encoders), ``wan`` / ``video`` / ``image`` (the pipeline
builders by family, and the project-trained tiny Wan), ``dlm`` (tiny masked diffusion LMs and the trained one),
``shapes`` (procedural moving-shape clips and the prompt checker), ``retrieval`` (the needle-retrieval task) and
``weights/`` (the shipped project-trained weights).

Small, offline, random-weight diffusers pipelines for the demo and the tests:

Every builder assembles a real diffusers pipeline (the same pipeline class, transformer class, VAE
class and scheduler class as the released models) from tiny configs, so nothing is downloaded and
the whole denoising loop, including text encoding and VAE decoding, runs on a CPU in seconds. The
weights are random but deterministic: a given ``seed`` always gives the same weights, and building a
pipeline does not change the global torch random state (``torch.random.fork_rng`` around the
seeding). Each component is seeded on its own, so the text encoder and VAE weights do not change
when only the transformer size changes. The returned pipeline carries
``pipe._sparse_diffusion_weights = "random"`` so reports can say which weights were used.

Tokenizers are word-level ``tokenizers`` tokenizers wrapped in ``PreTrainedTokenizerFast``. They
lowercase and split on whitespace and punctuation; the vocabulary (``VOCABULARY``) covers common
colours, shapes, directions, motions and scene words, and any other word becomes ``<unk>``.

Attention sequence lengths per call (q length; B = batch) with each pipeline's default
``max_sequence_length`` and default sizes (2 layers, 2 heads, head_dim 64), measured on a 2-core
CPU in fp32 with ``torch.set_num_threads(2)``. "step" is one denoising step (transformer only, both
CFG branches); "decode" is the VAE decode that ``output_type="np"`` adds once per call:

=========================  ===============================================  ===========================
pipeline, size             self/joint attention tokens                      time
=========================  ===============================================  ===========================
Wan 64x64, 9 frames        3*4*4 = 48 video tokens; cross-attn keys are     ~6 ms/step; 3 steps with
                           the 512 padded text tokens; CFG = two B=1        decode ~0.1 s
                           passes per step
Wan 256x256, 33 frames     9*16*16 = 2304 video tokens                      ~0.13 s/step; decode ~2.4 s
CogVideoX 64x64, 9 frames  226 text + 3*4*4 video = 274, text FIRST,        ~7 ms/step; 3 steps with
                           CFG batched (B=2)                                decode ~0.1 s
CogVideoX 128x128, 17 fr.  226 + 5*8*8 = 546                                2 steps with decode ~1.0 s
CogVideoX 256x256, 33 fr.  226 + 9*16*16 = 2530                             ~0.12 s/step; decode ~7.8 s
Flux 64x64                 512 text + 32*32 image = 1536, text FIRST in     ~30 ms/step; 3 steps with
                           double and single blocks                         decode ~0.13 s
Flux 128x128               512 + 64*64 = 4608                               ~0.18 s/step; decode ~0.1 s
SD3 36x36,                 18*18 = 324 image + 77 CLIP + 32 T5 = 433,       ~13 ms/step; 3 steps with
max_sequence_length=32     text LAST; CFG batched (B=2)                     decode ~0.05 s
SD3 128x128                64*64 + 77 + 256 = 4429                          ~0.36 s/step; decode ~0.26 s
LTX 32x32, 9 frames,       3*8*8 = 192 video tokens; cross-attn keys are    ~8 ms/step; 3 steps with
max_sequence_length=16     the padded text tokens (128 by default); CFG     decode ~0.04 s
                           batched (B=2)
LTX 128x128, 17 frames     5*32*32 = 5120                                   ~0.49 s/step; decode ~0.44 s
Qwen-Image 256x256         prompt words + 5 text, then 16*16 = 256 image,   ~14 ms/step (both passes);
                           text FIRST; true CFG = two B=1 passes (cond,     3 steps with decode ~0.17 s
                           uncond), each with its own text length
Qwen-Image 512x512         text + 32*32 = 1024 image tokens                 ~42 ms/step; decode ~0.6 s
Mochi 128x128, 13 frames   3*8*8 = 192 video + each sample's VALID text     ~80 ms/step; 3 steps with
                           tokens, text LAST; one attention call per batch  decode ~1.8 s (the VAE needs
                           element (CFG batched, B=2: 192 + 1 uncond,       32 channels per level)
                           192 + prompt words + 1 cond)
=========================  ===============================================  ===========================

The first build in a process pays ~2-3 s of diffusers/transformers imports and the first call
up to ~2 s of CPU kernel warm-up; the times above are from warm calls. Besides the
transformer, ``F.scaled_dot_product_attention`` is also called by the text encoders (T5/UMT5/CLIP/
Qwen2.5-VL, transformers ``sdpa``) and by the VAE mid-block attention, so interception must stay limited to
hooked transformer modules. Outputs are finite, in [0, 1]; with random weights Wan frames are
low-contrast (std ~0.07 around 0.5), a few percent of Flux pixels and under 1% of SD3 and LTX pixels
clip at 0 or 1, and Qwen-Image images stay within about [0.3, 0.7].

Token arithmetic: Wan and CogVideoX VAEs compress 4x in time (``(F - 1) // 4 + 1`` latent frames)
and 8x in space, and the transformers patchify 2x2, so a video token covers 16x16 pixels. The Flux
VAE here has scale factor 1 and the pipeline packs 2x2 latents, so an image token covers 2x2 pixels.
Wan puts text only in cross-attention (keys/values are the ``max_sequence_length`` padded text
tokens, 512 by default). CogVideoX needs ``max_sequence_length`` equal to the transformer's
``max_text_seq_length`` (226, the pipeline default). Flux's text length is ``max_sequence_length``
(512 by default; pass a smaller value for shorter joint sequences). The SD3 VAE here has scale factor 1 and the
transformer patchifies 2x2, so an image token covers 2x2 pixels; SD3's text is the 77 CLIP tokens followed by the
``max_sequence_length`` T5 tokens (256 by default), LAST in the joint sequence. The LTX VAE here compresses 4x in
time and space and the transformer patch is 1x1x1, so a video token covers 4x4 pixels of 4 frames. The Qwen-Image
VAE compresses 8x and the pipeline packs 2x2 latents, so an image token covers 16x16 pixels; its text is the
prompt's words plus 5 chat-template tokens (the 34-token system prefix is dropped), FIRST in the joint sequence.
The Mochi pipeline fixes 6x temporal and 8x spatial VAE compression and the transformer patchifies 2x2 per frame,
so a video token covers 16x16 pixels of 6 frames; Mochi needs at least 2 denoising steps (its sigma schedule
divides by ``steps - 1``).
"""

from __future__ import annotations

from typing import Callable

from .image import build_tiny_flux_pipeline, build_tiny_qwenimage_pipeline, build_tiny_sd3_pipeline
from .video import (
    build_tiny_cogvideox_pipeline,
    build_tiny_hunyuan_video_pipeline,
    build_tiny_ltx_pipeline,
    build_tiny_mochi_pipeline,
)
from .wan import (
    TRAINED_WAN_DIR,
    TRAINED_WAN_WEIGHTS,
    build_tiny_wan_i2v_pipeline,
    build_tiny_wan_pipeline,
    load_trained_tiny_wan_pipeline,
)


#: Builder per pipeline kind, for the CLI and the tests.
TINY_BUILDERS: dict[str, Callable] = {
    "wan": build_tiny_wan_pipeline,
    "wan_i2v": build_tiny_wan_i2v_pipeline,
    "cogvideox": build_tiny_cogvideox_pipeline,
    "flux": build_tiny_flux_pipeline,
    "sd3": build_tiny_sd3_pipeline,
    "ltx": build_tiny_ltx_pipeline,
    "qwenimage": build_tiny_qwenimage_pipeline,
    "hunyuan_video": build_tiny_hunyuan_video_pipeline,
    "mochi": build_tiny_mochi_pipeline,
}

__all__ = ["TINY_BUILDERS", "TRAINED_WAN_DIR", "TRAINED_WAN_WEIGHTS", "load_trained_tiny_wan_pipeline"] + [
    f.__name__ for f in TINY_BUILDERS.values()
]
