"""The training loss: label tokens' summed cross-entropy, computed from the model's logits in one read and one
write of them. torch's cross-entropy makes a log-softmax the size of the logits, and its backward fills a
zero gradient of that size, scatters into it and runs log-softmax's backward: on samsum with the tiny T5 these
were a quarter of a CPU step, the logits being (tokens x 32,128) (bench/RESULTS.md). Here the forward reads the
logits for each token's log-sum-exp, and the backward turns the saved logits into their own gradient in place;
on a CPU a few tokens' rows at a time, so each pass over them stays in cache."""

from __future__ import annotations

import torch

IGNORE = -100  # the label of a token that is not trained on (padding), as in transformers
CPU_LOGITS_PER_CHUNK = 1 << 20  # logits (4 MiB in fp32) per slice of rows on a CPU: a slice stays in cache


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = logits.float()  # the same tensor for fp32 logits; autocast's bf16 logits are scored in fp32, as torch's
        keep = targets != IGNORE
        index = targets.masked_fill(~keep, 0)[:, None]
        lse = torch.cat([torch.logsumexp(rows, dim=-1) for rows in _chunks(x)])
        loss = ((lse - x.gather(1, index)[:, 0]) * keep).sum()
        ctx.save_for_backward(x, lse, index, keep)
        ctx.dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, lse, index, keep = ctx.saved_tensors
        # d loss / d logit = softmax - one-hot, for kept tokens; written over the logits, which nothing else
        # needs after the loss (the LM head's backward needs its input and weight, not its output)
        scale = (grad * keep).to(x.dtype)[:, None]
        start = 0
        for rows in _chunks(x):
            end = start + rows.shape[0]
            rows.sub_(lse[start:end, None]).exp_().mul_(scale[start:end])
            rows.scatter_add_(1, index[start:end], -scale[start:end])
            start = end
        return x.to(ctx.dtype), None


def _chunks(x: torch.Tensor):
    if x.device.type != "cpu":
        return [x]
    return x.split(max(1, CPU_LOGITS_PER_CHUNK // x.shape[-1]))


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy of logits (..., vocabulary) against labels (...), tokens labelled -100 left out.
    Its gradient overwrites the logits: use them for nothing after the backward."""
    return _SummedCrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device))
