"""Accelerate a diffusers pipeline: dense and sparse runs of a tiny Wan text-to-video pipeline, compared by PSNR.

Offline and CPU-only: the pipeline is built from small configs (`sparse_diffusion.testing`), with random weights and
a locality prior so that attention falls off with space-time distance, as in a trained video model.

    HF_HUB_OFFLINE=1 python examples/diffusers_pipeline.py
"""

import time

import torch

from sparse_diffusion import accelerate_pipeline, metrics
from sparse_diffusion.testing import build_tiny_wan_pipeline


# 256x256 pixels, 33 frames -> 9 latent frames x 16 x 16 = 2304 video tokens per self-attention call
CALL = dict(prompt="a red circle moving left", height=256, width=256, num_frames=33, guidance_scale=5.0)
STEPS = 10


def run(pipe):
    start = time.perf_counter()
    out = pipe(**CALL, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0))
    return out.frames[0], time.perf_counter() - start  # frames [F, H, W, 3] float in [0, 1]


def main():
    torch.set_num_threads(2)
    pipe = build_tiny_wan_pipeline(locality=3.0)
    pipe.set_progress_bar_config(disable=True)
    dense, dense_s = run(pipe)

    # 3 dense warm-up steps (the last one builds the masks), then 7 block-sparse steps with 128-token blocks
    handle = accelerate_pipeline(pipe, dense_steps=3, block_size=128)
    sparse, sparse_s = run(pipe)
    report = handle.report()
    print(handle.format_report())
    handle.remove()  # the pipeline is back to its untouched dense behaviour

    psnr = metrics.psnr(dense, sparse, data_range=1.0)
    ssim = sum(metrics.ssim(a, b, data_range=1.0) for a, b in zip(dense, sparse)) / len(dense)
    print()
    print(
        f"steps: {report['dense_steps']} dense warm-up, {report['sparse_steps']} sparse (of {report['total_steps']})"
    )
    print(f"density {report['density']:.3f} of key blocks, kept mass (LSE estimate) {report['kept_mass']:.3f}")
    print(f"PSNR {psnr:.1f} dB, SSIM {ssim:.4f} (sparse against dense, same seed)")
    print(f"wall time: dense {dense_s:.1f} s, sparse {sparse_s:.1f} s")


if __name__ == "__main__":
    main()
