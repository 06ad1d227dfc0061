"""What every command that runs a model does first, in this order (`flantune run`, `flantune eval`, and
`flantune compare` through eval):

    claim    the output directory, before any library loads: decided once, locked for the command's life
    check    what can be checked without the data: tasks, model source, precision, metrics  -> Checked
    prepare  the data: every split the command reads, the tokenizer, the evaluators        -> Inputs

The model comes after: a run loads it to train (flantune.engine), an evaluation to evaluate (`inference_model`).
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
from flantune.config import task_names
from flantune.data import load_rows
from flantune.distributed import main_first, on_main_then_share, sharded_parameters, world_size
from flantune.errors import FlantuneError, did_you_mean
from flantune.evaluation import EvalSet, Evaluator
from flantune.hub import is_local_path
from flantune.modeling import (
    T5_FAMILY,
    Precision,
    adapter_base,
    check_lora_targets,
    check_model_files,
    check_model_source,
    config_model_type,
    load_model,
    load_tokenizer,
    prepare_for_training,
    resolve_precision,
)
from flantune.registry import TASKS_PATH_ENV, discover
from flantune.sources import resolve_data_dir
from flantune.task import Task
from flantune.transformers_checks import validate_with_transformers


@dataclass
class Checked:
    """Everything checked before the data is read: what `check` decided."""

    cfg: DictConfig
    tasks: list[Task]  # classification tasks with label lengths that hold every choice
    label: str  # names the run: the task, the mixture, or the tasks joined
    roles: tuple[str, ...]  # the splits the command reads: train and validation to train, and eval.split
    evaluated: tuple[str, ...]  # those it evaluates on: validation while training, eval.split at the end
    data_dir: Path | None
    precision: Precision
    model_type: str
    cuda_graphs: bool = False
    overlaps: dict[str, list[str]] = field(default_factory=dict)  # task -> train rows also evaluated on (allowed)


@dataclass
class Inputs:
    """What `prepare` loaded for the checks it was given: every split's checked rows, the tokenizer, and an
    evaluator per split evaluated on (one for both when eval.split is validation: it keeps no state)."""

    checked: Checked
    rows: dict[tuple[str, str], Any]  # (task, role) -> checked rows (datasets.Dataset)
    tokenizer: Any
    evaluators: dict[str, Evaluator]  # role -> its evaluator
    prep_seconds: float  # reading, checking and tokenising every split

    # What the training code reads (training.train, mixture.build_train_set), under the checks' names.
    @property
    def cfg(self) -> DictConfig:
        return self.checked.cfg

    @property
    def tasks(self) -> list[Task]:
        return self.checked.tasks

    @property
    def label(self) -> str:
        return self.checked.label

    @property
    def precision(self) -> str:
        return self.checked.precision

    @property
    def cuda_graphs(self) -> bool:
        return self.checked.cuda_graphs


# ---- claim ------------------------------------------------------------------------------------------------


def claim(cfg: DictConfig, held: contextlib.ExitStack, *, kind: str = "run", out: Path | None = None,
          input_files: list[str] = ()) -> Path:
    """The command's output directory (`out`, or output_dir, or a time-stamped one under runs/ or evals/), checked
    and locked for as long as `held` is open, before any library loads. One process decides it, the others use
    it. `input_files` are the files the config was read from (config.input_files), which overwrite=true must not
    delete."""
    reads = [*paths_read(cfg), *input_files]

    def decide() -> Path:
        path = Path(out) if out else rundir.output_dir(cfg, run_label(cfg, resolve_tasks(cfg)), kind)
        return rundir.claim(cfg, path, reads, held, kind=kind)

    return on_main_then_share(decide)


def paths_read(cfg: DictConfig) -> list[str]:
    """The local paths a command reads, which its output directory must not hold when overwrite=true deletes it
    (besides the files the config is read from: config.input_files)."""
    model = str(cfg.model.path) if cfg.model.path else None
    data_dir = cfg.data_dir or os.environ.get("FLANTUNE_DATA_DIR")  # as sources.resolve_data_dir reads it
    given = cfg.tasks_dir or []
    tasks_dirs = [*([given] if isinstance(given, str) else given),
                  *os.environ.get(TASKS_PATH_ENV, "").split(os.pathsep)]  # as registry.task_folders reads them
    paths = [model, adapter_base(model) if model else None, cfg.model.tokenizer, data_dir, *tasks_dirs]
    return [str(p) for p in paths if p and str(p) != "@sample" and is_local_path(str(p))]


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


# ---- check ------------------------------------------------------------------------------------------------


def check(cfg: DictConfig, *, train: bool = True) -> Checked:
    """The checks that need no data: tasks exist, the model source exists, the precision is allowed; for
    training, the train split's rows are none of the validation or test split's."""
    tasks = resolve_tasks(cfg)  # the mixing settings were checked with the config (config.validate)
    for task in tasks:
        eval_templates(cfg, task)  # an unknown template name, first
    if train and cfg.eval.get("fewshot"):
        raise FlantuneError(
            f"eval.fewshot={cfg.eval.fewshot} is for evaluating a base model (`flantune eval`, and the base model "
            "of `flantune compare`): a fine-tuned model is evaluated as it was trained, zero-shot. Drop "
            "eval.fewshot from `flantune run`.")
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
            f"this model is a {model_type}. Use train.sampling=input_length_grouped (the default)."
        )
    from flantune import cuda_graphs

    validate_with_transformers(cfg)  # last: it imports transformers' trainer, seconds the checks above don't need
    tasks = fit_tasks(cfg, tasks)
    graphs = cuda_graphs.resolve(cfg.train.cuda_graphs, precision=precision, processes=world_size(),
                                 gradient_checkpointing=cfg.gradient_checkpointing, compile_blocks=cfg.train.compile)
    evaluated = tuple(dict.fromkeys([*(["validation"] if train else []), cfg.eval.split]))
    roles = tuple(dict.fromkeys([*(["train"] if train else []), *evaluated]))
    return Checked(cfg=cfg, tasks=tasks, label=run_label(cfg, tasks), roles=roles, evaluated=evaluated,
                   data_dir=data_dir, precision=precision, model_type=model_type, cuda_graphs=graphs, overlaps=overlaps)


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


# ---- prepare ----------------------------------------------------------------------------------------------


def prepare(checked: Checked) -> Inputs:
    """Every split of `checked.roles`, checked against its task (columns, labels, empty splits), the tokenizer,
    and the evaluators; the first process first (it fills the datasets cache), then the others."""
    started = time.perf_counter()
    with main_first():
        rows = read_rows(checked)
        tokenizer = load_tokenizer(checked.cfg)
        evaluators = {role: make_evaluator(checked, rows, tokenizer, role) for role in checked.evaluated}
    return Inputs(checked=checked, rows=rows, tokenizer=tokenizer, evaluators=evaluators,
                  prep_seconds=time.perf_counter() - started)


def read_rows(checked: Checked) -> dict[tuple[str, str], Any]:
    cfg = checked.cfg
    rows = {}
    for task in checked.tasks:
        for role in checked.roles:
            if role == "train":
                limit, seed = cfg.data.max_train_examples, cfg.seed
            else:  # the same rows whatever the run's seed, so that runs of different seeds compare
                limit, seed = cfg.data.max_eval_examples, cfg.data.eval_seed
            rows[(task.name, role)] = load_rows(task, role, checked.data_dir, max_examples=limit, seed=seed)
    return rows


def make_evaluator(checked: Checked, rows: dict[tuple[str, str], Any], tokenizer, role: str) -> Evaluator:
    cfg = checked.cfg
    # eval.templates and eval.fewshot are the final evaluation's (eval.split): training's validation passes stay on
    # the eval_template alone, which the best checkpoint is chosen by anyway (they cover every template only when
    # eval.split is validation, whose evaluator is the same one).
    final = role == cfg.eval.split
    sets = [s for t in checked.tasks
            for s in eval_sets(cfg, checked, t, rows[(t.name, role)], tokenizer, role, final=final)]
    return Evaluator(sets, tokenizer, classify=cfg.eval.classify, rank_score=cfg.eval.rank_score,
                     batch_size=cfg.eval.batch_size, num_beams=cfg.eval.num_beams,
                     autocast=autocast_for(checked.precision), role=role)


def eval_templates(cfg: DictConfig, task: Task) -> list[str] | None:
    """The templates eval.templates evaluates on `task` (None: its eval_template alone, as ever); an unknown name
    is an error."""
    chosen = cfg.eval.get("templates")
    if chosen is None:
        return None
    names = [t.name for t in task.templates]
    if chosen == "all":
        return names
    wanted = [str(n) for n in (chosen if OmegaConf.is_list(chosen) else [chosen])]
    for name in wanted:
        if name not in names:
            raise FlantuneError(
                f"eval.templates names '{name}', which task '{task.name}' has no template of."
                f"{did_you_mean(name, names)} Its templates: {', '.join(names)}; or eval.templates=all.")
    return list(dict.fromkeys(wanted))


def eval_sets(cfg: DictConfig, checked: Checked, task: Task, rows, tokenizer, role: str, *,
              final: bool = True) -> list[EvalSet]:
    """One evaluation set of `task` per template eval.templates names (its eval_template's metrics are the task's:
    what the summary, the score and the best checkpoint go by, as with one template), each with eval.fewshot
    shots of the train split before its inputs."""
    from dataclasses import replace

    from flantune.features import tokenize

    own = task.evaluation_template.name
    names = eval_templates(cfg, task) if final else None
    k = int(cfg.eval.get("fewshot") or 0) if final else 0
    pool = load_rows(task, "train", checked.data_dir, max_examples=cfg.data.max_train_examples,
                     seed=cfg.data.eval_seed) if k else None
    sets = []
    for name in names or [None]:
        t = replace(task, eval_template=name) if name else task
        data = tokenize(t, rows, tokenizer, role=role, template_seed=None)
        shots = None
        if k:
            from flantune.fewshot import with_shots

            data, shots = with_shots(t, data, pool, tokenizer, k, cfg.data.eval_seed)
        # Without the task's own template among those named, the first named stands for the task.
        primary = name is None or name == own or (own not in names and name == names[0])
        sets.append(EvalSet(t, data, template=name, primary=primary, shots=shots))
    return sets


def autocast_for(precision: Precision):
    import torch

    if precision is Precision.BF16_MIXED and torch.cuda.is_available():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


# ---- the model, to evaluate ---------------------------------------------------------------------------------


def inference_model(checked: Checked):
    """cfg.model loaded to evaluate or predict, on the same attention path as training, and on the GPU when there
    is one (training's trainer places its model itself; an evaluation has no trainer)."""
    import torch

    model = prepare_for_training(load_model(checked.cfg, checked.cfg.seed), checked.precision, False).eval()
    if torch.cuda.is_available():
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    return model
