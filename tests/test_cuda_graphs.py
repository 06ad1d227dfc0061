"""CUDA-graphed training steps (flantune/cuda_graphs.py) give the trainer what an eager step gives it: the
same loss and the same gradients in `.grad`, also under gradient accumulation and across batch shapes.

CI has no GPU, so most tests here put a stand-in recorder in place of the CUDA graph: it "replays" by
running the recorded function again, which exercises everything around the graph (static inputs, the
gradient buffers, scaling, hand-over to `.grad`, the shape table). The last test records real CUDA
graphs where a GPU is present (bench/RESULTS.md says where it ran)."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import T5Config, T5ForConditionalGeneration

from flantune import cuda_graphs
from flantune.cuda_graphs import GraphedSteps, PadToBuckets, bucket
from flantune.errors import FlantuneError
from flantune.kernels import use_fast_attention, use_fused_ops

from tolerances import assert_close, reordered


def _tiny(seed=0, device="cpu"):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=300, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    model = T5ForConditionalGeneration(cfg).to(device)
    use_fast_attention(model)
    use_fused_ops(model)
    return model.train()


def _batch(rows, length, labels_len, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 300, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    labels = torch.randint(2, 300, (rows, labels_len), generator=g)
    labels[-1, labels_len // 2:] = -100
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


# The tiny model here: d_ff=128, 2+2 layers, forward and backward (8 chained reductions). The graphed step
# scales and adds gradients in its own buffers, the eager one through autograd: the same sums, in another order.
REORDERED = reordered(128, depth=8)


class Rerun:
    """Stands in for CudaRecorder: a replay runs the recorded function again into the recorded output."""

    def __init__(self):
        self.recordings = 0

    def __call__(self, fn):
        self.recordings += 1
        out = fn()
        return (lambda: out.copy_(fn())), out


def _eager_grads(model, batches, scales):
    model.zero_grad(set_to_none=True)
    losses = []
    for batch, scale in zip(batches, scales):
        loss = model(**batch).loss * scale
        loss.backward()
        losses.append(loss.detach())
    return losses, [p.grad.clone() for p in model.parameters()]


def test_replayed_steps_give_the_eager_loss_and_gradients():
    model = _tiny()
    reference = copy.deepcopy(model)
    recorder = Rerun()
    graphed = GraphedSteps(model, accumulate=False, recorder=recorder)
    # two shapes, the first one twice: the second time it replays the recording with new data
    for batch in (_batch(3, 16, 8, seed=1), _batch(3, 24, 8, seed=2), _batch(3, 16, 8, seed=3)):
        model.zero_grad(set_to_none=True)
        loss = graphed.step(batch, 1.0)
        (want,), grads = _eager_grads(reference, [batch], [1.0])
        assert loss.item() == pytest.approx(want.item(), rel=REORDERED)
        for p, g in zip(model.parameters(), grads):
            assert_close(p.grad, g, REORDERED)
    assert recorder.recordings == 2 and len(graphed.graphs) == 2
    # without accumulation the buffers are handed over as .grad, not copied
    assert all(p.grad is b for p, b in zip(graphed.params, graphed.buffers))


def _packed_batch(rows, input_length, label_length, seed):
    """Rows of two or three examples each (train.sampling=packed's inputs), padding at the end."""
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(2, 300, (rows, input_length), generator=g),
             "labels": torch.randint(2, 300, (rows, label_length), generator=g)}
    for key, side, length in (("input_segment_ids", "input_ids", input_length),
                              ("label_segment_ids", "labels", label_length)):
        cuts = torch.randint(1, length // 3, (rows, 3), generator=g).cumsum(1)
        positions = torch.arange(length)[None, :, None]
        batch[key] = 3 - (positions < cuts[:, None, :]).sum(-1)  # 1, 2, 3, then 0 past the last cut
        batch[key][batch[key] == 3] = 0
    batch["labels"][batch["label_segment_ids"] == 0] = -100
    batch["input_ids"][batch["input_segment_ids"] == 0] = 0
    batch["attention_mask"] = (batch["input_segment_ids"] > 0).long()
    batch["decoder_input_ids"] = torch.randint(2, 300, (rows, label_length), generator=g)
    return batch


def test_replayed_packed_rows_give_the_eager_loss_and_gradients():
    from flantune.packing import forward

    model = _tiny(seed=2)
    reference = copy.deepcopy(model)
    recorder = Rerun()
    graphed = GraphedSteps(model, accumulate=False, recorder=recorder)
    for seed in (1, 2):  # one shape: the second batch replays the first's recording
        batch = _packed_batch(3, 32, 12, seed)
        model.zero_grad(set_to_none=True)
        loss = graphed.step(batch, 1.0)
        reference.zero_grad(set_to_none=True)
        want = forward(reference, batch).loss
        want.backward()
        assert loss.item() == pytest.approx(want.item(), rel=REORDERED)
        assert loss.item() != pytest.approx(reference(**{k: batch[k] for k in ("input_ids", "attention_mask",
                                                                                "labels")}).loss.item(), rel=1e-3)
        for p, q in zip(model.parameters(), reference.parameters()):
            assert_close(p.grad, q.grad, REORDERED)
    assert recorder.recordings == 1


def test_accumulated_micro_batches_sum_their_scaled_gradients():
    model = _tiny(seed=1)
    reference = copy.deepcopy(model)
    graphed = GraphedSteps(model, accumulate=True, recorder=Rerun())
    batches = [_batch(2, 16, 8, seed=4), _batch(2, 16, 8, seed=5), _batch(2, 8, 16, seed=6)]
    scales = [0.5, 0.25, torch.tensor(0.25)]  # a token share arrives as a tensor
    model.zero_grad(set_to_none=True)
    losses = [graphed.step(b, s) for b, s in zip(batches, scales)]
    want, grads = _eager_grads(reference, batches, [float(s) for s in scales])
    assert [x.item() for x in losses] == pytest.approx([x.item() for x in want], rel=REORDERED)
    for p, b, g in zip(model.parameters(), graphed.buffers, grads):
        assert p.grad is not b  # the buffers are overwritten by the next micro-batch
        assert_close(p.grad, g, REORDERED)


def test_shapes_beyond_the_limit_train_eagerly_and_a_failed_recording_stops_the_run():
    model = _tiny(seed=2)
    graphed = GraphedSteps(model, accumulate=False, max_graphs=1, recorder=Rerun())
    assert graphed.step(_batch(2, 16, 8, seed=1), 1.0) is not None
    assert graphed.step(_batch(2, 24, 8, seed=1), 1.0) is None  # a second shape: the caller trains it eagerly

    def cannot_record(fn):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    failing = GraphedSteps(model, accumulate=False, recorder=cannot_record)
    with pytest.raises(FlantuneError, match=r"CUDA graph failed \(operation not permitted when stream is "
                                            r"capturing\)\. Train without graphs: train.cuda_graphs=false"):
        failing.step(_batch(2, 16, 8, seed=1), 1.0)


def test_buckets_pad_by_at_most_an_eighth_beyond_64_tokens():
    assert [bucket(n) for n in (1, 8, 9, 64, 65, 129, 257, 512, 513)] == [8, 8, 16, 64, 72, 144, 288, 512, 576]
    assert all(bucket(n) >= n and bucket(n) - n < 8 for n in range(1, 65))
    assert max((bucket(n) - n) / n for n in range(65, 4096)) <= 1 / 8
    assert len({bucket(n) for n in range(1, 513)}) == 32


def test_padding_to_buckets_masks_what_it_adds():
    from transformers import DataCollatorForSeq2Seq

    from flantune.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    features = [{"input_ids": list(range(2, 2 + n)), "attention_mask": [1] * n, "labels": list(range(5, 5 + m))}
                for n, m in ((70, 3), (40, 9))]
    plain = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)(features)
    padded = PadToBuckets(DataCollatorForSeq2Seq(tok, label_pad_token_id=-100), tok.pad_token_id)(features)
    assert padded["input_ids"].shape == (2, 72) and padded["labels"].shape == (2, 16)
    assert torch.equal(padded["input_ids"][:, :70], plain["input_ids"])
    assert (padded["input_ids"][:, 70:] == tok.pad_token_id).all() and (padded["attention_mask"][:, 70:] == 0).all()
    assert torch.equal(padded["labels"][:, :9], plain["labels"]) and (padded["labels"][:, 9:] == -100).all()
    fixed = PadToBuckets(DataCollatorForSeq2Seq(tok, label_pad_token_id=-100), tok.pad_token_id,
                         inputs=lambda n: 128, labels=lambda n: n)(features)  # other rounding rules per side
    assert fixed["input_ids"].shape == fixed["attention_mask"].shape == (2, 128) and fixed["labels"].shape == (2, 9)
    # the model's loss doesn't see the padding
    model = _tiny(seed=5)
    with torch.no_grad():
        a = model(**{k: v % 300 if k != "labels" else v for k, v in plain.items()}).loss
        b = model(**{k: v % 300 if k != "labels" else v for k, v in padded.items()}).loss
    assert a.item() == pytest.approx(b.item(), rel=reordered(128, depth=4))  # padded: the forward's sums reordered


@pytest.mark.parametrize("kwargs, reason", [
    ({"processes": 2}, "the run has 2 processes"),
    ({"gradient_checkpointing": True}, "gradient_checkpointing=true"),
    ({"compile_blocks": True}, "train.compile=true"),
    ({"precision": "fp16"}, "precision=fp16"),
])
def test_graphs_are_refused_where_they_cannot_apply(monkeypatch, kwargs, reason):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    settings = {"precision": "bf16", "processes": 1, "gradient_checkpointing": False, "compile_blocks": False}
    assert cuda_graphs.resolve("auto", **settings) is True
    # autocast inside a recording is unmeasured: bf16-mixed gets graphs only on request
    assert cuda_graphs.resolve("auto", **{**settings, "precision": "bf16-mixed"}) is False
    assert cuda_graphs.resolve(True, **{**settings, "precision": "bf16-mixed"}) is True
    settings.update(kwargs)
    assert cuda_graphs.resolve("auto", **settings) is False
    assert cuda_graphs.resolve(False, **settings) is False
    with pytest.raises(FlantuneError, match=reason):
        cuda_graphs.resolve(True, **settings)


def test_explicit_graphs_on_cpu_are_a_clear_error(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = cli("run", "task=imdb", "model=tiny", "data_dir=@sample", "train.cuda_graphs=true",
                       f"output_dir={tmp_path / 'run'}")
    assert code == 2 and "train.cuda_graphs=true can't apply: there is no CUDA GPU" in err and "Traceback" not in err
    code, _, err = cli("run", "task=imdb", "model=tiny", "train.cuda_graphs=sometimes",
                       f"output_dir={tmp_path / 'run'}")
    assert code == 2 and "'train.cuda_graphs' is 'sometimes'; choose auto, true or false" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records real CUDA graphs: needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_cuda_graphs_match_eager_steps_on_a_gpu(dtype):
    model = _tiny(seed=7, device="cuda").to(dtype)
    reference = copy.deepcopy(model)
    graphed = GraphedSteps(model, accumulate=False)
    # fp32: a GPU's matmuls reorder their sums by tiles (and a recording may pick other kernels), as REORDERED but
    # with sums over d_ff=128 split across more threads; bf16: 8 bits of mantissa, a relative step of 2^-8 = 4e-3
    # at each of its roundings, a few of which survive: 2e-2
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for seed, shape in enumerate([(4, 64, 8), (4, 72, 8), (4, 64, 8), (4, 64, 8)]):
        batch = _batch(*shape, seed=seed, device="cuda")
        model.zero_grad(set_to_none=True)
        loss = graphed.step(batch, 1.0)
        (want,), grads = _eager_grads(reference, [batch], [1.0])
        assert loss.float().item() == pytest.approx(want.float().item(), rel=tol["rtol"])
        for p, g in zip(model.parameters(), grads):
            assert torch.allclose(p.grad.float(), g.float(), **tol)
    assert len(graphed.graphs) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records real CUDA graphs: needs a GPU")
def test_real_cuda_graphs_draw_new_dropout_masks_on_every_replay():
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=300, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
                   feed_forward_proj="gated-gelu", dropout_rate=0.3, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    model = T5ForConditionalGeneration(cfg).cuda().to(torch.bfloat16).train()
    use_fast_attention(model)
    use_fused_ops(model)
    graphed = GraphedSteps(model, accumulate=False)
    batch = _batch(4, 64, 8, seed=1, device="cuda")
    losses = []
    for shape in ((4, 64, 8), (4, 96, 16), (4, 64, 8), (4, 96, 16), (4, 64, 8)):
        step_batch = batch if shape == (4, 64, 8) else _batch(*shape, seed=2, device="cuda")
        model.zero_grad(set_to_none=True)
        loss = graphed.step(step_batch, 1.0)
        if shape == (4, 64, 8):
            losses.append(loss.item())
    assert len(graphed.graphs) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert len(set(losses)) == 3  # the same batch, three dropout masks


@pytest.mark.slow
@pytest.mark.parametrize("normalization", ["tokens", "batch"])
def test_the_trainers_replayed_steps_train_and_log_as_its_eager_ones(cli, tmp_path, monkeypatch, shared_data,
                                                                     trained_run, trained_options, normalization):
    """FlantuneTrainer's graphed step scales each batch as compute_loss does, under gradient accumulation and
    either loss normalisation: the same logged losses and gradient norms as the eager run (the stand-in
    recorder on CPU). The eager run with token normalisation (the default) is conftest's shared run; the runs
    made here evaluate less (evaluation comes after each step's log and draws nothing from the training stream)."""
    import json

    opts = [*trained_options, f"data_dir={shared_data}", f"train.loss_normalization={normalization}",
            "train.eval_steps=100", "data.max_eval_examples=4"]
    logs = {}
    for graphed in (False, True):
        if graphed or normalization != "tokens":
            with monkeypatch.context() as m:
                if graphed:
                    m.setattr(cuda_graphs, "resolve", lambda setting, **kw: True)
                    m.setattr(cuda_graphs, "CudaRecorder", Rerun)
                out = tmp_path / str(graphed)
                code, _, err = cli("run", *opts, f"output_dir={out}")
                assert code == 0, err
        else:
            out = trained_run
            assert OmegaConf.load(out / "config.yaml").train.loss_normalization == normalization
        metrics = json.loads((out / "metrics.json").read_text())
        assert ("cuda_graphs" in metrics["train"]) == graphed
        history = json.loads((out / "log_history.json").read_text())
        logs[graphed] = [(h["loss"], h["grad_norm"]) for h in history if "loss" in h]
    assert len(logs[False]) == 4
    for eager, replayed in zip(logs[False], logs[True]):
        # model=tiny (d_ff=256, 2+2 layers): 4 optimizer steps, each adding its reordered sums
        assert replayed == pytest.approx(eager, rel=4 * reordered(256, depth=8))
