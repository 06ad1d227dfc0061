"""`flantune run`: one Seq2SeqTrainer-based engine for every task, mixture and method.

    checks (config, tasks, data, output dir, model source)   -- cheap, before anything heavy
    -> model and tokenizer (full or LoRA)
    -> features (tokenised once, cached by datasets)
    -> Seq2SeqTrainer: length-grouped batches, evaluation with each task's own metrics on its
       validation split, the best checkpoint kept by the primary metric (or the mixture's mean)
    -> final evaluation on eval.split, run directory, summary table
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flantune import rundir
from flantune.config import task_names, to_yaml
from flantune.console import console
from flantune.data import load_rows
from flantune.distributed import (
    is_main,
    main_first,
    on_main_then_share,
    sharded_parameters,
    world_size,
)
from flantune.errors import FlantuneError, Interrupted, did_you_mean
from flantune.evaluation import SCORE, EvalResult, EvalSet, Evaluator, write_predictions
from flantune.modeling import (
    T5_FAMILY,
    ModelInfo,
    Precision,
    apply_method,
    check_lora_targets,
    check_model_files,
    check_model_source,
    config_model_type,
    count_parameters,
    load_model,
    load_tokenizer,
    model_label,
    prepare_for_training,
    resolve_precision,
)
from flantune.registry import discover
from flantune.sources import resolve_data_dir
from flantune.task import Task
from flantune.transformers_checks import check_optimizer_installed, validate_with_transformers


@dataclass
class Plan:
    """Everything checked before the heavy work starts."""

    cfg: DictConfig
    tasks: list[Task]
    label: str  # names the run: the task, the mixture, or the tasks joined
    data_dir: Path | None
    precision: Precision
    model_type: str
    cuda_graphs: bool = False
    rows: dict[tuple[str, str], Any] = field(default_factory=dict)  # (task, role) -> checked rows
    overlaps: dict[str, list[str]] = field(default_factory=dict)  # task -> train rows also evaluated on (allowed)


def resolve_tasks(cfg: DictConfig) -> list[Task]:
    registry = discover(cfg.tasks_dir)
    names = task_names(cfg)
    overrides = OmegaConf.to_container(cfg.tasks, resolve=True) if cfg.tasks else {}
    for name in overrides:
        if name not in names:
            raise FlantuneError(
                f"tasks.{name}... changes task '{name}', which is not in this run ({', '.join(names)})."
                f"{did_you_mean(name, names)}"
            )
    return [registry.get(n).with_overrides(overrides.get(n, {})) for n in names]


def run_label(cfg: DictConfig, tasks: list[Task]) -> str:
    if cfg.mixture:
        name = str(cfg.mixture)  # a named mixture, or a mixture file's path: its name is the file's
        return Path(name).stem if name.endswith((".yaml", ".yml")) else name
    if len(tasks) <= 3:
        return "+".join(t.name for t in tasks)
    return f"mix{len(tasks)}"


def check(cfg: DictConfig, *, train: bool = True) -> Plan:
    """The checks that need no data: tasks exist, the model source exists, the precision is allowed; for
    training, the train split's rows are none of the validation or test split's."""
    tasks = resolve_tasks(cfg)  # the mixing settings were checked with the config (config.validate)
    data_dir = resolve_data_dir(cfg.data_dir)
    check_model_source(cfg)
    model_type = config_model_type(cfg)
    if model_type not in T5_FAMILY:
        raise FlantuneError(
            f"model.path '{cfg.model.path}' is a {model_type} model; flantune fine-tunes T5-family "
            f"sequence-to-sequence models ({', '.join(T5_FAMILY)}), e.g. model=flan-t5-base or a FLAN-T5 "
            "save_pretrained folder."
        )
    check_model_files(cfg)
    overlaps = {}
    if train:
        from flantune.data import check_overlap

        overlaps = {t.name: found for t in tasks
                    if (found := check_overlap(t, data_dir, allow=bool(cfg.data.allow_overlap)))}
    check_lora_targets(cfg)
    check_metric_sources(tasks)
    precision = resolve_precision(cfg, model_type, sharded=sharded_parameters())
    if sharded_parameters() and cfg.merge:
        raise FlantuneError("merge=true isn't supported under FSDP or DeepSpeed: merge the saved adapter "
                            "afterwards (PeftModel.from_pretrained(...).merge_and_unload()).")
    from flantune.kernels import T5_LAYOUT

    if cfg.train.sampling == "packed" and model_type not in T5_LAYOUT:
        raise FlantuneError(
            f"train.sampling=packed needs full attention with T5's relative position bias ({', '.join(T5_LAYOUT)}); "
            f"this model is a {model_type}. Use train.sampling=length_grouped."
        )
    from flantune import cuda_graphs

    validate_with_transformers(cfg)  # last: it imports transformers' trainer, seconds the checks above don't need
    tasks = fit_tasks(cfg, tasks)
    graphs = cuda_graphs.resolve(cfg.train.cuda_graphs, precision=precision, processes=world_size(),
                                 gradient_checkpointing=cfg.gradient_checkpointing, compile_blocks=cfg.train.compile)
    return Plan(cfg=cfg, tasks=tasks, label=run_label(cfg, tasks), data_dir=data_dir, precision=precision,
                model_type=model_type, cuda_graphs=graphs, overlaps=overlaps)


def fit_tasks(cfg: DictConfig, tasks: list[Task]) -> list[Task]:
    """Classification tasks with label lengths that hold every choice, or the error of one that can't fit."""
    if not any(t.is_classification for t in tasks):
        return tasks
    from flantune.task import fit_choices

    tokenizer = load_tokenizer(cfg)
    return [fit_choices(t, tokenizer) for t in tasks]


def check_metric_sources(tasks: list[Task]) -> None:
    """Metrics of the evaluate library load now (from the hub or its cache), not when training has ended."""
    from flantune.metrics import EVALUATE_PREFIX
    from flantune.metrics.passthrough import load_evaluate_metric

    for task in tasks:
        for spec in task.metrics:
            if spec.name.startswith(EVALUATE_PREFIX):
                load_evaluate_metric(spec.name[len(EVALUATE_PREFIX):])


def load_data(p: Plan, *, train: bool) -> Plan:
    """Every split the run reads, checked against its task (columns, labels, empty splits)."""
    cfg = p.cfg
    roles = (["train", "validation"] if train else []) + [cfg.eval.split]
    for task in p.tasks:
        for role in dict.fromkeys(roles):
            if role == "train":
                limit, seed = cfg.data.max_train_examples, cfg.seed
            else:  # the same rows whatever the run's seed, so that runs of different seeds compare
                limit, seed = cfg.data.max_eval_examples, cfg.data.eval_seed
            p.rows[(task.name, role)] = load_rows(task, role, p.data_dir, max_examples=limit, seed=seed)
    return p


def plan(cfg: DictConfig, *, train: bool = True) -> Plan:
    return load_data(check(cfg, train=train), train=train)


def inputs_of(cfg: DictConfig) -> list[str]:
    """The local paths a command reads, which its output directory must not hold when overwrite=true deletes it
    (besides the files the config is read from: config.input_files)."""
    from flantune.modeling import adapter_base, is_local_path

    from flantune.registry import TASKS_PATH_ENV

    model = str(cfg.model.path) if cfg.model.path else None
    data_dir = cfg.data_dir or os.environ.get("FLANTUNE_DATA_DIR")  # as sources.resolve_data_dir reads it
    given = cfg.tasks_dir or []
    tasks_dirs = [*([given] if isinstance(given, str) else given),
                  *os.environ.get(TASKS_PATH_ENV, "").split(os.pathsep)]  # as registry.task_folders reads them
    paths = [model, adapter_base(model) if model else None, cfg.model.tokenizer, data_dir, *tasks_dirs]
    return [str(p) for p in paths if p and str(p) != "@sample" and is_local_path(str(p))]


def autocast_for(precision: str):
    import torch

    if precision == "bf16-mixed" and torch.cuda.is_available():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def eval_sets(p: Plan, tokenizer, role: str) -> list[EvalSet]:
    from flantune.features import tokenize

    return [EvalSet(t, tokenize(t, p.rows[(t.name, role)], tokenizer, role=role, template_seed=None))
            for t in p.tasks]


def make_evaluator(p: Plan, tokenizer, role: str) -> Evaluator:
    cfg = p.cfg
    return Evaluator(eval_sets(p, tokenizer, role), tokenizer, classify=cfg.eval.classify,
                     rank_score=cfg.eval.rank_score, batch_size=cfg.eval.batch_size, num_beams=cfg.eval.num_beams,
                     autocast=autocast_for(p.precision))


def run(cfg: DictConfig, input_files: list[str] = ()) -> Path:
    """Train, evaluate and write the run directory; returns its path. `input_files` are the files the config was
    read from (config.input_files), which overwrite=true must not delete."""
    with contextlib.ExitStack() as held:
        # First, before any library loads: one process decides the run directory (a default one is
        # time-stamped) and holds its lock for the run's life; the others use it.
        label = run_label(cfg, resolve_tasks(cfg))
        out = on_main_then_share(lambda: rundir.claim(cfg, label, [*inputs_of(cfg), *input_files], held))
        if cfg.resume and rundir.finished(out):
            console().print(f"{out} is a finished run ({rundir.METRICS} is written): nothing to resume. Its results "
                            "stay as they are; to train again, use overwrite=true or another output_dir.",
                            highlight=False)
            return out
        before = out.stat().st_ino if out.exists() else None  # an old run that overwrite=true may replace
        try:
            return _train(cfg, out)
        except KeyboardInterrupt as exc:
            # This run's directory, made with its config: resume=true continues it (not an old one still in place)
            if rundir.is_run_dir(out) and (cfg.resume or out.stat().st_ino != before):
                raise Interrupted(out) from exc
            raise


def _train(cfg: DictConfig, out: Path) -> Path:
    p = check(cfg)
    check_optimizer_installed(cfg.train.optim)  # here, not in check: evaluating a run needs no optimizer
    prep_started = time.perf_counter()
    with main_first():  # the first process fills the datasets cache, the others read it
        load_data(p, train=True)
    prep_seconds = time.perf_counter() - prep_started
    started = time.perf_counter()

    from transformers import set_seed

    from flantune import training
    from flantune.mixture import build_train_set

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg)
    prep_started = time.perf_counter()
    with main_first():
        train_set = build_train_set(p, tokenizer)
        validation = make_evaluator(p, tokenizer, "validation")
        # The same sets tokenised the same way: reuse the validation evaluator (it keeps no state between runs).
        final_evaluator = validation if cfg.eval.split == "validation" else make_evaluator(p, tokenizer, cfg.eval.split)
    prep_seconds += time.perf_counter() - prep_started  # reading, checking and tokenising every split
    model = load_model(cfg, cfg.seed, train=True)
    # Only now, checks passed and model loaded, is an old run that overwrite=true replaces deleted.
    on_main_then_share(lambda: _create_run_dir(out, cfg))
    if cfg.method == "lora" and cfg.model.random_init and is_main():
        # A random base can't be downloaded again: keep it beside the adapter so PeftModel can load both.
        model.save_pretrained(out / rundir.BASE_MODEL)
        tokenizer.save_pretrained(out / rundir.BASE_MODEL)
    model = prepare_for_training(apply_method(model, cfg), p.precision, cfg.train.compile)
    if cfg.method == "lora" and cfg.model.random_init:
        model.peft_config["default"].base_model_name_or_path = str((out / rundir.BASE_MODEL).resolve())
    trainable, total = count_parameters(model)
    info = ModelInfo(model_label(cfg), bool(cfg.model.random_init), p.model_type, trainable, total)
    say = console()
    say.print(f"model: {info.label} ({p.model_type}), method {cfg.method}: {trainable:,} trainable of {total:,} "
              f"parameters ({100 * trainable / total:.2f}%), precision {p.precision}", highlight=False)

    trained = training.train(p, out, model, tokenizer, train_set, validation)
    final = final_evaluator.run(trained.model)
    wall = time.perf_counter() - started
    trained.trainer.save_model(str(out / rundir.MODEL))  # every process: FSDP gathers the shards here
    if is_main():
        write_outputs(p, out, trained, final, info, tokenizer, wall, prep_seconds)
        from flantune.summary import print_summary

        print_summary(p, out, final, trained, info, wall)
        if cfg.compare:
            from flantune.compare import compare_after_run

            del trained, model  # the base model is loaded next
            html = compare_after_run(cfg, out)
            console().print(f"comparison report: [bold]{html}[/]")
    return out


def _create_run_dir(out: Path, cfg: DictConfig) -> None:
    rundir.create(out, cfg)
    (out / rundir.CONFIG).write_text(to_yaml(cfg), encoding="utf-8")


def write_outputs(p: Plan, out: Path, trained, final: EvalResult, info: ModelInfo, tokenizer, wall: float,
                  prep_seconds: float) -> None:
    cfg = p.cfg
    write_predictions(final, out / rundir.PREDICTIONS)
    metrics = {
        "split": cfg.eval.split,
        "tasks": final.metrics_by_task(),
        SCORE: final.score,
        "model": {"name": str(cfg.model.name), "label": info.label, "path": cfg.model.path,
                  "random_init": info.random_init, "model_type": info.model_type, "method": cfg.method},
        "trainable_parameters": info.trainable_parameters,
        "total_parameters": info.total_parameters,
        "wall_time_s": wall,
        "data_prep_seconds": prep_seconds,
        "train": trained.throughput,
        "step": trained.step.record(),  # what one optimizer step trained on (flantune.step.Step)
        "eval": final.throughput(),
        "best_checkpoint": trained.best_checkpoint,
        "precision": p.precision,
    }
    if p.overlaps:  # data.allow_overlap=true let these through
        metrics["allowed_overlap"] = p.overlaps
    if trained.mixture is not None:
        metrics["mixture"] = trained.mixture
        rundir.write_json(out / rundir.MIXTURE, trained.mixture)
    rundir.write_json(out / rundir.LOG_HISTORY, trained.log_history)
    tokenizer.save_pretrained(out / rundir.MODEL)
    if cfg.method == "lora" and cfg.merge:
        merged = trained.model.merge_and_unload()
        merged.save_pretrained(out / rundir.MERGED)
        tokenizer.save_pretrained(out / rundir.MERGED)
    rundir.write_json(out / rundir.METRICS, metrics)  # last: its presence is what makes the run finished
