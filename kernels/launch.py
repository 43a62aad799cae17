"""Launchers for the Triton kernels (the fused kernels land with issue 3; until then Triton never serves)."""

from __future__ import annotations

import torch


def not_supported_reasons(q: torch.Tensor) -> list[str]:
    """Why the Triton backend cannot serve a call on `q` (empty list = it can)."""
    return ["the fused Triton kernels are not part of this version yet"]
