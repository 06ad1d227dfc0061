"""Where a task's rows come from: the Hugging Face hub, or a local mirror folder.

With `data_dir=DIR` (or FLANTUNE_DATA_DIR) a task reads DIR/<mirror>/<split>.parquet (or .jsonl /
.csv) instead of the hub. `data_dir=@sample` is the small IMDB sample shipped with flantune.
"""

from __future__ import annotations

import csv
import logging
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from flantune.errors import FlantuneError, did_you_mean, first_line
from flantune.hub import hub_unreachable
from flantune.splits import carve_apart, check_split_syntax
from flantune.task import ROLES, Task

MIRROR_SUFFIXES = (".parquet", ".jsonl", ".csv")
SAMPLE_DATA_DIR = "@sample"
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".csv": "csv"}
_FORMATS = {".parquet": "parquet", ".jsonl": "JSON lines", ".csv": "CSV"}


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


def _roles_reading(task: Task, split: str) -> list[str]:
    """The roles (train, validation, test) whose split spec reads `split`."""
    return [role for role in ROLES if split in check_split_syntax(task.splits[role])] or ["<role>"]


def _roles_text(task: Task, split: str) -> str:
    roles = _roles_reading(task, split)
    return " and ".join(roles) + (" roles" if len(roles) > 1 else " role")


def _carve_hint(task: Task, split: str, there: list[str]) -> str:
    """How to point the roles that read the missing `split` at splits that are there, keeping the three roles
    apart (tasks.x.splits.train='validation[:80%]' tasks.x.splits.validation='validation[80%:]')."""
    return _hint_text(task, carve_apart(dict(task.splits), task.holdout, there, set()))


def _hint_text(task: Task, specs: dict[str, str]) -> str:
    return " ".join(f"tasks.{task.name}.splits.{role}='{spec}'" for role, spec in specs.items())


def carve_hint(task: Task, roles: set[str], data_dir: Path | None) -> str:
    """The split overrides that carve `roles` (and the roles sharing their splits) apart, from the splits there are:
    the mirror's, or on the hub those the task reads. '' where nothing would change."""
    there = sorted(mirror_files(task, data_dir)) if data_dir is not None else \
        list(dict.fromkeys(s for r in ROLES for s in check_split_syntax(task.splits[r])))
    return _hint_text(task, carve_apart(dict(task.splits), task.holdout, there, roles))


def mirror_file(task: Task, split: str, data_dir: Path) -> Path:
    files = mirror_files(task, data_dir)
    if split in files:
        return files[split]
    folder = data_dir / task.source.mirror
    if files:
        fix = (f"Carve it from a split that is there with the hub's slicing syntax, e.g. "
               f"{_carve_hint(task, split, sorted(files))},")
    else:
        fix = f"Check data_dir, and that the task's folder there is named '{task.source.mirror}' (source.mirror),"
    raise FlantuneError(
        f"Task '{task.name}' needs split '{split}' (read by its {_roles_text(task, split)}), but the mirror {folder} "
        f"has no {split}.parquet/.jsonl/.csv (splits there: {', '.join(sorted(files)) or 'none'})."
        f"{did_you_mean(split, files)} {fix} or read from the hub by leaving data_dir unset."
    )


def mirror_sizes(task: Task, data_dir: Path) -> dict[str, int | None]:
    """Row counts of the mirror's splits, None for a file that can't be read (`flantune show` and runs say
    why): a parquet file's metadata, a JSON Lines file's non-blank lines, a CSV file's records (quoted
    fields may span lines). No data is loaded into tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sizes: dict[str, int | None] = {}
    for split, path in mirror_files(task, data_dir).items():
        try:
            if path.suffix == ".parquet":
                sizes[split] = pq.ParquetFile(path).metadata.num_rows
            elif path.suffix == ".csv":
                sizes[split] = _csv_rows(path)
            else:
                with path.open("rb") as f:
                    sizes[split] = sum(1 for line in f if line.strip())
        except (pa.ArrowException, csv.Error, UnicodeDecodeError, OSError):
            sizes[split] = None
    return sizes


def _csv_rows(path: Path) -> int:
    """A CSV file's records less the header, as datasets' reader (pandas) counts them: blank lines are no rows."""
    limit = csv.field_size_limit(2**31 - 1)  # csv's default, 128 KiB a field, is less than pandas reads
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            records = sum(1 for record in csv.reader(f) if any(field.strip() for field in record))
    finally:
        csv.field_size_limit(limit)
    return max(records - 1, 0)


def _has_no_rows(path: Path) -> bool:
    """Whether a mirror file holds no rows: 0 bytes, a 0-row parquet, a blank .jsonl or a header-only .csv.
    Reads a parquet file's metadata (an ArrowException if it is corrupt) or a text file's first lines."""
    if path.stat().st_size == 0:
        return True
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows == 0
    header_lines = 1 if path.suffix == ".csv" else 0
    seen = 0
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                seen += 1
                if seen > header_lines:
                    return False
    return True


def _read_mirror_file(task: Task, split: str, path: Path, data_dir: Path):
    import datasets
    import pyarrow as pa

    where = f"Task '{task.name}' reads split '{split}' (for its {_roles_text(task, split)}) from {path}"
    try:
        if not _has_no_rows(path):
            return _load_file(str(path), _BUILDERS[path.suffix])
    except (datasets.exceptions.DatasetGenerationError, pa.ArrowException, ValueError, StopIteration) as exc:
        # datasets wraps the reader's error: its cause says what is wrong with the file.
        generation = isinstance(exc, datasets.exceptions.DatasetGenerationError)
        cause = exc.__cause__ if generation and exc.__cause__ is not None else exc
        raise FlantuneError(
            f"{where}, which can't be read as {_FORMATS[path.suffix]} ({type(cause).__name__}: {first_line(cause)}). "
            "Replace it with a good copy of the split, or read from the hub by leaving data_dir unset."
        ) from exc
    others = sorted(s for s in mirror_files(task, data_dir) if s != split)
    carve = (f", carve it from another split with the hub's slicing syntax, e.g. {_carve_hint(task, split, others)},"
             if others else "")
    raise FlantuneError(
        f"{where}, which has no rows. Put the split's rows in that file{carve} or read from the hub by leaving "
        "data_dir unset."
    )


@lru_cache(maxsize=64)
def _load_file(path: str, builder: str):
    import datasets

    from flantune.console import no_datasets_bars

    # datasets' file readers log a bad file's error before raising it; the FlantuneError says it in full.
    readers = logging.getLogger("datasets.packaged_modules")
    level = readers.level
    readers.setLevel(logging.CRITICAL)
    try:
        with no_datasets_bars():  # a local file reads in moments: its "Generating data split" bar is noise
            return datasets.load_dataset(builder, data_files={"data": path}, split="data")
    finally:
        readers.setLevel(level)


@lru_cache(maxsize=64)
def _load_hub(hub: str, config: str | None, revision: str | None, split: str):
    import datasets

    return datasets.load_dataset(hub, config, revision=revision, split=split)


def load_split(task: Task, split: str, data_dir: Path | None):
    """One whole split of the task's dataset, as a datasets.Dataset (memory-mapped Arrow)."""
    if data_dir is not None:
        return _read_mirror_file(task, split, mirror_file(task, split, data_dir), data_dir)
    if not task.source.hub:
        raise FlantuneError(
            f"Task '{task.name}' ({task.origin}) has no hub dataset (source.hub); give data_dir=DIR with its "
            f"mirror folder '{task.source.mirror}'."
        )
    unreachable = hub_unreachable()  # asked once: an unreachable hub is then read from the cache, not retried
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
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no details'})"
            f"{'; the hub ' + unreachable if unreachable else ''}. To run offline, "
            f"point data_dir=DIR (or FLANTUNE_DATA_DIR) at a folder with {task.source.mirror or '<mirror>'}/"
            f"<split>.parquet files, or pre-download the dataset and set HF_DATASETS_OFFLINE=1."
        ) from exc
