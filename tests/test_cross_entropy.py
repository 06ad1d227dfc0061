"""flantune's summed cross-entropy against torch's: the same loss and the same gradient of the logits."""

import pytest
import torch
import torch.nn.functional as F

from flantune import cross_entropy
from flantune.cross_entropy import summed_cross_entropy


def _case(dtype, rows=37, vocab=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=g) * 4).to(dtype)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[::5] = -100  # padding
    return logits, labels


@pytest.mark.parametrize("chunk", [1 << 20, 101, 3 * 101])  # one slice; one row a slice; three rows
def test_loss_and_gradient_equal_torch(monkeypatch, chunk):
    monkeypatch.setattr(cross_entropy, "CPU_LOGITS_PER_CHUNK", chunk)
    logits, labels = _case(torch.float32)
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss = summed_cross_entropy(ours * 1.0, labels)  # a non-leaf, as the LM head's output is
    expected = F.cross_entropy(theirs, labels, ignore_index=-100, reduction="sum")
    (loss * 0.5).backward()
    (expected * 0.5).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6)
    assert ours.grad[::5].abs().sum() == 0  # padding trains nothing


def test_three_dimensional_logits_and_bf16():
    logits, labels = _case(torch.bfloat16, rows=24)
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().float().requires_grad_()
    loss = summed_cross_entropy((ours * 1).view(4, 6, -1), labels.view(4, 6))
    loss.backward()
    F.cross_entropy(theirs, labels, reduction="sum").backward()
    assert ours.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), labels, reduction="sum"), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ours.grad.float(), theirs.grad, rtol=1e-2, atol=1e-3)


def test_all_padding_is_zero():
    logits, labels = _case(torch.float32, rows=4)
    logits.requires_grad_()
    loss = summed_cross_entropy(logits * 1.0, torch.full_like(labels, -100))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum() == 0


def test_the_trainers_loss_is_the_models_own_token_loss(tmp_path):
    """FlantuneTrainer scores the labels itself (the model gets the decoder's inputs): its loss and gradients are
    those of the model's own cross-entropy, the token mean times the tokens over the step's normaliser."""
    from flantune.config import load_config
    from flantune.modeling import load_model

    torch.manual_seed(0)
    model = load_model(load_config(["model=tiny"]), 0)
    trainer, batch, normaliser = _trainer_and_batch(tmp_path, model)
    labels = batch["labels"]

    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.eval()  # no dropout: the two forwards see the same network
    ours = trainer.compute_loss(model, batch)
    ours_grads = gradients(ours)
    expected = model(**batch).loss * (labels != -100).sum() / normaliser
    expected_grads = gradients(expected)
    torch.testing.assert_close(ours, expected)
    assert len(ours_grads) == len(expected_grads) > 10
    for a, b in zip(ours_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    torch.testing.assert_close(outputs.loss, model(**batch).loss)


def _trainer_and_batch(tmp_path, model):
    """A trainer of 3 examples a step over a fixed normaliser, and a batch whose labels are padded otherwise in
    each row."""
    from transformers import Seq2SeqTrainingArguments

    from flantune.step import Step
    from flantune.training import FlantuneTrainer

    normaliser = 20.0
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    step = Step(unit="examples", batch=3, micro_batches=1, grad_accum=1, processes=1, loss_normalization="tokens",
                label_tokens=normaliser)
    trainer = FlantuneTrainer(model=model, args=args, step=step, evaluator=None, sampler_factory=None)
    ids = torch.randint(3, 500, (3, 9))
    labels = torch.randint(3, 500, (3, 6))
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    return trainer, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, normaliser


def test_adaloras_regulariser_stays_in_the_loss(tmp_path):
    """AdaLoRA adds its orthogonal regulariser to a loss the model computed: its runs keep the model's loss."""
    from peft import AdaLoraConfig, get_peft_model

    from flantune.config import load_config
    from flantune.modeling import load_model

    torch.manual_seed(0)
    base = load_model(load_config(["model=tiny"]), 0)
    model = get_peft_model(base, AdaLoraConfig(init_r=4, target_r=2, target_modules=["q", "v"], total_step=10,
                                               orth_reg_weight=0.5, task_type="SEQ_2_SEQ_LM"))
    model.eval()
    trainer, batch, normaliser = _trainer_and_batch(tmp_path, model)
    tokens = (batch["labels"] != -100).sum()
    with_regulariser = model(**batch).loss
    plain = F.cross_entropy(model(**batch).logits.flatten(0, 1), batch["labels"].flatten())
    assert abs(float(with_regulariser - plain)) > 1e-4  # the regulariser is there to lose
    torch.testing.assert_close(trainer.compute_loss(model, batch), with_regulariser * tokens / normaliser)


def test_a_wrapped_models_labels_become_its_decoder_inputs():
    """DDP's and DeepSpeed's wrappers hold the model in .module: the decoder's inputs are still made from the
    labels (the model then computes no loss of its own)."""
    from flantune.config import load_config
    from flantune.modeling import load_model
    from flantune.training import decoder_inputs

    model = load_model(load_config(["model=tiny"]), 0)
    wrapper = torch.nn.Module()
    wrapper.module = model
    labels = torch.tensor([[5, 6, -100]])
    inputs = decoder_inputs(wrapper, {"input_ids": torch.tensor([[7, 8]]), "labels": labels})
    assert "labels" not in inputs
    assert inputs["decoder_input_ids"].tolist() == [[model.config.decoder_start_token_id, 5, 6]]
