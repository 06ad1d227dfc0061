"""Faster T5 training on GPUs: an attention path that keeps T5's position bias on SDPA's fused
memory-efficient kernel, fused RMSNorm and tanh-GELU kernels in place of T5's elementwise chains, an
AdamW that keeps fp32 master weights for a bf16 model, and regional torch.compile of the blocks.

T5 adds a learned relative-position bias to every attention score. transformers' "sdpa" path
rebuilds the (batch, heads, q, k) bias-plus-mask tensor in every layer and lets SDPA pick a kernel,
which on CUDA often means the unfused math kernel. Here the combined tensor is built once per
forward and shared by every layer of the stack (it is the same bias and mask in each), in the model's
dtype, and SDPA is asked for the memory-efficient kernel, which takes an additive bias and returns its
gradient. Results equal the eager attention's (tests/test_kernels.py).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from flantune.unwrap import base_model_of

ATTENTION = "flantune_sdpa"
T5_LAYOUT = ("t5", "mt5", "umt5")  # the models with T5's own attention, layer norm and feed-forward modules
_CACHE: list[tuple] = []  # (weakref(bias), weakref(mask) or None, causal, lengths, combined); a few, recent first


def _combined(position_bias, attention_mask, is_causal: bool, query, key, reuse: bool = True) -> torch.Tensor:
    lengths = (query.shape[2], key.shape[2], query.dtype)
    for entry in _CACHE if reuse else ():
        bias_ref, mask_ref, causal, lens, combined = entry
        if bias_ref() is position_bias and (mask_ref() if mask_ref else None) is attention_mask \
                and causal == is_causal and lens == lengths:
            return combined
    from transformers.integrations.sdpa_attention import create_position_bias_mask

    combined = create_position_bias_mask(position_bias.to(query.dtype), attention_mask, is_causal, query, key)
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        combined = combined.to(query.dtype)
    if reuse and not torch.compiler.is_compiling():
        _CACHE.insert(0, (weakref.ref(position_bias), weakref.ref(attention_mask) if attention_mask is not None
                          else None, is_causal, lengths, combined))
        del _CACHE[4:]  # encoder self, decoder self, decoder cross: a few entries per forward
    return combined


def clear_mask_cache() -> None:
    """Drop the combined bias-and-mask tensors kept for reuse (CUDA graph recording calls this: masks
    made while recording belong to the graphs' memory)."""
    _CACHE.clear()


def _has_t5_layout(model) -> bool:
    return getattr(base_model_of(model).config, "model_type", None) in T5_LAYOUT


def t5_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, position_bias=None, **kwargs):
    """transformers attention interface: (module, q, k, v, mask, ...) -> (output (b, q, h, d), None)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q_length = query.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    is_causal = bool(q_length > 1 and attention_mask is None and is_causal)
    if position_bias is not None and is_causal and key.shape[2] > q_length:
        key, value = key[:, :, :q_length], value[:, :, :q_length]
        position_bias = position_bias[..., :q_length]
    if position_bias is not None and query.device.type == "cpu":
        return _cpu_attention(query, key, value, attention_mask, position_bias, is_causal, dropout, scaling), None
    if position_bias is not None:
        # Gradient checkpointing recomputes each block on its own and checks that it saves the same tensors
        # as the first forward did: a tensor shared across blocks would be built in one and reused in the others.
        recomputed = module.training and getattr(module, "gradient_checkpointing", False)
        attention_mask = _combined(position_bias, attention_mask, is_causal, query, key, reuse=not recomputed)
        is_causal = False
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                             scale=scaling, is_causal=is_causal)
    return out.transpose(1, 2).contiguous(), None


CPU_SCORES_PER_CHUNK = 1 << 20  # score elements (4 MiB in fp32) per slice of the batch: a slice stays in cache


def _cpu_attention(query, key, value, attention_mask, position_bias, is_causal: bool, dropout: float, scaling):
    """T5's attention on a CPU, a slice of the batch at a time. SDPA's CPU flash kernel returns no gradient for
    the bias, so with T5's learned bias a whole batch's (batch, heads, q, k) scores, bias-plus-mask and softmax
    each go through memory; a few examples' scores fit in cache, which made attention's forward and backward 2.5x
    faster at 512 tokens for the tiny model's heads, 1.6x for flan-t5-base's (bench/cpu_attention.py). The bias
    is added to each slice's scores and the mask filled in place: no bias-plus-mask tensor is made."""
    heads, q_length, k_length = query.shape[1], query.shape[2], key.shape[2]
    if attention_mask is None and is_causal:
        attention_mask = torch.ones(q_length, k_length, dtype=torch.bool, device=query.device).tril()[None, None]
    step = max(1, CPU_SCORES_PER_CHUNK // (heads * q_length * k_length))
    scale = 1.0 if scaling is None else scaling  # T5 folds the usual 1/sqrt(d) into its weights
    # split, not indexing: split's backward joins the slices' gradients once; an index's fills a zero tensor
    # of the whole batch for each slice
    n = -(-query.shape[0] // step)

    def slices(t):  # a mask or bias of batch 1 (or none) serves every slice
        return t.split(step) if t is not None and t.shape[0] > 1 else [t] * n

    outputs = []
    for q, k, v, mask, bias in zip(*map(slices, (query, key, value, attention_mask, position_bias)), strict=True):
        scores = torch.matmul(q, k.transpose(-1, -2))
        if scale != 1.0:
            scores = scores * scale
        scores = scores + bias.to(q.dtype)
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
        elif mask is not None:  # an additive mask
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        if dropout:
            weights = F.dropout(weights, p=dropout, training=True)
        # (slice, q, heads, d): the cat of the slices writes the contiguous output, no copy after it
        outputs.append(torch.matmul(weights, v).transpose(1, 2))
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0].contiguous()


def use_fast_attention(model) -> bool:
    """Switch a T5-family model to the shared-bias SDPA attention; False if the model has no such path."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if not _has_t5_layout(model):
        return False
    AttentionInterface.register(ATTENTION, t5_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # masks in SDPA's form (boolean, or None)
    base_model_of(model).set_attn_implementation(ATTENTION)
    return True


def _fused_rms_norm_forward(self, hidden_states):
    # T5LayerNorm computes in fp32 and casts back, one elementwise kernel per op, each saving its fp32
    # output for the backward; F.rms_norm is one kernel that saves the input and the inverse RMS. Under
    # autocast or with mixed dtypes, T5's own code keeps its exact dtype rules.
    if hidden_states.dtype != self.weight.dtype or torch.is_autocast_enabled(hidden_states.device.type):
        return type(self).forward(self, hidden_states)
    return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)


def use_fused_ops(model) -> int:
    """Swap T5's layer norm for F.rms_norm and its `gelu_new` (eight elementwise ops, each output kept for
    the backward) for the same tanh approximation as one kernel, nn.GELU(approximate="tanh"). Both are the
    same functions (tests/test_kernels.py); in bf16 each rounds once instead of after every op. Returns
    how many modules were changed; models outside the T5 family are left alone."""
    from torch import nn
    from transformers.activations import NewGELUActivation

    if not _has_t5_layout(model):
        return 0
    changed = 0
    for module in model.modules():
        if type(module).__name__.endswith("LayerNorm") and hasattr(module, "variance_epsilon"):
            module.forward = _fused_rms_norm_forward.__get__(module)
            changed += 1
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, nn.GELU(approximate="tanh"))
                changed += 1
    return changed


class MasterWeightAdamW(torch.optim.Optimizer):
    """AdamW for a bf16 model: fp32 master copies of the trainable weights hold the exact values and the
    optimizer state; each step updates them from the bf16 gradients and copies them back to the model.

    The model then runs in bf16 without autocast's per-op casts, while updates smaller than bf16's
    resolution still accumulate in the masters. Gradients are upcast a chunk of parameters at a time
    (`chunk_numel` elements), so the fp32 gradient buffer stays small; the copies and the update are
    multi-tensor (foreach / fused) kernels, a few launches per chunk.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 chunk_numel: int = 1 << 26):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(groups, defaults)
        self.masters = [[p.detach().float().clone() for p in g["params"]] for g in self.param_groups]
        self._scratch_buffer: torch.Tensor | None = None  # the fp32 gradients of one chunk at a time
        fused = all(p.is_cuda for g in self.param_groups for p in g["params"]) or None
        # One inner AdamW per chunk of a group: a chunk's fp32 gradients exist only during its update.
        self.chunks: list[tuple[int, list[int], torch.optim.AdamW]] = []
        for gi, (group, masters) in enumerate(zip(self.param_groups, self.masters)):
            hyper = {k: v for k, v in group.items() if k != "params"}
            start, size = 0, 0
            for i, m in enumerate(masters):
                size += m.numel()
                if size >= chunk_numel or i == len(masters) - 1:
                    idx = list(range(start, i + 1))
                    self.chunks.append((gi, idx, torch.optim.AdamW([masters[j] for j in idx], fused=fused, **hyper)))
                    start, size = i + 1, 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for gi, idx, inner in self.chunks:
            group, masters = self.param_groups[gi], self.masters[gi]
            for key in ("lr", "betas", "eps", "weight_decay"):  # the scheduler changes lr on self.param_groups
                inner.param_groups[0][key] = group[key]
            # A parameter without a gradient this step is left alone, as plain AdamW would.
            live = [j for j in idx if group["params"][j].grad is not None]
            if not live:
                continue
            params = [group["params"][j] for j in live]
            chunk_masters = [masters[j] for j in live]
            # The fp32 gradients are views of one scratch buffer, filled by one multi-tensor copy: a
            # cast per parameter would be hundreds of launches a step.
            scratch = self._scratch(sum(m.numel() for m in chunk_masters), chunk_masters[0].device)
            offset = 0
            for m in chunk_masters:
                m.grad = scratch[offset:offset + m.numel()].view_as(m)
                offset += m.numel()
            torch._foreach_copy_([m.grad for m in chunk_masters], [p.grad for p in params])
            inner.step()
            for m in chunk_masters:
                m.grad = None
            torch._foreach_copy_(params, chunk_masters)
        return loss

    def _scratch(self, numel: int, device) -> torch.Tensor:
        buffer = self._scratch_buffer
        if buffer is None or buffer.numel() < numel or buffer.device != device:
            buffer = self._scratch_buffer = torch.empty(numel, dtype=torch.float32, device=device)
        return buffer[:numel]

    def state_dict(self):
        return {"inner": [inner.state_dict() for _, _, inner in self.chunks],
                "masters": [[m.detach().clone() for m in ms] for ms in self.masters],
                "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]}

    def load_state_dict(self, state_dict):
        for (_, _, inner), saved in zip(self.chunks, state_dict["inner"]):
            inner.load_state_dict(saved)
        with torch.no_grad():
            for masters, saved, group in zip(self.masters, state_dict["masters"], self.param_groups):
                for m, s, p in zip(masters, saved, group["params"]):
                    m.copy_(s)
                    p.copy_(s)
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            group.update(saved)


def disable_kv_cache(model) -> None:
    """Training needs no key/value cache: without this T5's decoder builds one every step (and each
    layer's cache state becomes a torch.compile guard). generate() still asks for the cache itself."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = False


def compile_blocks(model, mode: str | None = None) -> int:
    """Regional compilation: each transformer block is compiled once per call pattern (first layer, others;
    encoder, decoder) with dynamic shapes, so variable-length batches don't recompile. Returns the count."""
    base = base_model_of(model)
    blocks = [*getattr(base.encoder, "block", []), *getattr(getattr(base, "decoder", None), "block", [])]
    for block in blocks:
        block.compile(dynamic=True, mode=mode)
    return len(blocks)
