"""Train the project's tiny Wan text-to-video model (VAE + transformer) on procedural moving-shape clips.

    python scripts/train_tiny_video.py --out sparse_diffusion/testing/weights/tiny_wan_shapes

Stages (seeded; same arguments and thread count give the same weights):
1. VAE: ``AutoencoderKLWan`` (8x space, 4x time, ``--z-dim`` latent channels) on 64x64 clips of ``--vae-frames``
   frames, half drawn at 64x64 and half cropped from 128x128 clips; loss (MSE + 0.1 L1) with shape pixels weighted
   x10, + 1e-6 KL. Per-channel latent mean/std are then measured and stored in its config. Train on clips as long
   as the videos you will decode: the causal VAE's feature caches reach back many frames, and a VAE trained on
   9-frame clips lost the colour of every frame after the ninth. ``--decoder-only`` retrains the decoder alone,
   which keeps the latent space (and a transformer trained on it) valid.
2. Transformer: ``WanTransformer3DModel`` (patch 1x1x1, so 128x128x33 is 9*16*16 = 2304 tokens) trained with
   rectified-flow velocity loss (x_t = (1 - s) x0 + s noise, target noise - x0, s shifted by 3 as in inference),
   10% prompt dropout for CFG, AdamW + EMA; first on 64x64x33 clips (576 tokens), then on 128x128x33.
The text encoder is the tiny random UMT5 of ``sparse_diffusion.testing`` (frozen; its weights ship with the model).
Writes the diffusers pipeline (fp16 safetensors), ``train_log.jsonl`` (loss curve), ``preview.png`` and a prompt
check (``testing.shapes.check_prompt`` on 19 prompts, logged). The shipped model's full recipe, a chain of
continued runs, is in its MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from jsonl_log import JsonlLog as Log  # scripts/ is on sys.path when a script runs

from sparse_diffusion.cli.args import positive_int, wan_frames


SHIFT = 3.0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--low-steps", type=int, default=700, help="transformer steps at 64x64x33")
    p.add_argument("--low-clips", type=int, default=768)
    p.add_argument("--high-steps", type=int, default=300, help="transformer steps at 128x128x33")
    p.add_argument("--high-clips", type=int, default=256)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument(
        "--vae-base-dim", type=positive_int, default=8, help="AutoencoderKLWan base_dim (channels of its first level)"
    )
    p.add_argument(
        "--z-dim", type=positive_int, default=8, help="latent channels of the VAE (and of the transformer's patches)"
    )
    p.add_argument("--resume-vae", action="store_true", help="reuse OUT/work/vae from an earlier run")
    p.add_argument("--vae-only", action="store_true", help="stop after the VAE stage (resume with --resume-vae)")
    p.add_argument("--vae-init", type=Path, help="continue VAE training from this saved VAE folder")
    p.add_argument(
        "--vae-frames",
        type=wan_frames,
        default=33,
        help="frames per VAE training clip (4k+1; 33 = the demo's length)",
    )
    p.add_argument("--vae-batch", type=positive_int, default=2, help="clips per VAE training step")
    p.add_argument("--vae-lr", type=float, default=1e-3, help="peak VAE learning rate")
    p.add_argument(
        "--decoder-only",
        action="store_true",
        help="with --vae-init: train only the VAE decoder (the latent space, and a transformer trained on it, stay valid)",
    )
    p.add_argument(
        "--init-transformer",
        type=Path,
        help="with --resume-vae: start from this saved WanTransformer3DModel folder; tensors whose shape differs (the "
        "patch embedding and output projection after a --z-dim change) keep their fresh initialisation",
    )
    p.add_argument(
        "--data-seed",
        type=int,
        help="seed of the training clips (default: --seed + 1); a new one gives a continued run fresh clips",
    )
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="only redo OUT/preview.png and the logged prompt check of the pipeline saved in OUT",
    )
    p.add_argument("--plot-only", action="store_true", help="only redraw OUT/loss_curve.png from OUT/train_log.jsonl")
    return p.parse_args()


def build(seed: int, layers: int, heads: int, vae_base_dim: int, z_dim: int):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    from sparse_diffusion.testing import components as tiny

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=vae_base_dim,
        z_dim=z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 1, 1),
        num_attention_heads=heads,
        attention_head_dim=64,
        in_channels=z_dim,
        out_channels=z_dim,
        text_dim=tiny.TEXT_DIM,
        freq_dim=256,
        ffn_dim=4 * 64 * heads,
        num_layers=layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    )
    text_encoder = tiny.t5_encoder(seed, 3, umt5=True)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT)
    return WanPipeline(
        tokenizer=tiny.t5_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )


def vae_clips(gen, batch, frames):
    """64x64 clips of ``frames`` frames, alternately drawn at 64x64 and cropped from 128x128 around the shape's path."""
    from sparse_diffusion.testing import shapes

    out = []
    for i in range(batch):
        spec = shapes.random_spec(gen)
        if i % 2 == 0:
            out.append(shapes.render(spec, frames, 64, 64))
        else:
            clip = shapes.render(spec, frames, 128, 128)
            dx, dy = shapes.DIRECTIONS[spec.direction]  # centre the crop on the middle of the path
            cx = int((spec.start[0] + dx * spec.travel / 2) * 128)
            cy = int((spec.start[1] + dy * spec.travel / 2) * 128)
            x0 = max(0, min(64, cx - 32 + int(torch.randint(-16, 17, (1,), generator=gen))))
            y0 = max(0, min(64, cy - 32 + int(torch.randint(-16, 17, (1,), generator=gen))))
            out.append(clip[:, :, y0 : y0 + 64, x0 : x0 + 64])
    return torch.stack(out) * 2 - 1


def train_vae(vae, steps, gen, log, peak_lr=1e-3, decoder_only=False, frames=33, batch=2):
    from sparse_diffusion.testing import shapes

    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()] if decoder_only else list(vae.parameters())
    opt = torch.optim.AdamW(params, lr=peak_lr, weight_decay=0.0)
    vae.train()
    smooth = None
    for step in range(steps):
        lr = peak_lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        x = vae_clips(gen, batch, frames)
        with torch.set_grad_enabled(not decoder_only):
            post = vae.encode(x).latent_dist
        z = post.mean if decoder_only else post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        # shapes cover a few percent of the pixels: weight them x10 so colour and edges are learned, not just background
        weight = 1.0 + 9.0 * ((x + 1) / 2 - shapes.BACKGROUND).abs().amax(1, keepdim=True).gt(0.05).float()
        loss = (weight * ((rec - x) ** 2 + 0.1 * (rec - x).abs())).mean() + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            log(
                stage="vae-decoder" if decoder_only else "vae",
                step=step,
                loss=round(smooth, 5),
                mse=round(F.mse_loss(rec, x).item(), 5),
                lr=lr,
            )
    vae.eval()


@torch.no_grad()
def encode_clips(vae, gen, n, frames, size):
    from sparse_diffusion.testing import shapes

    lat, prompts = [], []
    for start in range(0, n, 8):
        x, p = shapes.random_batch(gen, min(8, n - start), frames, size, size)
        lat.append(vae.encode(x * 2 - 1).latent_dist.mode())
        prompts += p
    return torch.cat(lat), prompts


def train_transformer(pipe, stages, args, gen, log):
    from sparse_diffusion.testing import shapes

    tr = pipe.transformer
    prompts = shapes.all_prompts() + [""]
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=512)
    index = {p: i for i, p in enumerate(prompts)}
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    ema = copy.deepcopy(tr).eval().requires_grad_(False)
    opt = torch.optim.AdamW(tr.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    total = sum(s[0] for s in stages)
    step = 0
    for n_steps, n_clips, size, batch in stages:
        t_enc = time.time()
        lat, clip_prompts = encode_clips(pipe.vae, gen, n_clips, 33, size)
        lat = (lat - mean) / std
        ids = torch.tensor([index[p] for p in clip_prompts])
        log(
            stage=f"encode{size}",
            clips=n_clips,
            seconds=round(time.time() - t_enc, 1),
            latent_std=round(lat.std().item(), 3),
        )
        tr.train()
        smooth = None
        for _ in range(n_steps):
            lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
            for g in opt.param_groups:
                g["lr"] = lr
            pick = torch.randint(len(lat), (batch,), generator=gen)
            x0 = lat[pick]
            text_ids = torch.where(torch.rand(batch, generator=gen) < 0.1, torch.tensor(index[""]), ids[pick])
            u = torch.rand(batch, generator=gen)
            sigma = SHIFT * u / (1 + (SHIFT - 1) * u)
            noise = torch.randn(x0.shape, generator=gen)
            s = sigma.view(-1, 1, 1, 1, 1)
            xt = (1 - s) * x0 + s * noise
            pred = tr(xt, sigma * 1000, embeds[text_ids], return_dict=False)[0]
            loss = F.mse_loss(pred, noise - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
            opt.step()
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), tr.parameters()):
                    pe.lerp_(p, 1 - decay)
            smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
            if step % 25 == 0 or step == total - 1:
                log(stage=f"transformer{size}", step=step, loss=round(smooth, 5), lr=round(lr, 7))
            step += 1
            if step % 250 == 0:  # EMA snapshot, to look at a long run before it ends
                ema.save_pretrained(args.out / "work" / "transformer-ema")
            skip = args.out / "next-stage"
            if skip.exists():  # `touch OUT/next-stage` ends this stage early (wall-clock budget)
                skip.unlink()
                log(stage=f"transformer{size}", ended_early_at=step)
                break
    tr.load_state_dict(ema.state_dict())
    tr.eval()


@torch.no_grad()
def latent_stats(vae, gen):
    from sparse_diffusion.testing import shapes

    x, _ = shapes.random_batch(gen, 16, 33, 128, 128)
    z = torch.cat([vae.encode(x[i : i + 4] * 2 - 1).latent_dist.mode() for i in range(0, 16, 4)])
    return z.mean((0, 2, 3, 4)).tolist(), z.std((0, 2, 3, 4)).tolist()


PREVIEW_PROMPTS = (
    "a red circle moving right",
    "a blue square moving down",
    "a yellow triangle moving left",
    "a green circle moving up",
)


@torch.no_grad()
def preview(pipe, path: Path, seed: int, log):
    """preview.png (frames 0, 4, .., 32 of the 4 PREVIEW_PROMPTS, one row each) and a prompt check
    (``shapes.check_prompt``) of 19 prompts: those 4 and every 5th of ``shapes.all_prompts()``; 128x128x33, 20 steps,
    CFG 4, seed + prompt index; logged per prompt and in total."""
    import numpy as np
    from PIL import Image

    from sparse_diffusion.testing import shapes

    prompts = list(PREVIEW_PROMPTS) + [p for p in shapes.all_prompts()[::5] if p not in PREVIEW_PROMPTS]
    rows, checks = [], []
    for i, prompt in enumerate(prompts):
        video = pipe(
            prompt,
            height=128,
            width=128,
            num_frames=33,
            num_inference_steps=20,
            guidance_scale=4.0,
            generator=torch.Generator().manual_seed(seed + i),
            output_type="np",
        ).frames[0]
        if i < len(PREVIEW_PROMPTS):
            rows.append(np.concatenate([video[f] for f in range(0, 33, 4)], axis=1))
        check = shapes.check_prompt(video, prompt)
        checks.append(check)
        log(
            stage="prompt-check",
            prompt=prompt,
            colour_match=round(check.colour_match, 3),
            along=round(check.along, 3),
            across=round(check.across, 3),
            max_step=round(check.max_step, 3),
            max_spread=round(check.max_spread, 3),
            follows=check.follows,
        )
    Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)).save(path)
    log(
        stage="prompt-check-total",
        prompts=len(checks),
        follows=sum(c.follows for c in checks),
        colour_match=round(float(np.mean([c.colour_match for c in checks])), 3),
        direction_right=sum(c.along >= 0.15 and abs(c.across) < c.along for c in checks),
    )


def plot_losses(out: Path) -> Path:
    """loss_curve.png: smoothed training loss per stage against step, from train_log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for stage in dict.fromkeys(r["stage"] for r in rows if "loss" in r):
        pts, offset, last = [], 0, -1
        for r in rows:
            if r["stage"] == stage:
                if r["step"] < last:  # a continued stage (e.g. --vae-init) restarts its step count
                    offset += last + 1
                last = r["step"]
                pts.append((offset + r["step"], r["loss"]))
        ax = axes[0] if stage.startswith("vae") else axes[1]
        ax.plot(*zip(*pts), label=stage)
    axes[0].set_title("VAE: shape-weighted MSE + 0.1 L1 + 1e-6 KL")
    axes[1].set_title("transformer: flow-matching velocity MSE (EMA 0.98 of batches)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=100)
    plt.close(fig)
    return out / "loss_curve.png"


def main():
    args = parse_args()
    if args.plot_only:
        print(plot_losses(args.out))
        return
    if args.eval_only:
        from diffusers import WanPipeline

        torch.set_num_threads(args.threads)
        pipe = WanPipeline.from_pretrained(str(args.out), dtype=torch.float32, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        preview(pipe, args.out / "preview.png", args.seed, Log(args.out / "train_log.jsonl", append=True))
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    log = Log(args.out / "train_log.jsonl", append=args.resume_vae or args.vae_init is not None)
    log(stage="start", args={k: str(v) for k, v in vars(args).items()}, torch=torch.__version__)
    pipe = build(args.seed, args.layers, args.heads, args.vae_base_dim, args.z_dim)
    gen = torch.Generator().manual_seed(args.seed)
    if args.resume_vae and (work / "vae").exists():
        from diffusers import AutoencoderKLWan

        pipe.vae = AutoencoderKLWan.from_pretrained(work / "vae").eval()
        pipe.register_modules(vae=pipe.vae)
        gen.manual_seed(args.seed + 1)
    else:
        if args.vae_init is not None:
            from diffusers import AutoencoderKLWan

            pipe.register_modules(vae=AutoencoderKLWan.from_pretrained(args.vae_init))
            gen.manual_seed(args.seed + 2)  # fresh clips for the continued stage
        train_vae(pipe.vae, args.vae_steps, gen, log, args.vae_lr, args.decoder_only, args.vae_frames, args.vae_batch)
        if not args.decoder_only:  # the encoder is unchanged otherwise: keep its statistics
            mean, std = latent_stats(pipe.vae, gen)
            pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
        pipe.vae.save_pretrained(work / "vae")
        gen.manual_seed(args.seed + 1)
    if args.vae_only:
        return
    if args.data_seed is not None:
        gen.manual_seed(args.data_seed)
    log(
        stage="latents",
        mean=[round(m, 3) for m in pipe.vae.config.latents_mean],
        std=[round(s, 3) for s in pipe.vae.config.latents_std],
    )
    if args.init_transformer is not None:
        from safetensors.torch import load_file

        own = pipe.transformer.state_dict()
        saved = {}
        for f in sorted(args.init_transformer.glob("*.safetensors")):
            saved.update(load_file(f))
        kept = {k: v.float() for k, v in saved.items() if k in own and own[k].shape == v.shape}
        if not kept:
            raise SystemExit(
                f"--init-transformer {args.init_transformer}: no tensor matches this transformer (found "
                f"{len(saved)} in *.safetensors there); give the saved WanTransformer3DModel folder, e.g. OUT/transformer"
            )
        pipe.transformer.load_state_dict(kept, strict=False)
        log(
            stage="init-transformer",
            loaded=len(kept),
            fresh=sorted(set(own) - set(kept)),
            unused=sorted(set(saved) - set(kept)),
        )
    stages = [(args.low_steps, args.low_clips, 64, 8), (args.high_steps, args.high_clips, 128, 2)]
    train_transformer(pipe, [s for s in stages if s[0] > 0], args, gen, log)
    pipe.transformer.to(torch.float16)
    pipe.vae.to(torch.float16)
    pipe.save_pretrained(args.out, safe_serialization=True)
    pipe.transformer.to(torch.float32)
    pipe.vae.to(torch.float32)
    preview(pipe, args.out / "preview.png", args.seed, log)
    log(stage="done")
    plot_losses(args.out)


if __name__ == "__main__":
    main()
