"""The CPU benchmark: flantune's training path against the two plain recipes people use, on real IMDB and
SAMSum data with the same model, the same examples and the same steps; then evaluation, caching and
start-up figures. One command, a table on stdout and the numbers in JSON:

    python bench/run.py --data-dir ../shared/data --out bench/out/cpu.json

Recipes (each trains the tiny T5 from the same seed on the same tokenised examples with Seq2SeqTrainer):
  notebook        every input padded to max_length and every label to the target limit, random order
                  (what most FLAN-T5 fine-tuning notebooks do);
  example-script  dynamic padding with DataCollatorForSeq2Seq, random order (transformers'
                  run_summarization.py);
  flantune        `flantune run`'s own training path (its checks and data, its model preparation, and
                  training.train: FlantuneTrainer, its sampler, collator, loss and kernels): length-grouped
                  (k-d) batches, T5's bias on fused SDPA, fused RMSNorm and GELU, no key/value cache while
                  training; timed by a callback, with the run's one evaluation after the timed window.
Three more rows read the validation losses: the example script with another random order (the noise between
orders), flantune with batches grouped by input length alone (train.sampling=input_length_grouped), and
flantune with packed rows (train.sampling=packed: whole rows a batch that hold train.batch_size examples, as
a run takes them; as many steps as the others).
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
RECIPES = ("notebook", "example-script", "flantune")
# The example-script recipe again with another data order: the spread of validation losses between two
# random orders is the noise a "same validation loss" comparison has to be read against.
ORDER_CHECK = "example-script, 2nd order"
# flantune with train.sampling=input_length_grouped: batches of similar input length, labels mixed
INPUT_GROUPED = "flantune, input lengths"
# flantune with train.sampling=packed: several examples per row, rows of one shape; as many batches as the others
PACKED = "flantune, packed"
DATASETS = ("imdb", "samsum")


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
    _, _, valid = _features(args.dataset, args.data_dir, args.valid_examples, "validation", args.seed, None)
    steps = args.examples // args.batch  # one epoch of the peers' batches; the flantune rows train as many steps
    run = _flantune_run if args.recipe == "flantune" else _peer_run
    result, model, tok = run(args, steps)
    seconds = result["end"][0] - result["start"][0]
    useful, padded, examples = (end - start for start, end in zip(result["start"][1:], result["end"][1:]))
    report = {
        "recipe": args.recipe, "dataset": args.dataset, "examples": result["examples"], "batch": result["batch"],
        "timed_steps": steps - args.warmup, "seconds": seconds,
        "useful_tokens_per_s": useful / seconds, "examples_per_s": examples / seconds,
        "pad_fraction": 1 - useful / padded,
        "validation_loss": validation_loss(model, valid),
    }
    if args.save_model:
        model.save_pretrained(args.save_model)
        tok.save_pretrained(args.save_model)
    Path(args.child_out).write_text(json.dumps(report))


def _clock(counts, warmup: int, steps: int, window: dict):
    """A trainer callback that reads the clock and the token and example counts (`counts()`) when step `warmup`
    begins and when step `steps` ends: the timed window, the same in every recipe."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == warmup:
                window["start"] = (time.perf_counter(), *counts())

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == steps:
                window["end"] = (time.perf_counter(), *counts())

    return Clock()


def _flantune_run(args, steps: int):
    """The flantune rows: `flantune run`'s own path (the prelude's checks and data, the train set, the model as a
    run loads and prepares it, and training.train: its trainer, sampler, collator, loss and kernels), with a clock
    callback. One evaluation of 8 validation rows at the end, after the timed window, is the run's own."""
    from transformers import set_seed

    from flantune import training
    from flantune.config import load_config
    from flantune.mixture import build_train_set
    from flantune.modeling import apply_method, load_model, prepare_for_training
    from flantune.prelude import check, prepare

    cfg = load_config([f"task={args.dataset}", "model=tiny", f"data_dir={args.data_dir}", f"seed={args.seed}",
                       f"data.max_train_examples={args.examples}", "data.max_eval_examples=8", "eval.split=validation",
                       f"train.batch_size={args.batch}", f"train.max_steps={steps}", f"train.eval_steps={steps}",
                       "train.lr=1e-3", f"train.sampling={args.sampling}", "train.logging_steps=1000000",
                       f"train.loss_normalization={args.loss_normalization}", "precision=fp32", "report_to=none"])
    p = prepare(check(cfg))
    set_seed(cfg.seed)
    train_set = build_train_set(p, p.tokenizer)
    model = prepare_for_training(apply_method(load_model(cfg, cfg.seed, train=True), cfg), p.precision, False)
    window: dict = {}

    def clock(trainer):  # reads flantune's own counts (FlantuneTrainer.training_step), twice
        counts = lambda: (float(trainer.useful_tokens), float(trainer.padded_tokens), float(trainer.train_examples))
        return _clock(counts, args.warmup, steps, window)

    out = Path(tempfile.mkdtemp())
    trained = training.train(p, out, model, p.tokenizer, train_set, p.evaluators["validation"], callbacks=[clock])
    return {**window, "examples": len(train_set.dataset), "batch": trained.step.batch}, trained.model, p.tokenizer


def _peer_run(args, steps: int):
    """The peers' recipes, plain transformers: Seq2SeqTrainer on the same tokenised examples and initial weights."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, default_data_collator

    from flantune.config import load_config
    from flantune.modeling import load_model

    task, tok, train = _features(args.dataset, args.data_dir, args.examples, "train", args.seed, 0)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(train["input_ids"], train["labels"])]
    if args.recipe == "notebook":  # pad everything to the limits, as the notebooks' tokenize(padding="max_length") do
        L, T = task.max_input_length, task.max_target_length
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
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, max_steps=steps, learning_rate=1e-3,
        logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to="none", seed=args.seed,
        data_seed=data_seed, disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False,
    )
    clock = _clock(lambda: (counted["useful"], counted["padded"], counted["examples"]), args.warmup, steps, window)
    Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator, callbacks=[clock]).train()
    return {**window, "examples": len(rows), "batch": args.batch}, model, tok


def run_child(recipe: str, dataset: str, args, save_model: str | None = None) -> dict:
    out = Path(tempfile.mkdtemp()) / "result.json"
    order = ["--data-seed", str(args.seed + 1)] if recipe == ORDER_CHECK else []
    order += ["--sampling", "input_length_grouped"] if recipe == INPUT_GROUPED else []
    order += ["--sampling", "packed"] if recipe == PACKED else []
    recipe_arg = {ORDER_CHECK: "example-script", INPUT_GROUPED: "flantune", PACKED: "flantune"}.get(recipe, recipe)
    cmd = [sys.executable, __file__, "--child", "--recipe", recipe_arg, "--dataset", dataset, "--data-dir", args.data_dir,
           "--examples", str(args.examples), "--valid-examples", str(args.valid_examples), "--batch", str(args.batch),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--threads", str(args.threads),
           "--loss-normalization", args.loss_normalization, "--child-out", str(out)] + order + (["--save-model", save_model] if save_model else [])
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
    result["recipe"] = recipe
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


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
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loss-normalization", default="tokens", choices=("tokens", "batch"),
                    help="flantune's train.loss_normalization in the flantune recipes")
    ap.add_argument("--sampling", default="length_grouped", choices=("length_grouped", "input_length_grouped", "packed"),
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
    if args.padding_only:  # the padding table alone: a minute, no training
        print_padding(padding_over_epochs(args), args.batch)
        return

    report: dict = {"machine": f"{os.cpu_count()} CPU cores", "torch": torch.__version__, "args": vars(args),
                    "training": []}
    model_dir = tempfile.mkdtemp()
    for dataset in DATASETS:
        for recipe in (*RECIPES, ORDER_CHECK, INPUT_GROUPED, PACKED):
            save = model_dir if (dataset, recipe) == ("imdb", "flantune") else None
            r = run_child(recipe, dataset, args, save_model=save)
            report["training"].append(r)
            print(f"  {dataset:7s} {recipe:15s} {r['useful_tokens_per_s']:9,.0f} tok/s", flush=True)
    report["padding"] = padding_over_epochs(args)
    report["evaluation"] = rank_vs_generate(model_dir, args)
    report["cache"] = tokenisation_cache(args)
    report["tasks_command_s"] = tasks_command_seconds()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print_report(report)


def print_report(report: dict) -> None:
    print(f"\ntraining, tiny T5, batch {report['args']['batch']}, {report['args']['examples']} examples per run "
          f"({report['machine']})")
    print(f"{'data':8s} {'recipe':26s} {'useful tok/s':>12s} {'ex/s':>7s} {'pad':>6s} {'RSS MiB':>8s} "
          f"{'val loss':>9s} {'flantune x':>10s}")
    by = {(r["dataset"], r["recipe"]): r for r in report["training"]}
    for (dataset, recipe), r in by.items():
        ours = by[(dataset, "flantune")]["useful_tokens_per_s"]
        ratio = "" if recipe in ("flantune", ORDER_CHECK, INPUT_GROUPED, PACKED) else f"{ours / r['useful_tokens_per_s']:.2f}"
        print(f"{dataset:8s} {recipe:26s} {r['useful_tokens_per_s']:12,.0f} {r['examples_per_s']:7.1f} "
              f"{r['pad_fraction']:6.1%} {r['peak_rss_mib']:8.0f} {r['validation_loss']:9.4f} {ratio:>10s}")
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
