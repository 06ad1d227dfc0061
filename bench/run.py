"""The CPU benchmark: `flantune run`'s training path against the plain recipes people use, on real IMDB, SAMSum
and a three-task mixture (imdb, samsum, emotion), with the same model, the same examples and the same steps;
then evaluation, caching and start-up figures. One command, tables on stdout, the numbers in JSON and the
loss-versus-seconds curves in a PNG beside it:

    python bench/run.py --data-dir ../shared/data --out bench/out/cpu.json

Recipes (each trains the tiny T5 from the same seed on the same tokenised examples with Seq2SeqTrainer):
  notebook         every input padded to max_length and every label to the target limit, random order
                   (what most FLAN-T5 fine-tuning notebooks do);
  example-script   dynamic padding with DataCollatorForSeq2Seq, random order (transformers'
                   run_summarization.py);
  group-by-length  the example script with train_sampling_strategy="group_by_length": the one line a careful
                   Hugging Face user adds, the peer to beat;
  flantune         `flantune run`'s own training path (its checks and data, its model preparation, and
                   training.train: FlantuneTrainer, its sampler, collator, loss and kernels), with its default
                   train.sampling; timed by a callback.
Every recipe's validation loss is measured every --curve-every steps on the same validation rows, with the clock
stopped: the curves, and the headline, the wall-clock seconds each recipe takes to reach a target loss (the best
loss the slowest recipe reaches in its budget of --examples; every recipe trains --beyond as many steps again, on
the same learning-rate schedule, so that a faster one can reach it later). The peer and flantune run --repeats
times in turn and keep their median run. Then flantune's samplings (length_grouped, input_length_grouped,
packed) against random batches over --orders training orders: the final validation loss's paired difference
with its 95% interval, the evidence for the default.
Each recipe runs in its own process, so its peak memory (max RSS) is its own.
`--padding-only` prints the pad fractions over whole train splits alone (about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("notebook", "example-script", "group-by-length", "flantune")
PEER = "group-by-length"  # the strongest peer: flantune's ratios are against it
DATASETS = ("imdb", "samsum", "mixture")
MIXTURE = ("imdb", "samsum", "emotion")  # the "mixture" dataset: these tasks, as many examples of each
DEFAULT_SAMPLING = "input_length_grouped"  # configs/defaults.yaml's train.sampling (length_grouped until 2026-12-03)
TOLERANCE = 1e-3  # nats: a curve within this of the target has reached it (the same data order padded otherwise
# sums in another order: the example script's loss and the notebook's differ in the sixth digit)
SAMPLINGS = ("length_grouped", "input_length_grouped", "packed")  # each against random batches, over orders


# ---- one recipe, in a child process -------------------------------------------------------------------------


def _features(task_name: str, data_dir: str, n: int, role: str, seed: int, template_seed):
    from flantune.data import load_rows
    from flantune.features import tokenize
    from flantune.registry import discover
    from flantune.tokenizer import load_tokenizer

    task = discover().get(task_name)
    tok = load_tokenizer(None)
    rows = load_rows(task, role, Path(data_dir), max_examples=n, seed=seed)
    ds = tokenize(task, rows, tok, role=role, template_seed=template_seed)
    return task, tok, ds


def _dataset_features(dataset: str, data_dir: str, n: int | None, role: str, seed: int, template_seed):
    """A dataset's tokenised rows: one task's, or the mixture's tasks' concatenated (n/3 of each)."""
    from datasets import concatenate_datasets

    if dataset != "mixture":
        return _features(dataset, data_dir, n, role, seed, template_seed)
    parts = [_features(t, data_dir, None if n is None else n // len(MIXTURE), role, seed, template_seed)
             for t in MIXTURE]
    keep = ["input_ids", "labels", "input_length", "label_length"]
    ds = concatenate_datasets([d.select_columns([c for c in keep if c in d.column_names]) for _, _, d in parts])
    return [t for t, _, _ in parts], parts[0][1], ds


def _limits(tasks) -> tuple[int, int]:
    """The input and label lengths a notebook pads every example to: the longest limits of the dataset's tasks."""
    tasks = tasks if isinstance(tasks, list) else [tasks]
    return max(t.max_input_length for t in tasks), max(t.max_target_length for t in tasks)


def _lengths(ds) -> np.ndarray:
    """(rows, 2): each tokenised example's input and label length, what the length-grouped sampler reads."""
    return np.stack([np.array(ds["input_length"]), np.array(ds["label_length"])], 1)


def validation_loss(model, ds, batch: int = 32) -> float:
    """Mean token negative log-likelihood of the targets (teacher forced)."""
    from flantune.scoring import target_nll

    labels = ds["labels"][:]
    nll = target_nll(model, ds["input_ids"][:], labels, batch_size=batch, pad_id=0, device="cpu")
    return float(nll.sum()) / sum(len(x) for x in labels)


def child(args) -> None:
    torch.set_num_threads(args.threads)
    _, _, valid = _dataset_features(args.dataset, args.data_dir, args.valid_examples, "validation", args.seed, None)
    steps = args.examples // args.batch  # one epoch of the peers' batches; the flantune rows train as many steps
    total = steps + round(steps * args.beyond)  # and on, so that a recipe can reach the target after the budget
    timer = Timer(valid, args.curve_every, steps, total)
    run = _flantune_run if args.recipe == "flantune" else _peer_run
    result, model, tok = run(args, steps, total, timer)
    seconds = result["end"][0] - result["start"][0]
    useful, padded, examples = (end - start for start, end in zip(result["start"][1:], result["end"][1:]))
    report = {
        "recipe": args.recipe, "dataset": args.dataset, "sampling": args.sampling, "seed": args.seed,
        "examples": result["examples"], "batch": result["batch"],
        "steps": steps, "total_steps": total, "timed_steps": steps - args.warmup, "seconds": seconds,
        "useful_tokens_per_s": useful / seconds, "examples_per_s": examples / seconds,
        "pad_fraction": 1 - useful / padded,
        # after the same examples in every recipe: the budget's last step, not the steps beyond it
        "validation_loss": next(c["loss"] for c in timer.curve if c["step"] == steps),
        "curve": timer.curve,
    }
    if args.save_model:
        model.save_pretrained(args.save_model)
        tok.save_pretrained(args.save_model)
    Path(args.child_out).write_text(json.dumps(report))


class Timer:
    """The recipe's clock with its validation evaluations taken out: `now()` stops while the validation loss is
    measured (every `every` steps and after the last), so the curve's seconds are training seconds alone."""

    def __init__(self, valid, every: int, steps: int, total: int):
        self.valid, self.every, self.steps, self.total = valid, every, steps, total
        self.paused = 0.0
        self.curve: list[dict] = []
        self.began: float | None = None

    def now(self) -> float:
        return time.perf_counter() - self.paused

    def measure(self, model, step: int) -> None:
        if self.began is None or not (step in (self.steps, self.total) or (self.every and step % self.every == 0)):
            return
        stopped = time.perf_counter()
        loss = validation_loss(model, self.valid)
        model.train()
        self.curve.append({"step": step, "seconds": stopped - self.paused - self.began, "loss": loss})
        self.paused += time.perf_counter() - stopped


def _clock(counts, warmup: int, steps: int, window: dict, timer: Timer, model=None):
    """A trainer callback that reads the clock and the token and example counts (`counts()`) when step `warmup`
    begins and when step `steps` ends: the timed window, the same in every recipe; and that has `timer` measure
    the validation loss when a step ends (the clock stopped meanwhile)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            timer.began = timer.now()

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == warmup:
                window["start"] = (timer.now(), *counts())

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == steps:
                window["end"] = (timer.now(), *counts())
            timer.measure(model if model is not None else kw["model"], state.global_step)

    return Clock()


def _flantune_run(args, steps: int, total: int, timer: Timer):
    """The flantune rows: `flantune run`'s own path (the prelude's checks and data, the train set, the model as a
    run loads and prepares it, and training.train: its trainer, sampler, collator, loss and kernels), with a clock
    callback. One evaluation of 8 validation rows at the end, after the timed window, is the run's own."""
    from transformers import set_seed

    from flantune import training
    from flantune.config import load_config
    from flantune.mixture import build_train_set
    from flantune.modeling import apply_method, load_model, prepare_for_training
    from flantune.prelude import check, prepare

    task = f"task=[{','.join(MIXTURE)}]" if args.dataset == "mixture" else f"task={args.dataset}"
    per_task = args.examples // len(MIXTURE) if args.dataset == "mixture" else args.examples
    cfg = load_config([task, "model=tiny", f"data_dir={args.data_dir}", f"seed={args.seed}",
                       f"data.max_train_examples={per_task}", "data.max_eval_examples=8", "eval.split=validation",
                       f"train.batch_size={args.batch}", f"train.max_steps={total}", f"train.eval_steps={total}",
                       "train.lr=1e-3", f"train.sampling={args.sampling}", "train.logging_steps=1000000",
                       f"train.loss_normalization={args.loss_normalization}", "precision=fp32", "report_to=none"])
    p = prepare(check(cfg))
    set_seed(cfg.seed)
    train_set = build_train_set(p, p.tokenizer)
    model = prepare_for_training(apply_method(load_model(cfg, cfg.seed, train=True), cfg), p.precision, False)
    window: dict = {}

    def clock(trainer):  # reads flantune's own counts (FlantuneTrainer.training_step), twice
        counts = lambda: (float(trainer.useful_tokens), float(trainer.padded_tokens), float(trainer.train_examples))
        return _clock(counts, args.warmup, steps, window, timer, trainer.model)

    out = Path(tempfile.mkdtemp())
    trained = training.train(p, out, model, p.tokenizer, train_set, p.evaluators["validation"], callbacks=[clock])
    return {**window, "examples": len(train_set.dataset), "batch": trained.step.batch}, trained.model, p.tokenizer


def _peer_run(args, steps: int, total: int, timer: Timer):
    """The peers' recipes, plain transformers: Seq2SeqTrainer on the same tokenised examples and initial weights."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, default_data_collator

    from flantune.config import load_config
    from flantune.modeling import load_model

    task, tok, train = _dataset_features(args.dataset, args.data_dir, args.examples, "train", args.seed, 0)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(train["input_ids"], train["labels"])]
    if args.recipe == "notebook":  # pad everything to the limits, as the notebooks' tokenize(padding="max_length") do
        L, T = _limits(task)
        rows = [{"input_ids": r["input_ids"] + [0] * (L - len(r["input_ids"])),
                 "attention_mask": [1] * len(r["input_ids"]) + [0] * (L - len(r["input_ids"])),
                 "labels": r["labels"] + [-100] * (T - len(r["labels"]))} for r in rows]
        collator = default_data_collator
    else:
        rows = [{**r, "attention_mask": [1] * len(r["input_ids"])} for r in rows]
        collator = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)
    model = load_model(load_config(["model=tiny"]), args.seed)  # the same initial weights in every recipe
    counted = {"useful": 0, "padded": 0, "examples": 0}

    class Trainer(Seq2SeqTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counted["useful"] += int(inputs["attention_mask"].sum()) + int((inputs["labels"] != -100).sum())
            counted["padded"] += inputs["input_ids"].numel() + inputs["labels"].numel()
            counted["examples"] += len(inputs["input_ids"])
            return super().training_step(model, inputs, num_items_in_batch)

    window: dict = {}
    targs = Seq2SeqTrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, max_steps=total, learning_rate=1e-3,
        logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to="none", seed=args.seed,
        data_seed=data_seed, disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False,
        train_sampling_strategy="group_by_length" if args.recipe == "group-by-length" else "random",
    )
    clock = _clock(lambda: (counted["useful"], counted["padded"], counted["examples"]), args.warmup, steps, window,
                   timer)
    Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator, callbacks=[clock]).train()
    return {**window, "examples": len(rows), "batch": args.batch}, model, tok


def run_child(recipe: str, dataset: str, args, *, sampling: str = DEFAULT_SAMPLING, seed: int | None = None,
              save_model: str | None = None, curve: bool = True) -> dict:
    """One recipe in a child process. curve=False (the order runs, which read only the final loss): no curve,
    no steps beyond the budget."""
    out = Path(tempfile.mkdtemp()) / "result.json"
    seed = args.seed if seed is None else seed
    cmd = [sys.executable, __file__, "--child", "--recipe", recipe, "--dataset", dataset, "--data-dir", args.data_dir,
           "--examples", str(args.examples), "--valid-examples", str(args.valid_examples), "--batch", str(args.batch),
           "--warmup", str(args.warmup), "--seed", str(seed), "--threads", str(args.threads),
           "--curve-every", str(args.curve_every if curve else 0), "--beyond", str(args.beyond if curve else 0),
           "--sampling", sampling,
           "--loss-normalization", args.loss_normalization, "--child-out", str(out)]
    cmd += ["--save-model", save_model] if save_model else []
    # stderr goes to a file, not a pipe: os.wait4 (for this child's own ru_maxrss) waits before anything reads,
    # so a child writing more than a pipe's buffer to stderr would block forever.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errfile:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errfile)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting on it again
        errfile.seek(0)
        err = errfile.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{recipe}/{dataset} failed:\n{err[-3000:]}")
    result = json.loads(out.read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def time_to_target(runs: dict[str, dict]) -> dict:
    """The target: the best validation loss the slowest recipe (fewest useful tokens/s) reaches in its budget (its
    first `steps`); then each recipe's training seconds until its curve, steps beyond the budget included, first
    reaches it, within TOLERANCE (None: never, in these steps)."""
    slowest = min(runs.values(), key=lambda r: r["useful_tokens_per_s"])
    target = min(point["loss"] for point in slowest["curve"] if point["step"] <= slowest.get("steps", point["step"]))
    reached = {name: next((c["seconds"] for c in r["curve"] if c["loss"] <= target + TOLERANCE), None)
               for name, r in runs.items()}
    return {"target_loss": target, "set_by": slowest["recipe"], "seconds": reached}


def order_effects(losses: dict[str, list[float]]) -> list[dict]:
    """Each sampling's final validation loss minus random batches', paired by training order (seed): the mean
    and its 95% t-interval over the orders (below 0: a lower loss than random batches)."""
    from scipy import stats

    random = np.array(losses["random"])
    found = []
    for sampling, values in losses.items():
        if sampling == "random":
            continue
        d = np.array(values) - random
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        found.append({"sampling": sampling, "orders": len(d), "mean_difference": float(d.mean()),
                      "ci95": [float(d.mean() - half), float(d.mean() + half)]})
    return found


def plot_curves(report: dict, path: Path) -> None:
    """Validation loss against training seconds, one panel a dataset, one line a recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in report["training"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for r in (r for r in report["training"] if r["dataset"] == dataset):
            ax.plot([c["seconds"] for c in r["curve"]], [c["loss"] for c in r["curve"]], marker=".", label=r["recipe"])
        target = report["time_to_target"][dataset]["target_loss"]
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="target loss")
        ax.set(title=dataset, xlabel="training seconds", ylabel="validation loss (nats/token)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the other figures ----------------------------------------------------------------------------------------


def padding_over_epochs(args) -> list[dict]:
    """Pad fraction of one epoch of each full train split, and of a mixture of long and short tasks."""
    from flantune.batching import LengthGroupedSampler, pad_fraction
    from flantune.step import micro_batches

    sets = {name: _lengths(_features(name, args.data_dir, None, "train", args.seed, 0)[2])
            for name in ("imdb", "samsum", "emotion")}
    tasks = {name: np.zeros(len(lens)) for name, lens in sets.items()}
    tasks["mixture imdb+samsum+emotion"] = np.repeat(np.arange(3), [len(lens) for lens in sets.values()])
    sets["mixture imdb+samsum+emotion"] = np.concatenate([sets["imdb"], sets["samsum"], sets["emotion"]])
    rows = []
    for name, lens in sets.items():
        grouped = np.fromiter(iter(LengthGroupedSampler(lens, args.batch, args.seed)), dtype=np.int64)
        shuffled = np.random.default_rng(args.seed).permutation(len(lens))
        extra = {}
        if name.startswith("mixture"):
            print_task_weights(lens, tasks[name], list(sets)[:3], shuffled, grouped, args.batch, args.seed)
            # the micro-batches a mixture's steps run as by default (train.micro_batches=auto)
            micro = args.batch // micro_batches("auto", args.batch, mixture=True, sampling="length_grouped")
            in_micro = np.fromiter(iter(LengthGroupedSampler(lens, micro, args.seed)), dtype=np.int64)
            extra = {"micro_batch": micro, "flantune_micro_batches": pad_fraction(lens, in_micro, micro)}
        by_input = []  # sorting by input length alone, as a length-grouped sampler usually does
        for start in range(0, len(shuffled), args.batch * 256):
            chunk = shuffled[start:start + args.batch * 256]
            by_input.append(chunk[np.argsort(lens[chunk, 0], kind="stable")])
        rows.append({"set": name, "examples": int(len(lens)),
                     "random": pad_fraction(lens, shuffled, args.batch),
                     "sorted_by_input": pad_fraction(lens, np.concatenate(by_input), args.batch),
                     "flantune_kd": pad_fraction(lens, grouped, args.batch),
                     **graph_shapes(lens, args.batch, args.seed),
                     **packed_padding(lens, tasks[name], shuffled, args.seed), **extra})
    return rows


def print_task_weights(lengths, tasks, names, shuffled, grouped, batch: int, seed: int) -> None:
    """Each task's share of an epoch's gradient under each batching. With train.loss_normalization=batch a
    batch's loss is the mean over its label tokens and every step counts the same, so a task's share of a
    step is its share of the batch's label tokens; with tokens every label token of the epoch weighs the
    same, so a task's share is its share of the epoch's label tokens, whatever the batching."""
    from flantune.packing import PackedPlan, row_lengths, row_shapes

    cut = lambda order: [order[i:i + batch] for i in range(0, len(order), batch)]
    def packed(input_length=None, label_length=None):
        shapes = row_shapes(lengths, tasks, input_length, label_length, seed=seed)
        plan = PackedPlan(lambda epoch: shuffled, lengths, shapes, batch_rows=batch, seed=seed)
        return [plan.examples(range(i, i + batch)) for i in range(0, plan.rows_per_epoch, batch)]

    one = row_lengths(lengths, seed=seed)  # both lengths given: rows of one shape for every task
    print(f"\neach task's share of one epoch's gradient, mixture of {' + '.join(names)} (batches of {batch})")
    for label, batches in (("random batches", cut(shuffled)), ("flantune k-d groups", cut(grouped)),
                           ("packed, a shape per task", packed()), (f"packed, rows of {one[0]} + {one[1]}", packed(*one))):
        weights = np.zeros(len(names))
        for b in batches:
            per_task = np.bincount(tasks[b].astype(np.int64), weights=lengths[b, 1], minlength=len(names))
            weights += per_task / per_task.sum()
        weights /= weights.sum()
        print(f"  {label:26s} " + "  ".join(f"{n} {w:5.1%}" for n, w in zip(names, weights)) + "  (batch)")
    tokens = np.bincount(tasks.astype(np.int64), weights=lengths[:, 1], minlength=len(names))
    print(f"  {'any of these':26s} " + "  ".join(f"{n} {w:5.1%}" for n, w in zip(names, tokens / tokens.sum()))
          + "  (tokens, the default)")


def packed_padding(lengths: np.ndarray, tasks: np.ndarray, order: np.ndarray, seed: int) -> dict:
    """train.sampling=packed at its default row lengths (one shape per task): one epoch's rows."""
    from flantune.packing import pack_rows, row_shapes

    shapes = row_shapes(lengths, tasks, seed=seed)
    rows = tokens = 0
    for k, (E, D) in enumerate(shapes.shapes):
        n = len(pack_rows(lengths, order[shapes.kind[order] == k], E, D))
        rows, tokens = rows + n, tokens + n * (E + D)
    return {"packed": 1 - lengths.sum() / tokens, "packed_rows": [list(s) for s in shapes.shapes],
            "examples_per_row": len(lengths) / rows}


def graph_shapes(lengths: np.ndarray, batch: int, seed: int) -> dict:
    """flantune's GPU path with CUDA graphs: k-d batches padded up the bucket ladder, over two epochs."""
    from flantune.cuda_graphs import bucket

    return ladder_padding(BatchTops.of(lengths, batch, seed), bucket, bucket)


@dataclass
class BatchTops:
    """The k-d batches of epochs 0 and 1, in training order: each batch's longest input and label, its
    rows and its epoch, and the useful tokens of them all."""
    tops: np.ndarray  # (batches, 2)
    rows: np.ndarray
    epoch: np.ndarray
    useful: int

    @classmethod
    def of(cls, lengths: np.ndarray, batch: int, seed: int) -> BatchTops:
        from flantune.batching import LengthGroupedSampler

        sampler = LengthGroupedSampler(lengths, batch, seed)
        batches, epochs = [], []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            batches += sampler.batches()
            epochs += [epoch] * (len(batches) - len(epochs))
        return cls(tops=np.array([lengths[b].max(axis=0) for b in batches]), rows=np.array([len(b) for b in batches]),
                   epoch=np.array(epochs), useful=int(sum(lengths[b].sum() for b in batches)))


def ladder_padding(t: BatchTops, inputs, labels, max_graphs: int = 64) -> dict:
    """The batches padded to the lengths `inputs` and `labels` round their longest to: the pad fraction, the
    distinct batch shapes, and the share of batches whose shape is among the first `max_graphs` (those
    replay a graph; the rest train eagerly)."""
    shapes: dict[tuple, int] = {}  # shape -> batches, in order of first use
    padded = 0
    for (top_in, top_label), rows in zip(t.tops.tolist(), t.rows.tolist()):
        shape = (rows, int(inputs(top_in)), int(labels(top_label)))
        shapes[shape] = shapes.get(shape, 0) + 1
        padded += rows * (shape[1] + shape[2])
    counts = list(shapes.values())
    return {"graphs_ladder": 1 - t.useful / padded, "graph_shapes": len(shapes),
            "graphed_batches": sum(counts[:max_graphs]) / sum(counts)}


def rank_vs_generate(model_dir: str, args) -> list[dict]:
    from transformers import AutoModelForSeq2SeqLM

    from flantune.evaluation import EvalSet, Evaluator

    torch.set_num_threads(args.threads)
    task, tok, test = _features("imdb", args.data_dir, args.valid_examples, "test", args.seed, None)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    best: dict[str, float] = {}
    metrics: dict[str, dict] = {}
    # Alternate the two modes and keep each one's faster pass, so neither pays for a cold start.
    for mode in ("rank", "generate", "rank", "generate"):
        start = time.perf_counter()
        r = Evaluator([EvalSet(task, test)], tok, classify=mode, rank_score="sum", batch_size=32,
                      num_beams=1).run(model)
        best[mode] = min(best.get(mode, float("inf")), time.perf_counter() - start)
        metrics[mode] = r.tasks["imdb"].metrics
    return [{"mode": mode, "examples": len(test), "examples_per_s": len(test) / best[mode],
             "accuracy": metrics[mode]["accuracy"], "invalid": metrics[mode].get("invalid", 0.0)}
            for mode in ("rank", "generate")]


def tokenisation_cache(args) -> dict:
    """Two identical `flantune run`s over all of IMDB's train split with a fresh datasets cache."""
    cache = tempfile.mkdtemp()
    env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    prep = []
    for _ in range(2):
        out = Path(tempfile.mkdtemp()) / "run"
        subprocess.run([sys.executable, "-m", "flantune", "run", "task=imdb", "model=tiny", f"data_dir={args.data_dir}",
                        "train.max_steps=1", "train.eval_steps=1", "data.max_eval_examples=50", f"output_dir={out}"],
                       check=True, capture_output=True, env=env)
        prep.append(json.loads((out / "metrics.json").read_text())["data_prep_seconds"])
    return {"first_run_s": prep[0], "second_run_s": prep[1], "speedup": prep[0] / prep[1]}


def tasks_command_seconds() -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flantune", "tasks"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- main ---------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--examples", type=int, default=1600, help="training examples per recipe and dataset")
    ap.add_argument("--valid-examples", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "cpu.json"))
    ap.add_argument("--padding-only", action="store_true", help="only the pad fractions over whole train splits")
    ap.add_argument("--markdown", metavar="JSON", help="print a saved run's training table in Markdown, and stop")
    ap.add_argument("--training-only", action="store_true",
                    help="only the training recipes and orders (no padding, evaluation, cache or start-up figures)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loss-normalization", default="tokens", choices=("tokens", "batch"),
                    help="flantune's train.loss_normalization in the flantune recipes")
    ap.add_argument("--curve-every", type=int, default=20, help="steps between validation losses on the curves")
    ap.add_argument("--beyond", type=float, default=0.5,
                    help="the recipes train this share of their steps past the common budget (same learning-rate "
                         "schedule in each), so that a faster one can reach the target loss after the budget")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the peer and of flantune, in turn (median kept)")
    ap.add_argument("--orders", type=int, default=4, help="training orders (seeds) each sampling is compared over")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--samplings", nargs="+", default=list(SAMPLINGS), choices=SAMPLINGS,
                    help="flantune's samplings compared with random batches over the orders")
    ap.add_argument("--sampling", default=DEFAULT_SAMPLING, choices=(*SAMPLINGS, "random"),
                    help=argparse.SUPPRESS)  # the flantune recipe's
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--save-model", help=argparse.SUPPRESS)
    ap.add_argument("--data-seed", type=int, help="with --child: the seed of the training order (default --seed)")
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return
    if args.markdown:  # the lead table of a saved run, for bench/RESULTS.md and the README
        print(markdown_table(json.loads(Path(args.markdown).read_text())))
        return
    if args.padding_only:  # the padding table alone: a minute, no training
        print_padding(padding_over_epochs(args), args.batch)
        return

    report: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                    "args": vars(args),
                    "training": [], "time_to_target": {}, "orders": {}}
    model_dir = tempfile.mkdtemp()
    for dataset in args.datasets:
        # The peer and flantune run --repeats times, in turn, and each keeps its median run (by tokens/s: its
        # speed, curve and seconds to the target): this machine's speed drifts by 10-30% from minute to minute.
        # The same seed and examples give the same losses in every repeat.
        tries: dict[str, list[dict]] = {recipe: [] for recipe in RECIPES}
        for round_ in range(args.repeats):
            for recipe in RECIPES:
                if round_ and recipe not in (PEER, "flantune"):
                    continue
                save = model_dir if (dataset, recipe, round_) == ("imdb", "flantune", 0) else None
                tries[recipe].append(r := run_child(recipe, dataset, args, save_model=save))
                print(f"  {dataset:8s} {recipe:16s} {r['useful_tokens_per_s']:9,.0f} tok/s  loss "
                      f"{r['validation_loss']:.4f}", flush=True)
        runs = {}
        for recipe, done in tries.items():
            runs[recipe] = r = sorted(done, key=lambda t: t["useful_tokens_per_s"])[len(done) // 2]
            r["repeats_tokens_per_s"] = [t["useful_tokens_per_s"] for t in done]
            report["training"].append(r)
        report["time_to_target"][dataset] = time_to_target(runs)
        losses = {s: [] for s in (*args.samplings, "random")}
        speeds: dict[str, list[float]] = {s: [] for s in losses}
        for seed in range(args.seed, args.seed + args.orders):
            for sampling in losses:
                reuse = (sampling, seed, args.beyond) == (DEFAULT_SAMPLING, args.seed, 0)  # the same run
                r = runs["flantune"] if reuse else run_child("flantune", dataset, args, sampling=sampling, seed=seed,
                                                             curve=False)
                losses[sampling].append(r["validation_loss"])
                speeds[sampling].append(r["useful_tokens_per_s"])
                print(f"  {dataset:8s} flantune {sampling:20s} order {seed}: loss {r['validation_loss']:.4f}", flush=True)
        report["orders"][dataset] = {"losses": losses, "useful_tokens_per_s": speeds,
                                     "differences": order_effects(losses)}
    if not args.training_only:
        report["padding"] = padding_over_epochs(args)
        report["evaluation"] = rank_vs_generate(model_dir, args) if "imdb" in args.datasets else []
        report["cache"] = tokenisation_cache(args)
        report["tasks_command_s"] = tasks_command_seconds()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    plot_curves(report, out.with_suffix(".png"))
    print_report(report)
    print(f"\ncurves: {out.with_suffix('.png')}")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() else "CPU"
    return f"{os.cpu_count()} cores of {model}"


def flantune_ratios(report: dict, by: dict, dataset: str, recipe: str) -> tuple[str, str]:
    """flantune's useful tokens/s over `recipe`'s, and `recipe`'s seconds to the target over flantune's, as text
    ("" on flantune's own row, "-" where either never reached the target)."""
    if recipe == "flantune":
        return "", ""
    ours, r = by[(dataset, "flantune")], by[(dataset, recipe)]
    reached = report["time_to_target"][dataset]["seconds"]
    mine, theirs = reached["flantune"], reached[recipe]
    return (f"{ours['useful_tokens_per_s'] / r['useful_tokens_per_s']:.2f}",
            "-" if not mine or not theirs else f"{theirs / mine:.2f}")


def markdown_table(report: dict) -> str:
    """The training table as bench/RESULTS.md and the README show it: each recipe's speed, padding, memory and
    loss after the same examples, its seconds to the target loss, and flantune's ratios to it."""
    by = {(r["dataset"], r["recipe"]): r for r in report["training"]}
    lines = ["| data | recipe | useful tokens/s (runs' range) | examples/s | padding | peak RSS | validation loss | seconds to "
             "target loss | flantune: x tokens/s | x time to target |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (dataset, recipe), r in by.items():
        theirs = report["time_to_target"][dataset]["seconds"][recipe]
        speed, quicker = flantune_ratios(report, by, dataset, recipe)
        name = {"flantune": f"**flantune run** ({r['sampling']})", PEER: f"{recipe} (the peer)"}.get(recipe, recipe)
        each = r.get("repeats_tokens_per_s", [])
        spread = f" ({min(each):,.0f}-{max(each):,.0f})" if len(each) > 1 else ""
        lines.append(f"| {dataset} | {name} | {r['useful_tokens_per_s']:,.0f}{spread} | {r['examples_per_s']:.1f} | "
                     f"{r['pad_fraction']:.1%} | {r['peak_rss_mib']:,.0f} MiB | {r['validation_loss']:.4f} | "
                     f"{'not reached' if theirs is None else f'{theirs:.1f}'} | {speed} | {quicker} |")
    targets = "; ".join(f"{d} {t['target_loss']:.4f}" for d, t in report["time_to_target"].items())
    lines.append(f"\nTarget losses (the best the slowest recipe reached in its budget): {targets}.\n")
    lines += ["| data | flantune's sampling | useful tokens/s (mean over orders) | validation loss, each order | "
              "minus random batches' [95% interval] |", "|---|---|---:|---|---:|"]
    for dataset, o in report["orders"].items():
        found = {d["sampling"]: d for d in o["differences"]}
        for sampling, losses in o["losses"].items():
            speed = statistics.mean(o.get("useful_tokens_per_s", {}).get(sampling) or [float("nan")])
            d = found.get(sampling)
            diff = "" if d is None else f"{d['mean_difference']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
            lines.append(f"| {dataset} | {sampling} | {speed:,.0f} | {', '.join(f'{x:.4f}' for x in losses)} | "
                         f"{diff} |")
    return "\n".join(lines)


def print_report(report: dict) -> None:
    print(f"\ntraining, tiny T5, batch {report['args']['batch']}, {report['args']['examples']} examples per run "
          f"({report['machine']})")
    print(f"{'data':8s} {'recipe':16s} {'useful tok/s':>12s} {'ex/s':>7s} {'pad':>6s} {'RSS MiB':>8s} "
          f"{'val loss':>9s} {'to target':>9s} {'flantune x tok/s':>16s} {'x time':>7s}")
    by = {(r["dataset"], r["recipe"]): r for r in report["training"]}
    for (dataset, recipe), r in by.items():
        theirs = report["time_to_target"][dataset]["seconds"][recipe]
        speed, quicker = flantune_ratios(report, by, dataset, recipe)
        print(f"{dataset:8s} {recipe:16s} {r['useful_tokens_per_s']:12,.0f} {r['examples_per_s']:7.1f} "
              f"{r['pad_fraction']:6.1%} {r['peak_rss_mib']:8.0f} {r['validation_loss']:9.4f} "
              f"{'-' if theirs is None else f'{theirs:.1f} s':>9s} {speed:>16s} {quicker:>7s}")
    for dataset, t in report["time_to_target"].items():
        print(f"  {dataset}: target loss {t['target_loss']:.4f} (the best {t['set_by']} reached)")
    print("\nflantune's samplings against random batches: final validation loss difference (95% interval over orders)")
    for dataset, o in report["orders"].items():
        for d in o["differences"]:
            print(f"  {dataset:8s} {d['sampling']:20s} {d['mean_difference']:+.4f} "
                  f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] over {d['orders']} orders")
    if "padding" not in report:  # --training-only
        return
    print_padding(report["padding"], report["args"]["batch"])
    print("\nimdb classification, the flantune-trained model above")
    for e in report["evaluation"]:
        print(f"  {e['mode']:9s} {e['examples_per_s']:7.1f} examples/s  accuracy {e['accuracy']:5.1f}  "
              f"invalid {e['invalid']:5.1f}%")
    c = report["cache"]
    print(f"\ndata preparation, all of IMDB train: first run {c['first_run_s']:.1f} s, second run "
          f"{c['second_run_s']:.2f} s ({c['speedup']:.0f}x)")
    print(f"`flantune tasks`: {report['tasks_command_s']:.2f} s (median of 5, Python start-up included)")


def print_padding(padding: list[dict], batch: int) -> None:
    print(f"\npad fraction over one epoch of the whole train split (batch {batch})")
    for p in padding:
        print(f"  {p['set']:28s} {p['examples']:7,d} examples: random {p['random']:6.1%}  sorted by input "
              f"{p['sorted_by_input']:6.1%}  flantune {p['flantune_kd']:6.1%}  GPU graph ladder over 2 epochs "
              f"{p['graphs_ladder']:6.1%} ({p['graph_shapes']} shapes, {p['graphed_batches']:.1%} of batches graphed)  "
              f"packed {p['packed']:6.1%} (rows of {', '.join(f'{E} + {D}' for E, D in p['packed_rows'])} tokens, "
              f"{p['examples_per_row']:.1f} examples each, {len(p['packed_rows'])} shape(s))"
              + (f"  flantune's micro-batches of {p['micro_batch']} {p['flantune_micro_batches']:6.1%}"
                 if "micro_batch" in p else ""))


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
