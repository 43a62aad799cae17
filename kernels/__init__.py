"""Triton kernels (imported lazily by `sparse_diffusion.ops`; importing this package does no GPU work).

`block_sparse_fwd`: fused block-sparse flash-attention forward with LSE. `dense_fwd`: dense forward that also
writes the LSE and the exact per-tile softmax mass (the build step). `launch`: checks, allocation, grids,
autotuning and the `torch.library` custom ops.
"""
