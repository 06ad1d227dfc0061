"""How far apart two float32 results of one computation may be when they are summed in another order: another
kernel (SDPA against eager attention), another layout (packed rows, a sharded model, a padded batch), another
CPU's SIMD width (AVX2 against AVX-512/AMX). Rounding errors scale with the terms summed, not with a result that
cancels to near 0, so tensors compare against their largest entry, not entry by entry."""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7: one ulp of 1.0


def reordered(terms: int, depth: int = 1) -> float:
    """The relative difference to allow after `depth` chained float32 reductions of up to `terms` terms each (a
    layer's matmuls over d_model or d_ff, forward and backward), each summed in another order: rounding errors
    walk like sqrt(terms) ulps of the largest partial sum, and each reduction adds its own; 4x margin."""
    return 4 * depth * math.sqrt(terms) * EPS32


def assert_close(actual, expected, rel: float, name: str = "", scale: float | None = None) -> None:
    """Every entry within `rel` of itself or of the tensor's largest entry (`scale`, where only part of the tensor
    is compared)."""
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    if scale is None:
        scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale, check_dtype=False,
                               msg=lambda message: f"{name}: {message}")
