"""`flantune eval`, `flantune compare` and `flantune report`: evaluation directories, baselines, and the
comparative report built from saved predictions (flantune/report/).

An evaluation directory holds what a run directory holds about its final evaluation: config.yaml,
metrics.json and predictions/<task>.jsonl. A report directory holds report.md / report.html /
report.json and systems/<n>-<name>/, one evaluation directory per system, so `flantune report` can
rebuild it without running any model.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from flantune import rundir
from flantune.card import write_card
from flantune.config import load_config, set_model, to_yaml
from flantune.errors import FlantuneError
from flantune.evaluation import (
    TEMPLATES_DIR,
    read_predictions,
    read_template_predictions,
    write_prediction_rows,
    write_predictions,
)
from flantune.modeling import ModelInfo, count_parameters, model_label
from flantune.outputs import write_metrics
from flantune.prelude import Checked, Inputs, check, claim, inference_model, paths_read, prepare, resolve_tasks
from flantune.report import System
from flantune.task import Task

SYSTEMS = "systems"
SYSTEM_FILE = "system.json"  # name and kind of a system in a report directory


# ---- evaluation -------------------------------------------------------------------------------------------


def evaluate(cfg: DictConfig, out: Path | None = None, *, measured_together: bool = False,
             input_files: list[str] = ()) -> Path:
    """Evaluate cfg.model on cfg's tasks (their eval.split) and write an evaluation directory. `input_files` are
    the files the config was read from (config.input_files), which overwrite=true must not delete."""
    return _evaluate(cfg, out, measured_together=measured_together, input_files=input_files)[0]


def _evaluate(cfg: DictConfig, out: Path | None = None, *, measured_together: bool = False,
              input_files: list[str] = (), checked: Checked | None = None) -> tuple[Path, Inputs]:
    """`evaluate`, and what it evaluated on (its tasks and evaluation rows, which the baselines reuse); `checked`:
    cfg's checks, made already."""
    with contextlib.ExitStack() as held:
        out = claim(cfg, held, kind="evaluation", out=out, input_files=input_files)
        inputs = prepare(checked or check(cfg, train=False))
        model = inference_model(inputs.checked)
        result = inputs.evaluators[cfg.eval.split].run(model)
        with rundir.replacing(out, cfg, "evaluation"):  # replaces it if overwrite=true: checked above
            (out / rundir.CONFIG).write_text(to_yaml(cfg), encoding="utf-8")
            write_predictions(result, out / rundir.PREDICTIONS)
            trainable, total = count_parameters(model)
            info = ModelInfo(model_label(cfg), bool(cfg.model.random_init), inputs.checked.model_type, trainable, total)
            write_metrics(out, inputs.checked, result, info, measured_together=measured_together)
        return out, inputs


# ---- systems ------------------------------------------------------------------------------------------------


def system_from_dir(path: Path, name: str | None = None) -> System:
    """A run, evaluation or report-system directory as a System (predictions, metrics, log history)."""
    path = Path(path)
    preds = path / rundir.PREDICTIONS
    if not (path / rundir.METRICS).is_file() or not preds.is_dir() or not any(preds.glob("*.jsonl")):
        raise FlantuneError(
            f"{path} holds no saved predictions (metrics.json and predictions/<task>.jsonl). Give a finished "
            "`flantune run` or `flantune eval` directory, or a report directory."
        )
    meta = rundir.read_json(path / SYSTEM_FILE) if (path / SYSTEM_FILE).is_file() else {}
    metrics = rundir.read_metrics(path)
    history = path / rundir.LOG_HISTORY
    # A few-shot evaluation (eval.fewshot) is told apart from the same model's zero-shot one by its name.
    k = (metrics.get("fewshot") or {}).get("k")
    shots = f" ({k}-shot)" if k else ""
    return System(
        name=(name + shots if name else None) or meta.get("name")
        or ((metrics.get("model") or {}).get("label") or path.name) + shots,
        kind=meta.get("kind", "model"),
        predictions={f.stem: read_predictions(f) for f in sorted(preds.glob("*.jsonl"))},
        metrics=metrics,
        log_history=rundir.read_json(history) if history.is_file() else None,
        source=meta.get("source") or str(path),  # a report's copy names where the system came from
        template_predictions=read_template_predictions(preds),
    )


def save_system(system: System, folder: Path) -> None:
    """A system's predictions and metrics, written as an evaluation directory inside a report."""
    write_prediction_rows(system.predictions, folder / rundir.PREDICTIONS)
    if system.template_predictions:
        write_prediction_rows({task: [{**row, "template": t} for t, rows in by.items() for row in rows]
                               for task, by in system.template_predictions.items()},
                              folder / rundir.PREDICTIONS / TEMPLATES_DIR)
    rundir.write_json(folder / rundir.METRICS, system.metrics)
    if system.log_history is not None:
        rundir.write_json(folder / rundir.LOG_HISTORY, system.log_history)
    rundir.write_json(folder / SYSTEM_FILE, {"name": system.name, "kind": system.kind, "source": system.source})


def baselines(p: Inputs, reference: System) -> list[System]:
    """Majority class and TF-IDF + logistic regression (trained on each classification task's train split),
    and the lead baselines a task declares, as prediction rows aligned with the reference's."""
    from flantune.data import load_rows, render_row
    from flantune.report.baselines import lead_sentences, majority_class, tfidf_logreg

    cfg = p.cfg
    majority: dict[str, list[dict]] = {}
    tfidf: dict[str, list[dict]] = {}
    lead: dict[str, list[dict]] = {}
    lead_words: dict[str, list[dict]] = {}
    for task in p.tasks:
        ref_rows = reference.predictions.get(task.name)
        if not ref_rows:
            continue
        eval_rows = p.rows[(task.name, cfg.eval.split)]
        by_id = {r["_id"]: r for r in eval_rows}
        raw = [by_id[row["id"]] for row in ref_rows]
        if task.is_classification:
            train = load_rows(task, "train", p.checked.data_dir, max_examples=cfg.data.max_train_examples,
                              seed=cfg.seed)
            template = task.evaluation_template
            rendered = [render_row(task, train[i], template) for i in range(len(train))]
            labels = [r["target"] for r in rendered]
            majority[task.name] = _rows_with(ref_rows, majority_class(labels, len(ref_rows)))
            # The inputs rendered anew: a few-shot reference's inputs hold its shots (eval.fewshot)
            tfidf[task.name] = _rows_with(ref_rows, tfidf_logreg([r["input"] for r in rendered], labels,
                                                                 [render_row(task, r, template)["input"] for r in raw],
                                                                 seed=cfg.seed))
        for b in task.baselines:
            if b["name"] == "lead":
                split = b.get("split", "auto")
                (lead_words if split == "words" else lead)[task.name] = _rows_with(ref_rows, lead_sentences(
                    [r[b["column"]] for r in raw], k=int(b.get("k", 3)), split=split))
    out = []
    for name, preds in (("majority class", majority), ("TF-IDF + logistic regression", tfidf),
                        ("lead sentences", lead), ("lead words", lead_words)):
        if preds:
            out.append(System(name=name, kind="baseline", predictions=preds, metrics={}, source="baseline"))
    return out


def _rows_with(ref_rows: list[dict], predictions: list[str]) -> list[dict]:
    """The reference's rows (id, input, gold answers) with another system's predictions."""
    return [{k: ref[k] for k in ("id", "input", "target", "references") if k in ref} | {"prediction": pred}
            for ref, pred in zip(ref_rows, predictions)]


# ---- reports ------------------------------------------------------------------------------------------------


def tasks_of(systems: list[System], cfg: DictConfig) -> dict[str, Task]:
    """The task definitions of a report: the reference's tasks, with the config's per-task changes."""
    names = list(systems[0].predictions)
    for s in systems[1:]:
        if s.kind == "model" and set(s.predictions) != set(names):
            raise FlantuneError(
                f"The systems were evaluated on different tasks: '{systems[0].name}' on {sorted(names)}, "
                f"'{s.name}' on {sorted(s.predictions)}. Compare systems evaluated on the same tasks "
                "(flantune eval ... task=...)."
            )
    cfg = cfg.copy()
    OmegaConf.update(cfg, "task", names, merge=False)
    OmegaConf.update(cfg, "mixture", None, merge=False)
    return {t.name: t for t in resolve_tasks(cfg)}


def write_report(systems: list[System], cfg: DictConfig, out: Path) -> Path:
    from flantune.report.build import build_report

    tasks = tasks_of(systems, cfg)
    out.mkdir(parents=True, exist_ok=True)
    folder = out / SYSTEMS
    if folder.exists():
        shutil.rmtree(folder)
    for i, s in enumerate(systems):
        save_system(s, folder / f"{i}-{_slug(s.name)}")
    return build_report(tasks, systems, out)


def systems_in_report(report_dir: Path) -> list[System]:
    """The systems a report saved, in order: its systems/<n>-<name>/ folders (anything else there is not one)."""
    folders = [f for f in (report_dir / SYSTEMS).iterdir() if f.is_dir() and re.match(r"\d+-", f.name)]
    if not folders:
        raise FlantuneError(f"{report_dir / SYSTEMS} holds no saved systems (<n>-<name>/ folders). Give a report "
                            "directory that `flantune compare` or `flantune report` wrote, or run directories.")
    return [system_from_dir(f) for f in sorted(folders, key=lambda f: int(f.name.split("-", 1)[0]))]


def _with_model(cfg: DictConfig, model: str) -> DictConfig:
    sub = cfg.copy()
    set_model(sub, model, f"model={model}")
    return sub


def _training_record(system: System, run: Path) -> System:
    """A fine-tuned run's training curves, trainable parameters and wall time, from its run directory."""
    if (run / rundir.LOG_HISTORY).is_file():
        system.log_history = rundir.read_json(run / rundir.LOG_HISTORY)
    if (run / rundir.METRICS).is_file():
        trained = rundir.read_metrics(run)
        for key in ("train", "trainable_parameters", "wall_time_s"):
            system.metrics[key] = trained[key]
        # The model it fine-tuned and how, as `run compare=true` labels it (not the folder it was loaded from).
        ran = trained.get("model") or {}
        system.metrics["model"] = {**(system.metrics.get("model") or {}),
                                   **{k: ran[k] for k in ("label", "method") if ran.get(k)}}
    return system


def compare(cfg: DictConfig, base: str, finetuned: list[str], out: Path, input_files: list[str] = ()) -> Path:
    """Evaluate the base model and every fine-tuned run on the same machine, one after the other, add the
    baselines, and write the report (`input_files` as in `evaluate`)."""
    models = [base, *finetuned]
    subs = [_with_model(cfg, model) for model in models]
    for sub in subs[1:]:  # eval.fewshot is the base model's: a fine-tuned one is evaluated as it was trained
        OmegaConf.update(sub, "eval.fewshot", 0, merge=False)
    with rundir.lock(out):
        reads = [*input_files, *(path for sub in subs for path in paths_read(sub))]
        rundir.check_output_dir(out, overwrite=cfg.overwrite, reads=reads)
        checks = [check(sub, train=False) for sub in subs]  # every model's source, before the first is evaluated
        # An old report that overwrite=true replaces goes only when the new one is written.
        with rundir.replacing(out, cfg, "report"):
            return _compare_into(cfg, models, checks, out)


def _compare_into(cfg: DictConfig, models: list[str], checks: list[Checked], out: Path) -> Path:
    systems = []
    for i, (model, checked) in enumerate(zip(models, checks)):
        sub = checked.cfg
        path, p = _evaluate(sub, out / "evaluations" / f"{i}-{_slug(model)}", measured_together=True,
                            checked=checked)
        if i == 0:
            base_inputs = p  # the models differ, their tasks and evaluation rows don't
        name = ("base: " if i == 0 else "fine-tuned: ") + _label(model, sub)
        system = system_from_dir(path, name=name)
        if i > 0 and rundir.is_run_dir(Path(model)):
            _training_record(system, Path(model))
        systems.append(system)
    systems.extend(baselines(base_inputs, systems[0]))
    html = write_report(systems, cfg, out)
    for model, system in zip(models[1:], systems[1:]):  # each fine-tuned run's card gets its intervals
        if rundir.is_run_dir(Path(model)):
            write_card(Path(model), report=out, system=system.name)
    return html


def compare_after_run(cfg: DictConfig, run: Path) -> Path:
    """`flantune run ... compare=true`: the run against its own base model, evaluated now on the same split
    in the same process, plus the baselines; the report goes to <run>/report/."""
    base_cfg = cfg.copy()
    for key, value in (("resume", False), ("overwrite", False), ("compare", False), ("output_dir", None)):
        OmegaConf.update(base_cfg, key, value, merge=False)
    out = run / "report"
    base, p = _evaluate(base_cfg, out / "evaluations" / "0-base", measured_together=True)
    # A run directory holds its own training record (log_history.json, metrics.json's train keys).
    tuned = system_from_dir(run, name=f"fine-tuned: {run.resolve().name}")
    tuned.metrics["measured_together"] = True  # its final evaluation ran in this process, just before
    systems = [system_from_dir(base, name=f"base: {model_label(cfg)}"), tuned]
    systems.extend(baselines(p, systems[0]))
    html = write_report(systems, base_cfg, out)
    write_card(run, p.tasks, report=out, system=tuned.name)  # the card's scores, now with their intervals
    return html


def _label(model: str, cfg: DictConfig) -> str:
    return model_label(cfg) if not Path(model).is_dir() else Path(model).resolve().name


def _slug(text: str) -> str:
    return rundir.slug(text, limit=50, fallback="system")


def default_report_dir(label: str) -> Path:
    return Path("reports") / f"{_slug(label)}-{time.strftime('%Y%m%d-%H%M%S')}"


def report(dirs: list[str], cfg: DictConfig, out: Path | None) -> Path:
    """Rebuild a report from saved predictions: a report directory, or run / evaluation directories (the
    first is the reference)."""
    paths = [Path(d) for d in dirs]
    for path in paths:
        if not path.is_dir():
            raise FlantuneError(f"{path} is not a directory: give run, evaluation or report directories.")
    rebuilt_in_place = False
    if len(paths) == 1 and (paths[0] / SYSTEMS).is_dir():
        systems = systems_in_report(paths[0])
        out = Path(out or paths[0])
        rebuilt_in_place = out.resolve() == paths[0].resolve()
    else:
        systems = _distinct_names([system_from_dir(p) for p in paths], paths)
        out = Path(out or default_report_dir("-vs-".join(p.name for p in paths[:3])))
    with rundir.lock(out):
        if rebuilt_in_place:
            rundir.mark(out, "report")
            return write_report(systems, cfg, out)
        rundir.check_output_dir(out, overwrite=cfg.overwrite, reads=paths)
        # A report that fails leaves no folder behind, and an old one that overwrite=true replaces stays.
        with rundir.replacing(out, cfg, "report"):
            return write_report(systems, cfg, out)


def _distinct_names(systems: list[System], paths: list[Path]) -> list[System]:
    """Systems named by their model's label collide when two runs share a base model: name those by their
    directory as well."""
    names = [s.name for s in systems]
    for system, path in zip(systems, paths):
        if names.count(system.name) > 1:
            system.name = f"{system.name} ({path.resolve().name})"
    return systems


def config_for(options: list[str], config_files: list[str], runs: list[str]) -> DictConfig:
    """The config of a comparison: the first fine-tuned run's own config (its tasks, splits, data), then
    --config files and key=value options on top."""
    files = list(config_files)
    for run in runs:
        if rundir.is_run_dir(Path(run)):  # a flantune config.yaml, not another tool's
            files.insert(0, str(Path(run) / rundir.CONFIG))
            break
    # An evaluation never resumes, merges or mixes, whatever the run did (its mixing weights may name tasks a
    # task= option leaves out); the user's own options come after these.
    resets = ["resume=false", "merge=false", "compare=false", "mixing.scheme=proportional", "mixing.weights={}"]
    given = {o.split("=", 1)[0].strip() for o in options}
    if "task" in given and "mixture" not in given:
        resets.append("mixture=null")  # task= evaluates those tasks of a mixture run, not the mixture
    cfg = load_config([*resets, *options], files)
    if not any(o.split("=", 1)[0].strip() == "output_dir" for o in options):
        OmegaConf.update(cfg, "output_dir", None, merge=False)
    return cfg

