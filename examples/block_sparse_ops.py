"""The tensor ops on their own: measure tile mass, build a `BlockSparseMask`, run block-sparse attention and compare
it with the float64 reference. CPU-only, no model.

    HF_HUB_OFFLINE=1 python examples/block_sparse_ops.py
"""

import time

import torch
import torch.nn.functional as F

from sparse_diffusion import BlockSparseMask, ops
from sparse_diffusion.reference import attention_reference, block_sparse_attention_reference


B, H, HK, S, D, BLOCK = 1, 4, 2, 4096, 64, 128  # GQA: 4 query heads over 2 key/value heads; 32 x 32 blocks


def main():
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, S, D, generator=gen)
    k = torch.randn(B, HK, S, D, generator=gen)
    v = torch.randn(B, HK, S, D, generator=gen)
    # a shared smooth position code in q and k: scores fall off with distance, as in a trained model's local heads
    freqs = torch.logspace(-3.3, -1.5, D // 2)
    angle = torch.arange(S)[:, None] * freqs
    code = 1.2 * torch.cat([angle.cos(), angle.sin()], -1)  # [S, D]
    q, k = q + code, k + code

    # 1) the build step's op: dense attention plus the LSE and the exact softmax mass of every 128x128 tile
    out, lse, mass = ops.dense_attention_with_stats(q, k, v, BLOCK)  # mass float32 [B, H, QB, KB], rows sum to 1
    print(f"dense_attention_with_stats: out {tuple(out.shape)}, lse {tuple(lse.shape)}, mass {tuple(mass.shape)}")

    # 2) a mask by hand: per head and query block keep the 6 key blocks of largest mass, plus the diagonal
    qb, kb = mass.shape[-2:]
    keep = torch.zeros(B, H, qb, kb, dtype=torch.bool)
    keep.scatter_(-1, mass.topk(6, dim=-1).indices, True)
    keep |= torch.eye(qb, kb, dtype=torch.bool)
    mask = BlockSparseMask.from_dense(keep, block_size=BLOCK, seq_lengths=(S, S))
    kept = (mass * keep).sum(-1).mean()  # the share of softmax mass inside the kept tiles
    print(mask)
    print(f"kept softmax mass {kept:.3f} at density {mask.density().mean():.3f}")

    # 3) block-sparse attention on every CPU backend against the float64 reference of the same mask
    ref_out, ref_lse = block_sparse_attention_reference(q, k, v, mask)  # float64 compute, full Sq x Sk scores
    for backend in ("auto", "cpu", "gather", "reference"):
        for _ in range(2):  # the second call is timed (the first may compile the native CPU kernel)
            start = time.perf_counter()
            out_s, lse_s = ops.block_sparse_attention(q, k, v, mask, backend=backend)
            took = time.perf_counter() - start
        err = (out_s.double() - ref_out).abs().max().item()
        lse_err = (lse_s - ref_lse).abs().max().item()
        print(f"  {backend:9s} {took * 1e3:7.1f} ms  max |out - ref| {err:.2e}  max |lse - ref| {lse_err:.2e}")

    # 4) against dense attention: the LSE difference estimates the kept mass per row, exp(lse_sparse - lse_dense)
    start = time.perf_counter()
    F.scaled_dot_product_attention(q, k.repeat_interleave(H // HK, 1), v.repeat_interleave(H // HK, 1))
    print(
        f"dense SDPA {(time.perf_counter() - start) * 1e3:.1f} ms (the sparse backends do {mask.density().mean():.0%})"
    )
    print(f"kept-mass estimate from the LSE: {torch.exp(lse_s - lse).mean():.3f}")
    dense_ref, _ = attention_reference(q[:, :, :256], k, v)  # float64 dense reference on the first 256 queries
    print(
        f"dense op vs float64 reference (first 256 queries): {(out[:, :, :256].double() - dense_ref).abs().max():.2e}"
    )

    # 5) batches with different numbers of valid keys: seq_lens_k excludes keys at or past each length
    lens = torch.tensor([3000], dtype=torch.int32)
    out_v, _ = ops.block_sparse_attention(q, k, v, mask, seq_lens_k=lens)
    ref_v, _ = block_sparse_attention_reference(q, k, v, mask, seq_lens_k=lens)
    print(f"seq_lens_k={lens.tolist()}: max |out - ref| {(out_v.double() - ref_v).abs().max():.2e}")


if __name__ == "__main__":
    main()
