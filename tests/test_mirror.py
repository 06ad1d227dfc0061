"""`flantune mirror`: a task's hub splits written as the data_dir layout that runs read offline.

The hub is stood in for by a local folder named as the task's hub id, in the current directory, which
datasets.load_dataset (called by the same code as a run without data_dir) reads in place of the hub."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
from datasets import Dataset

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "examples" / "plugin_folder"
HUB_ID = "cornell-movie-review-data/rotten_tomatoes"  # examples/plugin_folder/rotten_tomatoes.yaml's source.hub
ROWS = {"train": 120, "validation": 40, "test": 30}


def _local_hub(shared_data: Path, where: Path) -> Path:
    """The first rows of each rotten_tomatoes split, with their datasets schema metadata, at where/HUB_ID."""
    folder = where / HUB_ID
    folder.mkdir(parents=True)
    for split, n in ROWS.items():
        pq.write_table(pq.read_table(shared_data / "rotten_tomatoes" / f"{split}.parquet").slice(0, n),
                       folder / f"{split}.parquet")
    return folder


def test_mirror_writes_the_layout_a_run_reads(cli, shared_data, tmp_path, monkeypatch):
    hub = _local_hub(shared_data, tmp_path / "hub")
    monkeypatch.chdir(tmp_path / "hub")
    data = tmp_path / "offline"
    code, out, err = cli("mirror", "task=rotten_tomatoes", f"tasks_dir={PLUGINS}", f"data_dir={data}")
    assert code == 0, err
    mirror = data / "rotten_tomatoes"
    assert sorted(p.name for p in mirror.iterdir()) == ["SOURCE.md", "test.parquet", "train.parquet",
                                                        "validation.parquet"]
    source = (mirror / "SOURCE.md").read_text()
    assert f"- dataset: {HUB_ID}" in source and "- revision: none: " in source
    for split, n in ROWS.items():
        copied, original = mirror / f"{split}.parquet", hub / f"{split}.parquet"
        assert pq.read_table(copied).to_pylist() == pq.read_table(original).to_pylist()
        assert Dataset.from_parquet(str(copied)).features == Dataset.from_parquet(str(original)).features
        assert f"| {split} | {n} | {split}.parquet |" in source
    assert Dataset.from_parquet(str(mirror / "train.parquet")).features["label"].names == ["neg", "pos"]

    monkeypatch.chdir(tmp_path)  # the mirror is read without the stand-in hub
    code, out, err = cli("validate", "task=rotten_tomatoes", f"tasks_dir={PLUGINS}", f"data_dir={data}")
    assert code == 0, err
    code, out, err = cli("tasks", f"tasks_dir={PLUGINS}", f"data_dir={data}")
    assert f"train: train ({ROWS['train']})" in out

    # an existing mirror folder is replaced only with overwrite=true
    monkeypatch.chdir(tmp_path / "hub")
    (mirror / "stale.parquet").write_text("not from the hub")
    code, _, err = cli("mirror", "task=rotten_tomatoes", f"tasks_dir={PLUGINS}", f"data_dir={data}")
    assert code == 2 and f"{mirror} exists already" in err and "overwrite=true" in err
    code, _, err = cli("mirror", "task=rotten_tomatoes", f"tasks_dir={PLUGINS}", f"data_dir={data}",
                       "overwrite=true")
    assert code == 0, err
    assert not (mirror / "stale.parquet").exists() and (mirror / "train.parquet").is_file()
    assert sorted(p.name for p in data.iterdir()) == ["rotten_tomatoes"]  # nothing left beside it


def test_mirror_offline_names_the_task_and_where_to_run_it(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("mirror", "task=imdb", f"data_dir={tmp_path / 'offline'}")
    assert code == 2
    assert "Task 'imdb': its dataset stanfordnlp/imdb" in err and "where the hub is reachable" in err
    assert not (tmp_path / "offline" / "imdb").exists()
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
