"""`flantune sweep`: the runs of a 2 learning rates x 2 seeds sweep of the tiny model on real imdb rows, its report
held to a hand computation from the runs' saved predictions, resumption, parallel CPU processes, bad input."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from browser import chromium_page

from flantune.cli import main

SMALL = ["task=imdb", "model=tiny", "train.max_steps=2", "train.eval_steps=2", "train.logging_steps=1",
         "train.batch_size=4", "data.max_train_examples=32", "data.max_eval_examples=16",
         "tasks.imdb.max_input_length=64"]
SWEEP = [*SMALL, "train.lr=[1e-4,3e-2]", "seed=[1,2]"]
RUNS = ["00-lr_0.0001-seed_1", "01-lr_0.0001-seed_2", "02-lr_0.03-seed_1", "03-lr_0.03-seed_2"]
SETTINGS = {"train.lr=0.0001": RUNS[:2], "train.lr=0.03": RUNS[2:]}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, shared_data) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "sw"
    assert main(["sweep", *SWEEP, f"data_dir={shared_data}", f"output_dir={out}"]) == 0
    return out


def _accuracy(rows: list[dict]) -> float:
    return 100.0 * statistics.fmean(r["prediction"] == r["target"] for r in rows)


def _rows(folder: Path) -> list[dict]:
    lines = (folder / "predictions" / "imdb.jsonl").read_text(encoding="utf-8").split("\n")
    return sorted((json.loads(line) for line in lines if line), key=lambda r: r["id"])


@pytest.mark.slow
def test_runs_and_report_numbers(swept):
    assert sorted(p.name for p in (swept / "runs").iterdir()) == RUNS
    for name in RUNS:
        run = swept / "runs" / name
        config = (run / "config.yaml").read_text()
        assert (run / "metrics.json").is_file() and (run / "model").is_dir() and "split: validation" in config
    # every run on the same validation rows
    ids = {name: [r["id"] for r in _rows(swept / "runs" / name)] for name in RUNS}
    assert len({tuple(v) for v in ids.values()}) == 1 and len(ids[RUNS[0]]) == 16
    acc = {name: _accuracy(_rows(swept / "runs" / name)) for name in RUNS}
    for name in RUNS:  # the run's own metrics.json agrees with its predictions
        assert json.loads((swept / "runs" / name / "metrics.json").read_text())["score"] == pytest.approx(acc[name])
    report = json.loads((swept / "report" / "report.json").read_text())
    means = {}
    for setting, names in SETTINGS.items():
        got = report["settings"][setting]["primary"]["imdb"]
        values = [acc[n] for n in names]
        means[setting] = statistics.fmean(values)
        assert got["mean"] == pytest.approx(means[setting])
        assert got["sd"] == pytest.approx(statistics.stdev(values))
    best = max(means, key=means.get)  # the first of equal means
    assert report["best"] == best
    other = next(s for s in SETTINGS if s != best)
    d = report["differences"][other]["imdb"]
    assert d["diff"] == pytest.approx(means[other] - means[best]) and d["n"] == 32
    assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    # the held-out number: the best setting's runs, and only those, evaluated on test
    assert sorted(p.name for p in (swept / "test").iterdir()) == SETTINGS[best]
    test_acc = [_accuracy(_rows(swept / "test" / n)) for n in SETTINGS[best]]
    assert json.loads((swept / "test" / SETTINGS[best][0] / "metrics.json").read_text())["split"] == "test"
    assert report["test"]["score"]["mean"] == pytest.approx(statistics.fmean(test_acc))
    md = (swept / "report" / "report.md").read_text()
    assert f"Best setting by mean validation imdb accuracy: {best}" in md
    assert (swept / "report" / "images" / "training-curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_resuming_trains_nothing_finished_and_resumes_the_rest(swept, shared_data, capsys):
    kept = {p: p.stat().st_mtime_ns for name in RUNS[:3] for p in (swept / "runs" / name).rglob("*") if p.is_file()}
    (swept / "runs" / RUNS[3] / "metrics.json").unlink()  # as a run interrupted before its end leaves it
    # sweep.* keys say how the sweep runs, not what it runs: changed, it is the same sweep
    assert main(["sweep", *SWEEP, "sweep.max_runs=4", f"data_dir={shared_data}", f"output_dir={swept}"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: finished, skipped" in out for name in RUNS[:3])
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing of the finished runs was written again
    assert (swept / "runs" / RUNS[3] / "metrics.json").is_file()
    # a different sweep in the same folder is refused
    assert main(["sweep", *SMALL, "train.lr=[1e-4,1e-3]", f"data_dir={shared_data}", f"output_dir={swept}"]) == 2
    assert "holds another sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_cpu_processes(tmp_path, shared_data, capsys):
    out = tmp_path / "par"
    assert main(["sweep", *SMALL, "seed=[1,2]", "sweep.parallel=2", f"data_dir={shared_data}",
                 f"output_dir={out}"]) == 0
    said = capsys.readouterr().out
    assert "started on CPU process 0" in said and "started on CPU process 1" in said
    for name in ("00-seed_1", "01-seed_2"):
        assert (out / "runs" / name / "metrics.json").is_file()
        assert "run directory" in (out / "logs" / f"{name}.log").read_text()
    report = json.loads((out / "report" / "report.json").read_text())
    assert list(report["settings"]) == ["(one setting)"] and report["differences"] == {}


@pytest.mark.parametrize("options, said", [
    (["train.lr=[]"], "an empty list sweeps over nothing"),
    (["train.lrr=[1e-4,1e-3]"], "Unknown config key 'train.lrr'"),
    (["task=[[imdb],[samsum]]"], "task can't be swept"),
    (["data.max_eval_examples=[8,16]"], "can't be swept"),
    (["train.lr=[1e-4,2e-4,3e-4]", "seed=[1,2,3]", "sweep.max_runs=8"], "= 9 runs, more than sweep.max_runs=8"),
    (["train.lr=[0,1e-4]"], "a learning rate must be positive"),
    (["eval.split=test", "train.lr=[1e-4,1e-3]"], "the sweep evaluates its runs on validation"),
    (["train.lr=1e-4"], "needs a key given a list"),
])
def test_bad_input_exits_2_before_any_run(cli, tmp_path, options, said):
    out = tmp_path / "sw"
    code, _, err = cli("sweep", *SMALL, *options, "data_dir=@sample", f"output_dir={out}")
    assert code == 2 and said in " ".join(err.split())
    assert not out.exists()


@pytest.mark.slow
def test_chromium_shows_the_sweep_report(swept, tmp_path):
    from PIL import Image
    errors, requests = [], []
    with chromium_page(viewport={"width": 1200, "height": 900}) as page:
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((swept / "report" / "report.html").as_uri(), wait_until="load")
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        n_images, title = page.evaluate("document.images.length"), page.title()
        headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        shot = tmp_path / "sweep-report.png"
        page.screenshot(path=str(shot), full_page=True)
    assert errors == [] and all(u.startswith(("file://", "data:")) for u in requests), (errors, requests)
    assert (n_images, broken, title) == (1, 0, "flantune sweep report")
    assert headings == ["Settings", "Held-out test score of the best setting", "Training curves", "Runs"]
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] > 900 and np.mean(image.min(axis=2) < 250) > 0.02  # a whole page, not blank
