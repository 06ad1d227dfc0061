"""`flantune mirror`: a task's hub splits written as the data_dir layout that runs read offline.

The hub is stood in for by a local folder named as the task's hub id, in the current directory, which
datasets.load_dataset (called with the task's hub id, config and revision by the same code as a run without
data_dir) reads in place of the hub."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Dataset

from flantune.mirror import split_names
from flantune.sources import _load_hub
from flantune.task import Task

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _readme_command() -> list[str]:
    """The README's `flantune mirror` example, as the words after `flantune`."""
    section = README.split("\n### A mirror for air-gapped clusters\n", 1)[1].split("\n#", 1)[0]
    line = next(line for line in section.splitlines() if line.startswith("flantune mirror "))
    return shlex.split(line, comments=True)[1:]


def _local_hub(shared_data: Path, task: Task, rows: int) -> Path:
    """A stand-in for the task's hub dataset, in the current directory under its hub id: `rows` rows of each split
    it reads, from the shared mirror (with their datasets schema metadata), and a dataset card declaring its
    config as the hub's does."""
    folder = Path(task.source.hub)
    folder.mkdir(parents=True)
    files = []
    for split in split_names(task):
        table = pq.read_table(shared_data / task.source.mirror / f"{split}.parquet")
        pq.write_table(table.take(np.linspace(0, len(table) - 1, rows).astype(int)), folder / f"{split}.parquet")
        files.append({"split": split, "path": f"{split}.parquet"})
    card = {"configs": [{"config_name": task.source.config, "data_files": files}]}
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(card)}---\n")
    return folder


@pytest.fixture
def forget_hub_loads():
    """A process reads each hub split once (sources keeps it): the stand-in's, kept, would answer the other tests
    that expect no hub."""
    yield
    _load_hub.cache_clear()


def test_the_readme_mirror_writes_the_layout_a_run_reads(cli, registry, shared_data, tmp_path, monkeypatch,
                                                         forget_hub_loads):
    words = _readme_command()
    names = dict(w.split("=", 1) for w in words[1:])["task"].split(",")
    tasks = [registry.get(name) for name in names]
    assert {t.source.config for t in tasks} and any(t.source.revision for t in tasks)  # what load_dataset is asked
    monkeypatch.chdir(tmp_path)
    # datasets caches a local folder by its files' names, not their rows: a cache of its own
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    hubs = [_local_hub(shared_data, task, 60) for task in tasks]
    code, out, err = cli(*words)
    assert code == 0, err
    data = tmp_path / dict(w.split("=", 1) for w in words[1:])["data_dir"]
    for task, hub in zip(tasks, hubs):
        mirror = data / task.source.mirror
        splits = split_names(task)
        assert sorted(p.name for p in mirror.iterdir()) == sorted(["SOURCE.md", *(f"{s}.parquet" for s in splits)])
        source = (mirror / "SOURCE.md").read_text()
        assert f"- dataset: {task.source.hub}" in source and f"- config: {task.source.config}" in source
        assert "- revision: none: " in source  # a local folder stood in for the hub
        for split in splits:
            copied, original = mirror / f"{split}.parquet", hub / f"{split}.parquet"
            assert pq.read_table(copied).to_pylist() == pq.read_table(original).to_pylist()
            assert Dataset.from_parquet(str(copied)).features == Dataset.from_parquet(str(original)).features
            assert f"| {split} | 60 | {split}.parquet |" in source
    assert Dataset.from_parquet(str(data / "imdb" / "train.parquet")).features["label"].names == ["neg", "pos"]

    for hub in hubs:  # the mirror is read without the stand-in hub
        shutil.rmtree(hub)
    code, out, err = cli("validate", f"task=[{','.join(names)}]", f"data_dir={data}")
    assert code == 0, err

    # an existing mirror folder is replaced only with overwrite=true
    hubs = [_local_hub(shared_data, task, 60) for task in tasks]
    mirror = data / tasks[0].source.mirror
    (mirror / "stale.parquet").write_text("not from the hub")
    code, _, err = cli(*words)
    assert code == 2 and f"{mirror.relative_to(tmp_path)} exists already" in err and "overwrite=true" in err
    code, _, err = cli(*words, "overwrite=true")
    assert code == 0, err
    assert not (mirror / "stale.parquet").exists() and (mirror / "train.parquet").is_file()
    assert sorted(p.name for p in data.iterdir()) == sorted(t.source.mirror for t in tasks)  # nothing beside them


def test_mirror_offline_names_the_task_and_where_to_run_it(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("mirror", "task=emotion", f"data_dir={tmp_path / 'offline'}")
    assert code == 2
    assert "Task 'emotion': its dataset dair-ai/emotion" in err and "where the hub is reachable" in err
    assert not (tmp_path / "offline" / "emotion").exists()
    code, _, err = cli("mirror", "task=imdb", "data_dir=@sample")
    assert code == 2 and "not a folder to write" in err


def test_source_md_records_the_commit_read(registry, monkeypatch):
    import huggingface_hub

    from flantune.mirror import revision_read

    asked = []

    def dataset_info(self, repo_id, revision=None, **kwargs):
        asked.append((repo_id, revision))
        return SimpleNamespace(sha="0123abcd" * 5)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    samsum = registry.get("samsum")  # read at refs/convert/parquet
    assert revision_read(samsum) == f"{'0123abcd' * 5} (refs/convert/parquet)"
    assert asked == [("Samsung/samsum", "refs/convert/parquet")]
