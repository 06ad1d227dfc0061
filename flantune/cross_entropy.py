"""The training loss: label tokens' summed cross-entropy, computed from the model's logits in one read and one
write of them. torch's cross-entropy makes a log-softmax the size of the logits, and its backward fills a
zero gradient of that size, scatters into it and runs log-softmax's backward, each a pass over (tokens x 32,128)
floats: with it the LM head of a samsum step took 1.62x as long on a CPU (bench/cross_entropy.py). Here the
forward reads the logits for each token's log-sum-exp, and the backward turns the saved logits into their own
gradient in place, a slice of rows at a time: on a CPU a slice that stays in cache; bf16 logits are scored in
fp32 a slice at a time, as torch's cross-entropy scores them under autocast, without an fp32 copy of them all."""

from __future__ import annotations

import torch

IGNORE = -100  # the label of a token that is not trained on (padding), as in transformers
CPU_LOGITS_PER_CHUNK = 1 << 20  # logits (4 MiB in fp32) per slice of rows on a CPU: a slice stays in cache
LOGITS_PER_CHUNK = 1 << 26  # elsewhere: bounds the fp32 copy of a slice of bf16 logits (256 MiB)


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        keep = targets != IGNORE
        index = targets.masked_fill(~keep, 0)[:, None]
        lse = torch.cat([torch.logsumexp(rows.float(), dim=-1) for rows in _chunks(logits)])
        loss = ((lse - logits.gather(1, index)[:, 0].float()) * keep).sum()
        ctx.save_for_backward(logits, lse, index, keep)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, lse, index, keep = ctx.saved_tensors
        # d loss / d logit = softmax - one-hot, for kept tokens; written over the logits, which nothing else
        # needs after the loss (the LM head's backward needs its input and weight, not its output)
        scale = (grad * keep).float()[:, None]
        start = 0
        for rows in _chunks(logits):
            end = start + rows.shape[0]
            g = rows.float()  # the slice itself for fp32 logits
            g.sub_(lse[start:end, None]).exp_().mul_(scale[start:end])
            g.scatter_add_(1, index[start:end], -scale[start:end])
            if g.data_ptr() != rows.data_ptr():
                rows.copy_(g)
            start = end
        return logits, None


def _chunks(x: torch.Tensor):
    per_chunk = CPU_LOGITS_PER_CHUNK if x.device.type == "cpu" else LOGITS_PER_CHUNK
    return x.split(max(1, per_chunk // x.shape[-1]))


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy of logits (..., vocabulary) against labels (...), tokens labelled -100 left out.
    Its gradient overwrites the logits: use them for nothing after the backward."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} for labels of shape {tuple(labels.shape)}: "
                         "one row of logits a label is needed")
    return _SummedCrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device))
