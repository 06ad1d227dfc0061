"""T5's attention on a CPU, forward and backward: flantune's path (a slice of the batch at a time,
flantune/kernels.py) against the whole batch at once through SDPA (flantune's path before 2026-12-03, and
transformers' "sdpa" attention), at the shapes of the tiny benchmark model and of flan-t5-base:

    python bench/cpu_attention.py

Each case: a learned position bias (1, heads, q, k) with its gradient, a padding mask, the median of 7 calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from flantune import kernels


def whole_batch(query, key, value, mask, bias):
    """The previous path: the (batch, heads, q, k) bias-plus-mask built once, SDPA over the whole batch (its CPU
    flash kernel takes no gradient for the bias, so the math kernel runs)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    combined = torch.where(mask, bias, torch.finfo(query.dtype).min)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=combined, scale=1.0)


def sliced(query, key, value, mask, bias):
    return kernels._cpu_attention(query, key, value, mask, bias, False, 0.0, 1.0).transpose(1, 2)


def time_ms(fn, *tensors, repeats: int = 7) -> float:
    def call():
        fn(*tensors).sum().backward()

    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'shape':46s} {'whole batch':>12s} {'sliced':>9s} {'x':>6s}")
    for name, batch, heads, d in (("tiny (4 heads of 32)", 16, 4, 32), ("flan-t5-base (12 heads of 64)", 8, 12, 64)):
        for length in (128, 256, 512):
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(batch, heads, length, d, generator=g, requires_grad=True) for _ in range(3))
            bias = torch.randn(1, heads, length, length, generator=g, requires_grad=True)
            mask = torch.ones(batch, 1, length, length, dtype=torch.bool)
            mask[: batch // 4, :, :, -length // 8:] = False  # a quarter of the rows padded
            a, b = (time_ms(fn, q, k, v, mask, bias) for fn in (whole_batch, sliced))
            print(f"{name + f', batch {batch} x {length}':46s} {a:9.1f} ms {b:6.1f} ms {a / b:6.2f}", flush=True)


if __name__ == "__main__":
    main()
