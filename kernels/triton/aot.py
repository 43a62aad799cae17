"""Ahead-of-time compilation of the Triton kernels for real NVIDIA targets, without a GPU (the GPU-readiness check).

`compile_kernel` lowers one kernel specialisation through Triton's full pipeline (TTIR -> TTGIR -> LLIR -> PTX ->
cubin, `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`), then reads the cubin's resource use
with `cuobjdump --dump-resource-usage` (both ptxas and cuobjdump ship in the triton wheel). The signature mirrors the
launcher's (`launch._block_sparse_impl` / `_dense_stats_impl`), so what compiles here is what a GPU runs. Used by `tests/test_triton_aot.py` and
developers (`python -m sparse_diffusion.kernels.triton.aot < cases.json`); importing this module does no compilation.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


# Shared memory a block may use (opt-in maximum, bytes): CUDA C Programming Guide, "Compute capabilities" table.
MAX_SHARED = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass(frozen=True)
class CompiledKernel:
    """Resource use of one compiled specialisation: registers per thread, local memory bytes per thread (> 0 means
    register spills), shared memory bytes per block, and features of the PTX."""

    name: str
    arch: int
    registers: int
    local_bytes: int
    shared_bytes: int
    wgmma: bool
    async_copies: bool
    ptx_lines: int

    @property
    def spills(self) -> bool:
        return self.local_bytes > 0


def tools_missing() -> str | None:
    """Why AOT compilation cannot run here (None when triton, its NVIDIA backend, ptxas and cuobjdump are present)."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:
        return f"triton with its NVIDIA backend is not importable ({exc})"
    for tool in ("ptxas", "cuobjdump"):
        if _tool(tool) is None:
            return f"{tool} not found (it ships in the triton wheel under triton/backends/nvidia/bin)"
    return None


def _tool(name: str) -> str | None:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.is_file():
        return str(path)
    from shutil import which

    return which(name)


def _signature(fn, dtype: str, constexprs: dict, int64: frozenset = frozenset()) -> dict:
    """Triton signature strings for `fn`'s arguments: pointers typed by name (the launcher's convention)."""
    tensor = "*" + _DTYPES[dtype]
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("Q", "K", "V", "Out"):
            sig[name] = tensor
        elif name in ("Lse", "MassSum"):
            sig[name] = "*fp32"
        elif name in ("KvNum", "KvIdx", "SeqLensK"):
            sig[name] = "*i32"
        elif name == "qk_scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if name in int64 else "i32"
    return sig


def _divisibility(fn, sig: dict, aligned: set) -> dict:
    """What the JIT specialises at launch: 16-byte aligned pointers, integers divisible by 16."""
    return {
        (i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n].startswith("*") or n in aligned
    }


# Integer arguments that equal 1 for a contiguous head dim (the JIT turns them into constants) and the ones that are
# multiples of 16 when H * D is (row, head and batch strides) or when the lengths are.
UNIT_STRIDES = ("stride_qk", "stride_kk", "stride_vk", "stride_ok", "stride_lm", "stride_ik", "stride_mk")
ROW_STRIDES = ("stride_qm", "stride_kn", "stride_vn", "stride_om")
BASE_STRIDES = ("stride_qz", "stride_qh", "stride_kz", "stride_kh", "stride_vz", "stride_vh", "stride_oz", "stride_oh")


def launch_specialisation(
    fn,
    dtype: str,
    head_dim: int,
    block_size: tuple[int, int],
    tile: dict,
    row_align: int = 16,
    interpret: bool = False,
) -> tuple[dict, set]:
    """(constexprs, integer arguments divisible by 16) of a launch by `launch` on diffusers' permuted q
    [B, S, H, D] with `head_dim` D, mask blocks `block_size` and `tile` (BLOCK_M, BLOCK_N)."""
    import torch

    from . import tiles

    constexprs = dict(tiles.kernel_constants(getattr(torch, dtype), head_dim, block_size, interpret))
    constexprs.update(ROW_ALIGN=row_align, BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"])
    constexprs.update({n: 1 for n in UNIT_STRIDES if n in fn.arg_names})
    aligned = set(BASE_STRIDES)
    if row_align == 16:
        aligned |= set(ROW_STRIDES)
    return constexprs, aligned


def resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers, local bytes, static shared bytes) of the cubin's kernel, from `cuobjdump --dump-resource-usage`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return (
        int(fields.get("REG", 0)),
        int(fields.get("LOCAL", 0)) + int(fields.get("STACK", 0)),
        int(fields.get("SHARED", 0)),
    )


def compile_kernel(
    fn,
    arch: int,
    dtype: str,
    constexprs: dict,
    num_warps: int,
    num_stages: int,
    aligned: set | None = None,
    int64: frozenset = frozenset(),
) -> CompiledKernel:
    """Compile `fn` (a `@triton.jit` function of ours) for `sm_{arch}` with the given constexprs and launch options.

    Args:
        dtype: "float16", "bfloat16" or "float32" (Q/K/V/Out element type).
        aligned: integer arguments the launcher guarantees divisible by 16 (Triton's JIT specialisation).
        int64: integer arguments passed as 64-bit (values >= 2^31, e.g. batch strides of huge tensors).

    Raises:
        triton.compiler.errors.CompilationError, subprocess errors: the kernel does not build for this target.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = _signature(fn, dtype, constexprs, int64)
    src = ASTSource(fn, sig, constexprs, _divisibility(fn, sig, aligned or set()))
    compiled = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    ptx = compiled.asm["ptx"]
    regs, local, static_shared = resource_usage(compiled.asm["cubin"])
    return CompiledKernel(
        name=fn.__name__,
        arch=arch,
        registers=regs,
        local_bytes=local,
        shared_bytes=max(int(compiled.metadata.shared), static_shared),
        wgmma="wgmma.mma_async" in ptx,
        async_copies=("cp.async" in ptx),
        ptx_lines=ptx.count("\n"),
    )


def compile_case(case: dict) -> dict:
    """Compile one case {"kernel": "sparse"|"dense", "arch", "dtype", "head_dim", "block_size", "BLOCK_M",
    "BLOCK_N", "num_warps", "num_stages", "row_align"?}; returns the case with its resource use or its error."""
    from .block_sparse_fwd import _block_sparse_fwd_kernel
    from .dense_fwd import _dense_fwd_stats_kernel

    try:
        fn = {"sparse": _block_sparse_fwd_kernel, "dense": _dense_fwd_stats_kernel}[case["kernel"]]
        bq, bk = case["block_size"]
        m, n, d = case["BLOCK_M"], case["BLOCK_N"], case["head_dim"]
        if d < 1 or bq % m or bk % n or case["dtype"] not in _DTYPES:
            raise ValueError("need head_dim >= 1, tiles dividing the mask blocks and a float16/bfloat16/float32 dtype")
        constexprs, aligned = launch_specialisation(
            fn, case["dtype"], d, (bq, bk), {"BLOCK_M": m, "BLOCK_N": n}, row_align=case.get("row_align", 16)
        )
        result = compile_kernel(
            fn, case["arch"], case["dtype"], constexprs, case["num_warps"], case["num_stages"], aligned
        )
    except Exception as exc:  # reported to the caller, which fails the case with the message
        return {**case, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:2000]}"}
    return {
        **case,
        "registers": result.registers,
        "local_bytes": result.local_bytes,
        "shared_bytes": result.shared_bytes,
        "wgmma": result.wgmma,
        "async_copies": result.async_copies,
    }


def main() -> None:
    """`python -m sparse_diffusion.kernels.triton.aot [workers] < cases.json`: compile the cases (a JSON list) in parallel,
    one JSON result per line on stdout. Run with TRITON_INTERPRET unset (the interpreter replaces @triton.jit)."""
    import json
    import sys
    from concurrent.futures import ProcessPoolExecutor

    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    cases = json.load(sys.stdin)
    with ProcessPoolExecutor(workers) as pool:
        for result in pool.map(compile_case, cases):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
