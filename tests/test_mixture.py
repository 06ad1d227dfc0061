"""Task mixtures: T5-style mixing rates, realised proportions on real data, a three-task run, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flantune.data import load_rows
from flantune.errors import FlantuneError
from flantune.mixture import TrainSet, epoch_counts, expand_mixture, mixing_rates
from flantune.registry import discover

SCHEMES = [
    {"scheme": "proportional"},
    {"scheme": "proportional", "cap": 3000},
    {"scheme": "temperature", "temperature": 2.0},
    {"scheme": "temperature", "temperature": 2.0, "cap": 10000},
    {"scheme": "equal"},
    {"scheme": "weights", "weights": {"imdb": 1.0, "emotion": 0.0, "samsum": 3.0, "squad": 2.0, "mlqa_hi_en": 1.0}},
]


@pytest.fixture(scope="module")
def real_sizes(shared_data) -> dict[str, int]:
    """Train sizes of five real tasks in the mirror (squad's train carved from its validation split)."""
    reg = discover()
    tasks = {n: reg.get(n) for n in ("imdb", "emotion", "samsum", "mlqa_hi_en")}
    tasks["squad"] = reg.get("squad").with_overrides({"splits": {"train": "validation[:80%]"}})
    return {n: len(load_rows(t, "train", shared_data)) for n, t in tasks.items()}


def _train_set(sizes: dict[str, int], mixing: dict, seed: int = 0, sampling: str = "random") -> TrainSet:
    rates = mixing_rates(sizes, **mixing)
    cap = mixing.get("cap")
    total = sum(min(n, cap) if cap else n for n in sizes.values())
    offsets = dict(zip(sizes, np.cumsum([0, *sizes.values()])[:-1].tolist()))
    rng = np.random.default_rng(1)  # lengths only matter to the grouped sampler's order
    lengths = np.stack([rng.integers(5, 500, sum(sizes.values())), rng.integers(1, 60, sum(sizes.values()))], 1)
    return TrainSet(dataset=None, offsets=offsets, sizes=sizes, rates=rates, counts=epoch_counts(rates, total),
                    seed=seed, sampling=sampling, lengths=lengths, mixing=mixing)


def test_rates_follow_the_t5_definitions(real_sizes):
    n = real_sizes
    assert n == {"imdb": 24000, "emotion": 16000, "samsum": 14732, "mlqa_hi_en": 407, "squad": 8456}
    prop = mixing_rates(n, "proportional")
    assert prop["imdb"] == pytest.approx(24000 / sum(n.values()))
    capped = mixing_rates(n, "proportional", cap=3000)  # 3000 * 4 + 407
    assert capped["imdb"] == pytest.approx(3000 / 12407) and capped["mlqa_hi_en"] == pytest.approx(407 / 12407)
    temp = mixing_rates(n, "temperature", temperature=2.0)
    z = sum(v ** 0.5 for v in n.values())
    assert temp["emotion"] == pytest.approx(16000 ** 0.5 / z)
    assert mixing_rates(n, "temperature", temperature=1.0) == pytest.approx(prop)
    assert all(r == pytest.approx(0.2) for r in mixing_rates(n, "equal").values())


@pytest.mark.parametrize("mixing", SCHEMES, ids=[str(m) for m in SCHEMES])
@pytest.mark.parametrize("sampling", ["random", "length_grouped"])
def test_realised_proportions_match_the_requested_rates(real_sizes, mixing, sampling):
    ts = _train_set(real_sizes, mixing, sampling=sampling)
    names = list(real_sizes)
    batch = 16
    sampler = ts.sampler(batch)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        rows = np.fromiter(iter(sampler), dtype=np.int64)
        assert len(rows) == ts.epoch_size
        realised = np.bincount(ts.task_of(rows), minlength=len(names)) / len(rows)
        # A whole epoch: the rates up to rounding to whole examples (largest remainder: < 1 example).
        for t, r in zip(names, realised):
            assert abs(r - ts.rates[t]) <= 1.0 / len(rows) + 1e-12, (t, r, ts.rates[t])
        # Any prefix of 4,000 examples (250 batches): within 4 standard errors of a random draw; batches,
        # not examples, are the units of a length-grouped stream, so its error is counted per batch.
        prefix = rows[:4000]
        part = np.bincount(ts.task_of(prefix), minlength=len(names)) / len(prefix)
        units = len(prefix) / (batch if sampling == "length_grouped" else 1)
        for t, r in zip(names, part):
            tol = 4 * np.sqrt(ts.rates[t] * (1 - ts.rates[t]) / units) + 1e-9
            assert abs(r - ts.rates[t]) <= tol, (t, r, ts.rates[t], tol)


def test_a_small_task_repeats_as_rarely_as_possible_and_a_large_one_shows_new_rows(real_sizes):
    ts = _train_set(real_sizes, {"scheme": "equal"})
    e0, e1 = ts.epoch_stream(0), ts.epoch_stream(1)
    mlqa = lambda rows: rows[ts.task_of(rows) == list(real_sizes).index("mlqa_hi_en")]  # noqa: E731
    imdb = lambda rows: rows[ts.task_of(rows) == 0]  # noqa: E731
    counts = np.bincount(mlqa(e0) - ts.offsets["mlqa_hi_en"])
    assert counts.max() - counts.min() <= 1  # 407 rows drawn ~ts.counts times: each equally often
    # imdb is down-sampled (12,719 of 24,000 rows an epoch): the second epoch continues through rows the
    # first did not show, and only wraps around for the 2 * 12,719 - 24,000 = 1,438 rows beyond them.
    assert ts.counts["imdb"] == 12719
    assert len(set(imdb(e0)) & set(imdb(e1))) <= 2 * 12719 - 24000


def test_sampling_is_seeded(real_sizes):
    a = _train_set(real_sizes, {"scheme": "proportional", "cap": 3000}, seed=5)
    b = _train_set(real_sizes, {"scheme": "proportional", "cap": 3000}, seed=5)
    c = _train_set(real_sizes, {"scheme": "proportional", "cap": 3000}, seed=6)
    assert np.array_equal(a.epoch_stream(3), b.epoch_stream(3))
    assert not np.array_equal(a.epoch_stream(3), c.epoch_stream(3))



def _side_pad(lengths: np.ndarray, batches: list[np.ndarray], side: int) -> float:
    sides = [lengths[b, side] for b in batches]
    return 1 - sum(x.sum() for x in sides) / sum(x.max() * len(x) for x in sides)


def test_input_length_grouping_ignores_the_labels():
    """train.sampling=input_length_grouped batches by input length alone (what bench/RESULTS.md found keeps a
    summarisation task's validation loss at random batches'); length_grouped trades some input padding for
    far less label padding."""
    sizes = {"samsum": 4000}
    kd, by_input = (_train_set(sizes, {"scheme": "proportional"}, sampling=s) for s in ("length_grouped", "input_length_grouped"))
    batches = by_input.sampler(16).batches()
    by_input.lengths[:, 1] = np.random.default_rng(7).permutation(by_input.lengths[:, 1])
    assert all(np.array_equal(a, b) for a, b in zip(batches, by_input.sampler(16).batches()))
    kd_batches = kd.sampler(16).batches()
    lengths = kd.lengths
    assert _side_pad(lengths, batches, 0) < _side_pad(lengths, kd_batches, 0)
    assert _side_pad(lengths, kd_batches, 1) < _side_pad(lengths, batches, 1) / 2

def test_named_mixtures_and_includes():
    tasks, _ = expand_mixture("flan8")
    assert tasks == ["imdb", "emotion", "paws", "squad", "squad_qg", "paws_paraphrase", "samsum", "mlqa_hi_en"]
    assert expand_mixture("three_kinds")[0] == ["imdb", "squad", "samsum"]


THREE = ["mixture=three_kinds", "model=tiny", "train.max_steps=24", "train.eval_steps=12",
         "data.max_train_examples=200", "data.max_eval_examples=16", "tasks.imdb.max_input_length=96",
         "tasks.squad.max_input_length=96", "tasks.samsum.max_input_length=96", "tasks.samsum.max_new_tokens=8",
         "tasks.squad.max_new_tokens=8", "tasks.squad.splits.train=validation[:80%]",
         "tasks.squad.splits.validation=validation[80%:90%]", "tasks.squad.splits.test=validation[90%:]"]


@pytest.mark.slow
def test_three_task_mixture_run_writes_per_task_results(cli, tmp_path, shared_data):
    out = tmp_path / "run"
    code, stdout, err = cli("run", *THREE, f"data_dir={shared_data}", f"output_dir={out}")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"imdb", "squad", "samsum"}
    assert "accuracy" in metrics["tasks"]["imdb"] and "f1" in metrics["tasks"]["squad"]
    assert "rougeL" in metrics["tasks"]["samsum"]
    primaries = [metrics["tasks"]["imdb"]["accuracy"], metrics["tasks"]["squad"]["f1"],
                 metrics["tasks"]["samsum"]["rougeL"]]
    assert metrics["score"] == pytest.approx(np.mean(primaries))
    for task in ("imdb", "squad", "samsum"):
        assert len((out / "predictions" / f"{task}.jsonl").read_text().strip().split("\n")) == 16
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["mixing"]["scheme"] == "temperature"
    assert sum(mixture["examples_seen"].values()) == 24 * 16
    assert set(mixture["requested_rates"]) == {"imdb", "squad", "samsum"}
    assert "realised mixture" in stdout and "examples seen" in stdout
    # The validation metrics of every task are logged, and the best checkpoint is chosen by their mean.
    history = json.loads((out / "log_history.json").read_text())
    evals = [h for h in history if "eval_score" in h]
    assert evals and all({"eval_imdb/accuracy", "eval_squad/f1", "eval_samsum/rougeL"} <= set(h) for h in evals)
    train = metrics["train"]
    assert train["pad_fraction"] < train["pad_fraction_random_batching"]


def _mixture_file(tmp_path, text: str) -> str:
    path = tmp_path / "mix.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("options, message", [
    (["task=[imdb,imbd]"], "Unknown task 'imbd'. Did you mean 'imdb'?"),
    (["task=[imdb,samsum]", "mixing.scheme=weights", "mixing.weights.imdb=-1", "mixing.weights.samsum=1"],
     "mixing.weights must be numbers >= 0"),
    (["task=[imdb,samsum]", "mixing.scheme=weights", "mixing.weights.imdb=0", "mixing.weights.samsum=0"],
     "The mixing weights are all zero"),
    (["task=[imdb,samsum]", "mixing.scheme=temperature", "mixing.temperature=0"], "mixing.temperature is 0.0"),
    (["task=[imdb,samsum]", "mixing.scheme=temprature"], "Did you mean 'temperature'?"),
    (["task=[imdb,samsum]", "mixing.scheme=weights", "mixing.weights.imdb=1"], "missing: samsum"),
])
def test_bad_mixture_input(cli, tmp_path, options, message):
    code, _, err = cli("run", "model=tiny", "data_dir=@sample", f"output_dir={tmp_path / 'run'}", *options)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_mixture_files(cli, tmp_path):
    bad_key = _mixture_file(tmp_path, "tasks: [imdb, samsum]\nmixng: {scheme: equal}\n")
    code, _, err = cli("config", f"mixture={bad_key}")
    assert code == 2 and "unknown key 'mixng'" in err and "Did you mean 'mixing'?" in err
    unknown_task = _mixture_file(tmp_path, "tasks: [imdb, samsom]\n")
    code, _, err = cli("run", f"mixture={unknown_task}", "model=tiny", "data_dir=@sample")
    assert code == 2 and "Unknown task 'samsom'. Did you mean 'samsum'?" in err
    (tmp_path / "a.yaml").write_text("tasks: [imdb]\ninclude: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("tasks: [samsum]\ninclude: [a.yaml]\n")
    code, _, err = cli("config", f"mixture={tmp_path / 'a.yaml'}")
    assert code == 2 and "Mixture 'a' includes itself: a -> b -> a" in err
    code, _, err = cli("config", "mixture=flan9")
    assert code == 2 and "Did you mean 'flan8'?" in err
    with pytest.raises(FlantuneError, match="must be > 0"):
        mixing_rates({"a": 1, "b": 2}, "temperature", temperature=-1.0)


def _epoch_losses(cli, out, monkeypatch, shared_data, *options: str) -> dict:
    """One epoch of a 3-task mixture at a learning rate too small to move the weights, with every training batch's
    mean token loss and label tokens, as the training loss scores them, and the loss its backward pass took:
    the mean times the gradient that reached it (what the step's loss multiplied it by)."""
    from flantune import training

    seen = []
    score = training.summed_cross_entropy

    def probe(logits, labels):
        summed = score(logits, labels)
        tokens = int((labels != -100).sum())
        mean = float(summed.detach()) / tokens
        # d(loss)/d(mean) = d(loss)/d(summed) x tokens
        summed.register_hook(lambda grad: seen.append((mean, tokens, mean * float(grad) * tokens)))
        return summed

    monkeypatch.setattr(training, "summed_cross_entropy", probe)
    code, text, err = cli("run", "task=[imdb,samsum,emotion]", "model=tiny", "data.max_train_examples=40",
                          "data.max_eval_examples=4", "tasks.imdb.max_input_length=64",
                          "tasks.samsum.max_input_length=64", "train.batch_size=8", "train.lr=1e-12", "train.epochs=1",
                          # no evaluation before the end (the losses are the training batches'), short generations
                          "train.eval_steps=1000", "tasks.samsum.max_new_tokens=4",
                          f"data_dir={shared_data}", f"output_dir={out}", *options)
    assert code == 0, err
    mean, tokens, trained = (np.array(v) for v in zip(*seen))
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    return {"token_mean": float((mean * tokens).sum() / tokens.sum()),
            "objective": float(trained.sum() / metrics["train"]["steps"]),
            "logged": next(h["train_loss"] for h in history if "train_loss" in h), "tokens": int(tokens.sum()),
            "trained_sum": float(trained.sum()), "batches": len(seen), "seen": list(seen),
            "mixture": json.loads((out / "mixture.json").read_text()), "step": metrics["step"], "text": text}


@pytest.mark.slow
def test_the_sampling_does_not_reweight_a_mixtures_tasks(cli, tmp_path, monkeypatch, shared_data):
    """train.loss_normalization=tokens: an epoch's loss is its token mean whether batches are random, grouped by
    length or packed by task, so grouping or packing a mixture doesn't change how much each task weighs. With
    each batch's mean (batch), grouped batches weight the tasks by their batches instead: imdb's and emotion's
    batches of two-token labels count as much as samsum's of 25. Either way a step logs its token mean."""
    runs = {s: _epoch_losses(cli, tmp_path / s, monkeypatch, shared_data, f"train.sampling={s}")
            for s in ("random", "length_grouped")}
    runs["packed"] = _epoch_losses(cli, tmp_path / "packed", monkeypatch, shared_data, "train.sampling=packed",
                                   "train.packed_rows_per_batch=1")  # every row a batch: no row waits for an epoch
    mean = runs["random"]["token_mean"]
    for sampling, run in runs.items():
        assert run["tokens"] == runs["random"]["tokens"], sampling  # the same examples
        assert run["token_mean"] == pytest.approx(mean, rel=1e-5), sampling
        assert run["objective"] == pytest.approx(mean, rel=1e-5), sampling
    # 15 batches of 8 in steps of 2: the last step's one batch keeps the same count
    accumulated = _epoch_losses(cli, tmp_path / "accum", monkeypatch, shared_data, "train.grad_accum=2",
                                "train.micro_batches=1")
    assert accumulated["batches"] == 15
    assert accumulated["trained_sum"] == pytest.approx(mean * 15 / 2, rel=1e-5)
    # by default (train.micro_batches=auto) a grouped mixture's batch of 8 runs as 2 micro-batches of 4: 30 in
    # steps of 4, and the epoch still trains on its token mean
    micro = _epoch_losses(cli, tmp_path / "micro", monkeypatch, shared_data, "train.grad_accum=2")
    assert micro["batches"] == 30
    assert micro["trained_sum"] == pytest.approx(mean * 30 / 4, rel=1e-5)
    batch_mean = _epoch_losses(cli, tmp_path / "batch", monkeypatch, shared_data, "train.sampling=length_grouped",
                               "train.loss_normalization=batch")
    assert batch_mean["token_mean"] == pytest.approx(mean, rel=1e-5)
    assert abs(batch_mean["objective"] / mean - 1) > 1e-3  # 0.4% apart here
    assert batch_mean["logged"] == pytest.approx(runs["length_grouped"]["logged"], rel=1e-6)


@pytest.mark.slow
def test_micro_batches_are_the_steps_of_smaller_batches_accumulated(cli, tmp_path, monkeypatch, shared_data):
    """train.micro_batches=auto runs a grouped mixture's batch of 8 as 2 micro-batches of 4: the same micro-batches
    and trained losses as train.batch_size=4 train.grad_accum=2, and steps that hold more of the tasks than
    whole batches of one task each."""
    auto = _epoch_losses(cli, tmp_path / "auto", monkeypatch, shared_data)
    by_hand = _epoch_losses(cli, tmp_path / "hand", monkeypatch, shared_data, "train.batch_size=4",
                            "train.grad_accum=2", "train.micro_batches=1")
    whole = _epoch_losses(cli, tmp_path / "whole", monkeypatch, shared_data, "train.micro_batches=1")
    assert auto["seen"] == by_hand["seen"] and len(auto["seen"]) == 30
    assert auto["mixture"]["tasks_per_step"] == by_hand["mixture"]["tasks_per_step"]
    assert auto["mixture"]["tasks_per_step"] > whole["mixture"]["tasks_per_step"]
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["step"]["micro_batches"] == 2
    # metrics.json's step and the summary say so; the step by hand is the same step, its batches whole
    same = ("unit", "micro_batch", "accumulation", "processes", "global_batch", "label_tokens")
    assert {k: auto["step"][k] for k in same} == {k: by_hand["step"][k] for k in same}
    assert [auto["step"][k] for k in ("batch", "micro_batches", "grad_accum", "global_batch")] == [8, 2, 1, 8]
    assert "a step: 1 batch of 8 examples a process, run as 2 micro-batches of 4" in auto["text"]


def test_auto_micro_batches_split_only_a_mixtures_one_task_batches():
    from flantune.step import micro_batches

    assert micro_batches("auto", 16, mixture=True, sampling="length_grouped") == 4  # 4 of 4
    assert micro_batches("auto", 64, mixture=True, sampling="length_grouped") == 4  # 4 of 16
    assert micro_batches("auto", 12, mixture=True, sampling="packed") == 3  # 3 of 4 rows
    assert micro_batches("auto", 10, mixture=True, sampling="length_grouped") == 2  # 2 of 5
    assert micro_batches("auto", 8, mixture=True, sampling="length_grouped") == 2  # 2 of 4
    assert micro_batches("auto", 7, mixture=True, sampling="length_grouped") == 1  # no even split into 4 or more
    assert micro_batches("auto", 6, mixture=True, sampling="length_grouped") == 1
    assert micro_batches("auto", 16, mixture=True, sampling="random") == 1  # random batches mix tasks
    assert micro_batches("auto", 16, mixture=False, sampling="length_grouped") == 1
    assert micro_batches(8, 16, mixture=False, sampling="length_grouped") == 8
    with pytest.raises(FlantuneError, match="does not divide the 9 rows"):
        micro_batches(2, 9, mixture=True, sampling="packed")


def test_the_report_counts_the_tasks_a_step_held():
    """Three tasks apart in length: grouped batches of 16 hold one task each, micro-batches of 4 in steps of 16
    hold several, and random batches nearly always all three."""
    sizes = {"long": 400, "summary": 400, "short": 400}
    mixing = {"scheme": "proportional"}
    rng = np.random.default_rng(0)
    lengths = np.concatenate([np.stack([rng.integers(lo, hi, 400), rng.integers(a, b, 400)], 1)
                              for lo, hi, a, b in ((300, 512, 1, 3), (80, 250, 10, 60), (10, 40, 1, 3))])
    grouped = _train_set(sizes, mixing, sampling="length_grouped")
    grouped.lengths = lengths
    random = _train_set(sizes, mixing, sampling="random")
    one_task = grouped.report(1200, 16, 16)["tasks_per_step"]
    mixed = grouped.report(1200, 4, 16)["tasks_per_step"]
    shuffled = random.report(1200, 16, 16)["tasks_per_step"]
    assert one_task < 1.2 < 2.2 < mixed < shuffled
    assert sum(grouped.report(1200, 4, 16)["examples_seen"].values()) == 1200
