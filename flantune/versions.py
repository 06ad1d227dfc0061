"""The version of the files flantune saves in a directory, and the upgrades that read older ones as the current
version, in one place: config.yaml (its version is the one its directory's .flantune mark records, rundir.mark)
and metrics.json (its own "schema_version", flantune.outputs). Files without a version are version 1.

A change to a saved file's keys raises SCHEMA_VERSION and adds the upgrade from the version before it, which
sets what the older files meant (a key added since: the behaviour runs had before it).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

SCHEMA_VERSION = 3


def _config_from_1(saved: DictConfig) -> None:
    """Version 1 covers every run before the version number, each with the keys of its day: a key added since
    is set to what runs did before it, so that resuming an older run asks for its own behaviour rather than
    silently taking the new default."""
    train = saved.get("train")
    if not isinstance(train, DictConfig):
        return
    if "loss_normalization" not in train:  # each step's token mean, before train.loss_normalization
        train.loss_normalization = "batch"
    if "micro_batches" not in train:  # a step was one forward pass per process before train.micro_batches,
        tasks = saved.get("task")  # which is what auto still is but for a mixture's grouped or packed batches
        mixture = OmegaConf.is_list(tasks) and len(set(tasks)) > 1
        train.micro_batches = 1 if mixture and train.get("sampling") != "random" else "auto"
    data = saved.get("data")
    if isinstance(data, DictConfig) and "eval_seed" not in data:  # evaluation subsets were drawn with the run's seed
        data.eval_seed = saved.get("seed")
    if isinstance(data, DictConfig) and "allow_overlap" not in data:  # no overlap was checked: none was allowed
        data.allow_overlap = False
    if "lr_scheduler_kwargs" not in train:
        train.lr_scheduler_kwargs = {}
    if "packed_rows_per_batch" not in train and train.get("sampling") == "packed":
        train.packed_rows_per_batch = train.get("batch_size")  # batch_size counted packed rows before the key


def _metrics_from_1(metrics: dict) -> None:
    """Version 1: an evaluation's metrics.json lacked the model's method and type and the training keys (None:
    nothing trained), a run's the keys it had nothing to say under; neither said whether it was measured together."""
    model = metrics.setdefault("model", {})
    for key in ("name", "label", "path", "random_init", "model_type", "method"):
        model.setdefault(key, None)
    for key in ("split", "tasks", "score", "precision", "trainable_parameters", "total_parameters", "eval", "train",
                "wall_time_s", "data_prep_seconds", "best_checkpoint", "mixture", "step"):
        metrics.setdefault(key, None)
    metrics.setdefault("allowed_overlap", {})
    metrics.setdefault("measured_together", False)


def _config_from_2(saved: DictConfig) -> None:
    """Version 2: before eval.templates and eval.fewshot, an evaluation was on the eval_template alone, zero-shot;
    and there was no early stopping and no method beyond full and lora: patience 0, and the new methods' sections
    as defaults.yaml has them (no such run used them)."""
    from flantune.config_files import configs_root, read_yaml

    evaluation = saved.get("eval")
    if isinstance(evaluation, DictConfig):
        evaluation.setdefault("templates", None)
        evaluation.setdefault("fewshot", 0)
    defaults = read_yaml(configs_root() / "defaults.yaml", "Default config")
    train = saved.get("train")
    if isinstance(train, DictConfig):
        train.setdefault("early_stopping_patience", 0)
        train.setdefault("early_stopping_threshold", 0.0)
    for section in ("qlora", "adalora", "ia3", "prompt_tuning"):
        if section not in saved:
            saved[section] = defaults[section]


def _metrics_from_2(metrics: dict) -> None:
    """Version 2: no "templates" (one template was evaluated), no "fewshot" (zero-shot), no early stopping."""
    metrics.setdefault("templates", None)
    metrics.setdefault("fewshot", None)
    metrics.setdefault("early_stopping", None)


# version -> its change to the next version, in place (none where that version changed only the other file)
_CONFIG_UPGRADES = {1: _config_from_1, 2: _config_from_2}
_METRICS_UPGRADES = {1: _metrics_from_1, 2: _metrics_from_2}


def _upgraded(data: Any, version: int, upgrades: dict) -> Any:
    for step in range(version, SCHEMA_VERSION):
        if step in upgrades:
            upgrades[step](data)
    return data


def upgrade_config(saved: DictConfig, version: int) -> DictConfig:
    """A saved config of `version`, in the current version's keys."""
    return _upgraded(saved, version, _CONFIG_UPGRADES)


def upgrade_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json, in the current version's keys."""
    _upgraded(metrics, int(metrics.get("schema_version", 1)), _METRICS_UPGRADES)
    metrics["schema_version"] = SCHEMA_VERSION
    return metrics
