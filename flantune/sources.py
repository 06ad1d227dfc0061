"""Where a task's rows come from: the Hugging Face hub, or a local mirror folder.

With `data_dir=DIR` (or FLANTUNE_DATA_DIR) a task reads DIR/<mirror>/<split>.parquet (or .jsonl /
.csv) instead of the hub. `data_dir=@sample` is the small IMDB sample shipped with flantune.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from flantune.errors import FlantuneError, did_you_mean
from flantune.task import Task

MIRROR_SUFFIXES = (".parquet", ".jsonl", ".csv")
SAMPLE_DATA_DIR = "@sample"
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".csv": "csv"}


def sample_data_dir() -> Path:
    return Path(str(resources.files("flantune") / "assets" / "sample"))


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The mirror folder to read, from the setting or FLANTUNE_DATA_DIR; None means the hub."""
    value = data_dir if data_dir not in (None, "") else os.environ.get("FLANTUNE_DATA_DIR") or None
    if value is None:
        return None
    if str(value) == SAMPLE_DATA_DIR:
        return sample_data_dir()
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FlantuneError(
            f"data_dir '{value}' is not a folder. Point data_dir (or FLANTUNE_DATA_DIR) at a folder holding "
            f"<mirror>/<split>.parquet files, use data_dir={SAMPLE_DATA_DIR} for the IMDB sample shipped with "
            "flantune, or leave it unset to read from the Hugging Face hub."
        )
    return path


def mirror_files(task: Task, data_dir: Path) -> dict[str, Path]:
    """split name -> file, for the task's mirror folder under data_dir."""
    if not task.source.mirror:
        raise FlantuneError(
            f"Task '{task.name}' ({task.origin}) declares no mirror folder (source.mirror), so it can't be read "
            f"from data_dir={data_dir}. Add source.mirror to the task file, or unset data_dir to use the hub."
        )
    folder = data_dir / task.source.mirror
    files: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix in MIRROR_SUFFIXES and path.stem not in files:
                files[path.stem] = path
    return files


def mirror_file(task: Task, split: str, data_dir: Path) -> Path:
    files = mirror_files(task, data_dir)
    if split in files:
        return files[split]
    folder = data_dir / task.source.mirror
    there = ", ".join(sorted(files)) if files else "none"
    raise FlantuneError(
        f"Task '{task.name}' needs split '{split}', but the mirror {folder} has no {split}.parquet/.jsonl/.csv "
        f"(splits there: {there}).{did_you_mean(split, files)} Carve it from a split that is there with the hub's "
        f"slicing syntax, e.g. tasks.{task.name}.splits.train='{next(iter(files), 'validation')}[:80%]', "
        "or read from the hub by leaving data_dir unset."
    )


def mirror_sizes(task: Task, data_dir: Path) -> dict[str, int]:
    """Row counts of the mirror's splits, read from parquet metadata (cheap: no data is loaded)."""
    import pyarrow.parquet as pq

    sizes = {}
    for split, path in mirror_files(task, data_dir).items():
        if path.suffix == ".parquet":
            sizes[split] = pq.ParquetFile(path).metadata.num_rows
    return sizes


@lru_cache(maxsize=64)
def _load_file(path: str, builder: str):
    import datasets

    return datasets.load_dataset(builder, data_files={"data": path}, split="data")


@lru_cache(maxsize=64)
def _load_hub(hub: str, config: str | None, revision: str | None, split: str):
    import datasets

    return datasets.load_dataset(hub, config, revision=revision, split=split)


def load_split(task: Task, split: str, data_dir: Path | None):
    """One whole split of the task's dataset, as a datasets.Dataset (memory-mapped Arrow)."""
    if data_dir is not None:
        path = mirror_file(task, split, data_dir)
        return _load_file(str(path), _BUILDERS[path.suffix])
    if not task.source.hub:
        raise FlantuneError(
            f"Task '{task.name}' ({task.origin}) has no hub dataset (source.hub); give data_dir=DIR with its "
            f"mirror folder '{task.source.mirror}'."
        )
    try:
        return _load_hub(task.source.hub, task.source.config, task.source.revision, split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise FlantuneError(
                f"Task '{task.name}': the hub dataset {task.source.hub} has no split '{split}' ({exc}). "
                f"Override the split with tasks.{task.name}.splits.<role>=..."
            ) from exc
        raise
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise FlantuneError(
            f"Could not load dataset {task.source.hub} for task '{task.name}' from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no details'}). To run offline, "
            f"point data_dir=DIR (or FLANTUNE_DATA_DIR) at a folder with {task.source.mirror or '<mirror>'}/"
            f"<split>.parquet files, or pre-download the dataset and set HF_DATASETS_OFFLINE=1."
        ) from exc
