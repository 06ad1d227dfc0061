"""`flantune run`: one Seq2SeqTrainer-based engine for every task, mixture and method.

    the prelude (flantune.prelude): the run directory claimed, the checks, the data, tokenizer and evaluators
    -> the training stream (tokenised once, cached by datasets), the model (full or LoRA), the run directory made
    -> Seq2SeqTrainer: length-grouped batches, evaluation with each task's own metrics on its
       validation split, the best checkpoint kept by the primary metric (or the mixture's mean)
    -> final evaluation on eval.split, the run directory's files, summary table
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from flantune import rundir
from flantune.card import write_card
from flantune.compare import compare_after_run
from flantune.config import to_yaml
from flantune.console import console, no_transformers_bars
from flantune.distributed import is_main, main_first, on_main_then_share
from flantune.errors import Interrupted
from flantune.evaluation import EvalResult, write_predictions
from flantune.methods import method_of
from flantune.modeling import (
    ModelInfo,
    apply_method,
    count_parameters,
    load_model,
    load_quantized,
    model_label,
    prepare_for_training,
    run_adapter_base,
)
from flantune.outputs import metrics_record
from flantune.prelude import Inputs, check, claim, prepare
from flantune.transformers_checks import check_optimizer_installed

if TYPE_CHECKING:
    from flantune.training import Trained


def run(cfg: DictConfig, input_files: list[str] = ()) -> Path:
    """Train, evaluate and write the run directory; returns its path. `input_files` are the files the config was
    read from (config.input_files), which overwrite=true must not delete."""
    with contextlib.ExitStack() as held:
        out = claim(cfg, held, kind="run", input_files=input_files)  # first, before any library loads
        if cfg.resume and rundir.finished(out):
            console().print(f"{out} is a finished run ({rundir.METRICS} is written): nothing to resume. Its results "
                            "stay as they are; to train again, use overwrite=true or another output_dir.",
                            highlight=False)
            return out
        if is_main():  # where to look while it trains (it is made once the model has loaded)
            console().print(f"run directory: [bold]{out}[/]")
        before = out.stat().st_ino if out.exists() else None  # an old run that overwrite=true may replace
        try:
            return _train(cfg, out)
        except KeyboardInterrupt as exc:
            # This run's directory, made with its config: resume=true continues it (not an old one still in place)
            if rundir.is_run_dir(out) and (cfg.resume or out.stat().st_ino != before):
                raise Interrupted(out) from exc
            raise


def _train(cfg: DictConfig, out: Path) -> Path:
    checked = check(cfg)
    check_optimizer_installed(cfg.train.optim)  # here, not in check: evaluating a run needs no optimizer
    started = time.perf_counter()
    p: Inputs = prepare(checked)

    from transformers import set_seed

    from flantune import training
    from flantune.mixture import build_train_set

    set_seed(cfg.seed)
    tokenizer = p.tokenizer
    prep_started = time.perf_counter()
    with main_first():  # the first process fills the datasets cache, the others read it
        train_set = build_train_set(p, tokenizer)
    prep_seconds = p.prep_seconds + time.perf_counter() - prep_started  # reading, checking and tokenising every split
    validation, final_evaluator = p.evaluators["validation"], p.evaluators[cfg.eval.split]
    model = load_model(cfg, cfg.seed, train=True)
    # Only now, checks passed and model loaded, is an old run that overwrite=true replaces deleted.
    on_main_then_share(lambda: _create_run_dir(out, cfg))
    method = method_of(cfg)
    base_name, base_copy = run_adapter_base(cfg, out) if method.adapter else (None, None)
    if is_main() and cfg.model.random_init and base_name:
        # A random base can't be downloaded again: keep it beside the adapter, where flantune finds it anywhere.
        with no_transformers_bars():
            model.save_pretrained(out / rundir.BASE_MODEL)
        tokenizer.save_pretrained(out / rundir.BASE_MODEL)
    elif is_main() and base_copy:  # the adapter of a run with such a base trains on: this run keeps its own copy
        shutil.copytree(base_copy, out / rundir.BASE_MODEL)
    if cfg.model.random_init and method.quantized:
        with main_first():  # the others read base_model/ once the main process has written it
            model = load_quantized(cfg, out / rundir.BASE_MODEL)
    model = prepare_for_training(apply_method(model, cfg), p.precision, cfg.train.compile)
    if base_name:
        model.peft_config["default"].base_model_name_or_path = base_name
    trainable, total = count_parameters(model)
    info = ModelInfo(model_label(cfg), bool(cfg.model.random_init), checked.model_type, trainable, total)
    say = console()
    say.print(f"model: {info.label} ({info.model_type}), method {cfg.method}: {trainable:,} trainable of {total:,} "
              f"parameters ({100 * trainable / total:.2f}%), precision {p.precision}", highlight=False)

    trained = training.train(p, out, model, tokenizer, train_set, validation)
    final = final_evaluator.run(trained.model)
    wall = time.perf_counter() - started
    with no_transformers_bars():  # its "Writing model shards" bar (flantune.console)
        trained.trainer.save_model(str(out / rundir.MODEL))  # every process: FSDP gathers the shards here
    if is_main():
        write_outputs(p, out, trained, final, info, wall, prep_seconds)
        from flantune.summary import print_summary

        print_summary(p, out, final, trained, info, wall)
        if cfg.compare:
            del trained, model  # the base model is loaded next
            html = compare_after_run(cfg, out)
            console().print(f"comparison report: [bold]{html}[/]")
    return out


def _create_run_dir(out: Path, cfg: DictConfig) -> None:
    rundir.create(out, cfg)
    (out / rundir.CONFIG).write_text(to_yaml(cfg), encoding="utf-8")


def write_outputs(p: Inputs, out: Path, trained: Trained, final: EvalResult, info: ModelInfo, wall: float,
                  prep_seconds: float) -> None:
    """The run directory's results; metrics.json last: its presence is what makes the run finished."""
    cfg, tokenizer = p.cfg, p.tokenizer
    write_predictions(final, out / rundir.PREDICTIONS)
    if trained.mixture is not None:
        rundir.write_json(out / rundir.MIXTURE, trained.mixture)
    rundir.write_json(out / rundir.LOG_HISTORY, trained.log_history)
    tokenizer.save_pretrained(out / rundir.MODEL)
    if cfg.merge:  # a method that can merge (config.validate)
        merged = trained.model.merge_and_unload()
        with no_transformers_bars():
            merged.save_pretrained(out / rundir.MERGED)
        tokenizer.save_pretrained(out / rundir.MERGED)
    metrics = metrics_record(p.checked, final, info, trained=trained, wall_seconds=wall, prep_seconds=prep_seconds)
    write_card(out, p.tasks, metrics)  # model/README.md (and merged/'s), from the metrics about to be written
    rundir.write_json(out / rundir.METRICS, metrics)
