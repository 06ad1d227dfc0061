"""metrics.json: what a run or an evaluation measured on its final evaluation split, in one schema for both
(versions.SCHEMA_VERSION; rundir.read_metrics reads older files in it), so that a report reads them alike."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from flantune import rundir
from flantune.evaluation import SCORE, EvalResult
from flantune.modeling import ModelInfo
from flantune.prelude import Checked
from flantune.versions import SCHEMA_VERSION

if TYPE_CHECKING:
    from flantune.training import Trained


def write_metrics(out: Path, checked: Checked, final: EvalResult, model: ModelInfo, **kwargs) -> dict[str, Any]:
    """Write out/metrics.json and return it (`metrics_record`'s keyword arguments)."""
    metrics = metrics_record(checked, final, model, **kwargs)
    rundir.write_json(out / rundir.METRICS, metrics)
    return metrics


def metrics_record(checked: Checked, final: EvalResult, model: ModelInfo, *, trained: Trained | None = None,
                   wall_seconds: float | None = None, prep_seconds: float | None = None,
                   measured_together: bool = False) -> dict[str, Any]:
    """What metrics.json holds. An evaluation (`trained` None) trained nothing: its training keys
    are None, and its model's method is the one of the run it comes from (None for a model flantune didn't
    fine-tune)."""
    cfg = checked.cfg
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "split": cfg.eval.split,
        "tasks": final.metrics_by_task(),
        SCORE: final.score,
        "model": {"name": str(cfg.model.name), "label": model.label, "path": cfg.model.path,
                  "random_init": model.random_init, "model_type": model.model_type,
                  "method": cfg.method if trained else fine_tuned_with(cfg)},
        "precision": checked.precision,
        "trainable_parameters": model.trainable_parameters if trained else None,
        "total_parameters": model.total_parameters,
        "eval": final.throughput(),
        "measured_together": measured_together,  # with the other systems of a comparison, in one process
        "train": trained.throughput if trained else None,
        "step": trained.step.record() if trained else None,  # what one optimizer step trained on (flantune.step)
        "wall_time_s": wall_seconds,
        "data_prep_seconds": prep_seconds,
        "best_checkpoint": trained.best_checkpoint if trained else None,
        # train.early_stopping_patience > 0: whether, at which step and why training stopped early (else None)
        "early_stopping": trained.early_stopping if trained else None,
        "mixture": trained.mixture if trained else None,
        # eval.templates: per task, each template's metrics and their mean, std (ddof=1), min and max; else None
        "templates": final.template_metrics() or None,
        # eval.fewshot: K, and per task the shots its inputs got (mean, min: fewer where K didn't fit); else None
        "fewshot": {"k": int(cfg.eval.fewshot), "tasks": final.fewshot()} if cfg.eval.get("fewshot") else None,
        "allowed_overlap": checked.overlaps,  # task -> train rows also evaluated on (data.allow_overlap=true)
    }
    return metrics


def fine_tuned_with(cfg: DictConfig) -> str | None:
    """The method of the flantune run whose model/ (or merged/) cfg.model is, else None."""
    if not cfg.model.path:
        return None
    folder = Path(str(cfg.model.path)).expanduser()
    if folder.name in (rundir.MODEL, rundir.MERGED) and rundir.is_run_dir(folder.parent):
        return str(rundir.read_config(folder.parent).method)
    return None
