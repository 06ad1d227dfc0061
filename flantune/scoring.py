"""What a model says about examples: rank scoring of answer choices, free generation, and the
teacher-forced loss of the gold targets. Batches are formed longest-first so padding stays small;
results come back in the input order."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput

from flantune.config import RANK_SCORES  # eval.rank_score's options, checked with the config
from flantune.methods import decoder_model, encoder_inputs
from flantune.unwrap import base_model_of


@dataclass
class Scored:
    scores: np.ndarray  # (n, choices): log-likelihood of each choice's tokens given the input


def rank_score(scores: np.ndarray, choice_ids: Sequence[Sequence[int]], choice_texts: Sequence[str],
               rule: str) -> np.ndarray:
    """Choices' summed log-likelihoods (n, choices) as the rule ranks them: sum (lm-eval's acc), per_token
    (divided by the choice's tokens, end-of-sequence included) or per_byte (by its UTF-8 bytes; lm-eval's
    acc_norm divides by characters, the same for ASCII answers). Dividing favours long choices whose later
    tokens follow from their first: per token, tiny models trained on ag_news predicted "Science/Technology"
    for 95-100% of examples (bench/RESULTS.md, "Answers of different lengths")."""
    if rule == "sum":
        return scores
    if rule == "per_token":
        return scores / np.array([len(ids) for ids in choice_ids], dtype=np.float64)
    if rule == "per_byte":
        return scores / np.array([max(len(t.encode("utf-8")), 1) for t in choice_texts], dtype=np.float64)
    raise ValueError(f"unknown rank score {rule!r}: one of {', '.join(RANK_SCORES)}")


def ranked_rows(ranked: np.ndarray, choice_texts: Sequence[str]) -> list[dict[str, Any]]:
    """Per example, the best-ranked choice as its `prediction` and each choice's `scores` (rank_score's values,
    rounded to 5 decimals): the rows evaluation saves in predictions/ and `flantune predict` writes."""
    return [{"prediction": choice_texts[int(np.argmax(row))],
             "scores": {c: round(float(v), 5) for c, v in zip(choice_texts, row)}} for row in ranked]


@dataclass
class Generated:
    texts: list[str]
    nll: np.ndarray  # (n,): teacher-forced negative log-likelihood of each target
    new_tokens: int  # tokens generated


def _no_progress(examples: int) -> None:
    """What the scoring loops call after each batch with its examples (a progress bar's update, by default nothing)."""


def _batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _labels(seqs: Sequence[Sequence[int]], device) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        labels[i, : len(s)] = torch.as_tensor(s)
    return labels.to(device)


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """The name T5's forward takes its key/value cache by: `cache` since transformers 5.2x, which deprecates
    `past_key_values` (a FutureWarning at every call); earlier 5.x know only `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _token_logprobs(model, encoder_out, mask, labels, cache=None) -> torch.Tensor:
    """Summed log-probability of each row's label tokens (labels padded with -100)."""
    kwargs = {_cache_keyword(type(base_model_of(model))): cache} if cache is not None else {}
    # The decoder's inputs, not labels: the model's own loss isn't needed (and peft's AdaLoRA, loaded for
    # inference, fails to add its regulariser to one: it has no trainable adapter).
    inputs = base_model_of(model)._shift_right(labels)
    logits = decoder_model(model)(encoder_outputs=encoder_out, attention_mask=mask, decoder_input_ids=inputs,
                                  **kwargs).logits.float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (labels != -100)).sum(-1)


def _encode(model, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's states of a batch and the attention mask over them (a prompt-tuned model's virtual tokens
    come first: flantune.methods.encoder_inputs)."""
    inputs, mask = encoder_inputs(model, ids, mask)
    return model.get_encoder()(**inputs)[0], mask


def _cross_attentions(model) -> list | None:
    """The decoder's cross-attention modules, or None for a model without T5's decoder layout, and under
    FSDP2, whose blocks gather their weights only inside their own forward (the projections would meet
    sharded weights)."""
    from torch.distributed.fsdp import FSDPModule

    try:
        blocks = list(base_model_of(model).decoder.block)
        if any(isinstance(block, FSDPModule) for block in blocks):
            return None
        return [block.layer[1].EncDecAttention for block in blocks]
    except (AttributeError, IndexError):
        return None


def _cross_attention_cache(attentions: list, hidden: torch.Tensor, repeats: int):
    """Each decoder layer's cross-attention keys and values, projected once per example and repeated for
    its choices, as a cache the decoder reads instead of projecting the repeated encoder states again
    (C times the work)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    layers = []
    for attn in attentions:
        shape = (*hidden.shape[:-1], -1, attn.key_value_proj_dim)
        layers.append(tuple(proj(hidden).view(shape).transpose(1, 2).repeat_interleave(repeats, dim=0)
                            for proj in (attn.k, attn.v)))
    return EncoderDecoderCache(DynamicCache(), DynamicCache(layers))


@torch.no_grad()
def rank_choices(model, input_ids: Sequence[Sequence[int]], choice_ids: Sequence[Sequence[int]],
                 *, batch_size: int, pad_id: int, device,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 progress: Callable[[int], object] = _no_progress) -> Scored:
    """Score every answer choice of every example: log p(choice tokens | input), eos included.

    The encoder runs once per example, and so do the cross-attention projections of its states; the
    decoder scores all of a batch's choices in one pass, so C choices cost one decoder call, not C.
    """
    model.eval()
    n_choices = len(choice_ids)
    scores = np.zeros((len(input_ids), n_choices), dtype=np.float64)
    choice_labels = _labels(choice_ids, device)  # (C, longest choice)
    attentions = _cross_attentions(model)  # None: the decoder projects the repeated states itself
    for idx in _batches([len(x) for x in input_ids], batch_size):
        ids, mask = _pad([input_ids[i] for i in idx], pad_id, device)
        with autocast():
            hidden, mask = _encode(model, ids, mask)
            enc = BaseModelOutput(last_hidden_state=hidden.repeat_interleave(n_choices, dim=0))
            labels = choice_labels.repeat(len(idx), 1)  # example 0's choices, then example 1's, ...
            cache = _cross_attention_cache(attentions, hidden, n_choices) if attentions else None
            logp = _token_logprobs(model, enc, mask.repeat_interleave(n_choices, dim=0), labels, cache)
        scores[idx] = logp.double().cpu().numpy().reshape(len(idx), n_choices)
        progress(len(idx))
    return Scored(scores=scores)


@torch.no_grad()
def target_nll(model, input_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]], *,
               batch_size: int, pad_id: int, device) -> np.ndarray:
    """Teacher-forced negative log-likelihood of each target given its input, summed over its tokens."""
    model.eval()
    nll = np.zeros(len(input_ids), dtype=np.float64)
    for idx in _batches([len(x) for x in input_ids], batch_size):
        ids, mask = _pad([input_ids[i] for i in idx], pad_id, device)
        hidden, mask = _encode(model, ids, mask)
        enc = BaseModelOutput(last_hidden_state=hidden)
        labels = _labels([target_ids[i] for i in idx], device)
        nll[idx] = -_token_logprobs(model, enc, mask, labels).double().cpu().numpy()
    return nll


@torch.no_grad()
def generate(model, tokenizer, input_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]] | None, *,
             batch_size: int, max_new_tokens: int, num_beams: int, device,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             synced_gpus: bool = False, progress: Callable[[int], object] = _no_progress) -> Generated:
    """Greedy (or beam) generation, plus the teacher-forced loss of the targets on the same encoding (none without
    targets: `flantune predict`)."""
    model.eval()
    texts: list[str] = [""] * len(input_ids)
    nll = np.zeros(len(input_ids), dtype=np.float64)
    new_tokens = 0
    for idx in _batches([len(x) for x in input_ids], batch_size):
        ids, mask = _pad([input_ids[i] for i in idx], tokenizer.pad_token_id, device)
        with autocast():
            hidden, mask = _encode(model, ids, mask)
            enc = BaseModelOutput(last_hidden_state=hidden)
            if target_ids is not None:
                labels = _labels([target_ids[i] for i in idx], device)
                nll[idx] = -_token_logprobs(model, enc, mask, labels).double().cpu().numpy()
            out = decoder_model(model).generate(
                encoder_outputs=enc, attention_mask=mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                do_sample=False, synced_gpus=synced_gpus,
            )
        new_tokens += int((out[:, 1:] != tokenizer.pad_token_id).sum())
        for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
            texts[i] = text.strip()
        progress(len(idx))
    return Generated(texts=texts, nll=nll, new_tokens=new_tokens)
