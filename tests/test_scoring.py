"""Rank scoring computes log p(choice | input) exactly as scoring each choice on its own would, while
projecting each example's encoder states for cross-attention once, not once per choice."""

from __future__ import annotations

import numpy as np
import torch
from transformers import T5Config, T5ForConditionalGeneration

from flantune.scoring import rank_choices, target_nll

from tolerances import assert_close, reordered


# Batched and padded against one by one: the 2+2 layers' forward sums (up to d_ff=64 terms) and the log-softmax
# over the 300-token vocabulary, reordered (float32 against a float64 log-softmax here).
SCORES = reordered(300, depth=5)


def _model():
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=300, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    return T5ForConditionalGeneration(cfg).eval()


def _one_by_one(model, inputs, choices) -> np.ndarray:
    scores = np.zeros((len(inputs), len(choices)))
    with torch.no_grad():
        for i, ids in enumerate(inputs):
            for c, choice in enumerate(choices):
                logits = model(input_ids=torch.tensor([ids]), labels=torch.tensor([choice])).logits[0]
                scores[i, c] = torch.log_softmax(logits.double(), -1)[range(len(choice)), choice].sum().item()
    return scores


def test_rank_scores_equal_each_choice_scored_alone_and_project_cross_attention_once():
    model = _model()
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randint(2, 300, (int(n),), generator=g).tolist() for n in torch.randint(3, 30, (11,), generator=g)]
    choices = [[5, 6, 1], [7, 1], [8, 9, 10, 1]]  # different lengths: padded with -100 among themselves
    alone = _one_by_one(model, inputs, choices)
    projected_rows = []
    for block in model.decoder.block:
        block.layer[1].EncDecAttention.k.register_forward_hook(lambda m, args, out: projected_rows.append(len(args[0])))
    scored = rank_choices(model, inputs, choices, batch_size=4, pad_id=0, device="cpu").scores
    assert_close(scored, alone, SCORES)
    # 11 examples in batches of 4 (4 + 4 + 3), two decoder layers: each example's states once per layer
    assert sum(projected_rows) == 11 * 2


def test_target_nll_is_each_targets_summed_negative_log_likelihood():
    model = _model()
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randint(2, 300, (int(n),), generator=g).tolist() for n in torch.randint(3, 30, (7,), generator=g)]
    targets = [[5, 6, 1], [7, 1], [8, 9, 10, 1], [5, 1], [9, 1], [6, 6, 6, 6, 1], [1]]
    expected = [-_one_by_one(model, [ids], [target])[0, 0] for ids, target in zip(inputs, targets)]
    got = target_nll(model, inputs, targets, batch_size=3, pad_id=0, device="cpu")
    assert_close(got, expected, SCORES)
