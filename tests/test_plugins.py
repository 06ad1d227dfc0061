"""Tasks added without touching flantune: a folder of task files and an installed plugin package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flantune.data import load_rows, preprocess_digest, render_row
from flantune.features import tokenize
from flantune.metrics import compute
from flantune.registry import discover
from flantune.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
FOLDER_PLUGIN = REPO / "examples" / "plugin_folder"
PACKAGE_PLUGIN = REPO / "examples" / "plugin_package"


def test_folder_plugin_is_listed_renders_and_evaluates(cli, shared_data):
    code, out, _ = cli("tasks", f"tasks_dir={FOLDER_PLUGIN}", f"data_dir={shared_data}")
    assert code == 0
    assert "rotten_tomatoes" in out and "plugin_folder/rotten_tomatoes.yaml" in out
    task = discover(FOLDER_PLUGIN).get("rotten_tomatoes")
    rows = load_rows(task, "test", shared_data)
    assert len(rows) == 1066
    rendered = [render_row(task, rows[i], task.evaluation_template) for i in range(len(rows))]
    # A system that always answers "positive" is right on exactly the 533 positive rows.
    scores = compute(task.metrics, ["positive"] * len(rendered), [r["references"] for r in rendered],
                     task.choice_texts)
    assert scores["accuracy"] == pytest.approx(50.0)


def test_tasks_path_env_works_like_tasks_dir(monkeypatch):
    monkeypatch.setenv("FLANTUNE_TASKS_PATH", str(FOLDER_PLUGIN))
    assert discover().get("rotten_tomatoes").origin.endswith("rotten_tomatoes.yaml")


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """The example plugin package, pip-installed into a folder that goes on PYTHONPATH."""
    target = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(PACKAGE_PLUGIN, src)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(src)],
        check=True,
    )
    return target


def _flantune(args, pythonpath: Path, extra_env=None):
    env = {**os.environ, "PYTHONPATH": str(pythonpath), **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "flantune", *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_entry_point_plugin_is_listed_renders_and_evaluates(installed_plugin, shared_data):
    proc = _flantune(["tasks", f"data_dir={shared_data}"], installed_plugin)
    assert proc.returncode == 0, proc.stderr
    assert "rt_polarity" in proc.stdout and "flantune-rt-polarity" in proc.stdout
    proc = _flantune(["show", "task=rt_polarity", "n=2", "split=validation", f"data_dir={shared_data}"],
                     installed_plugin)
    assert proc.returncode == 0, proc.stderr
    assert "Did the reviewer like the movie?" in proc.stdout
    code = (
        "from flantune.registry import discover; from flantune.data import load_rows, render_row;"
        "from flantune.metrics import compute; import sys;"
        "t = discover().get('rt_polarity'); rows = load_rows(t, 'validation', sys.argv[1]);"
        "refs = [render_row(t, r, t.evaluation_template)['references'] for r in rows];"
        "print(compute(t.metrics, ['no'] * len(refs), refs, t.choice_texts)['accuracy'])"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(shared_data)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(installed_plugin)})
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) == pytest.approx(50.0)  # 533 of 1,066 validation rows are negative ("no")


@pytest.mark.slow
def test_broken_plugins_are_reported_without_breaking_the_rest(tmp_path, installed_plugin):
    folder = tmp_path / "tasks"
    folder.mkdir()
    shutil.copy(FOLDER_PLUGIN / "rotten_tomatoes.yaml", folder)
    (folder / "broken.yaml").write_text("name: broken\nkind: classification\ndescriptoin: typo\n")
    # A plugin package whose module fails to import.
    bad = tmp_path / "site"
    (bad / "bad_plugin").mkdir(parents=True)
    (bad / "bad_plugin" / "__init__.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    dist = bad / "bad_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[flantune.tasks]\nbad = bad_plugin\n")
    proc = _flantune(["tasks", f"tasks_dir={folder}"], Path(f"{installed_plugin}{os.pathsep}{bad}"))
    # Listed with what loaded, and a failure in the exit code for a script or CI that runs `flantune tasks`.
    assert proc.returncode == 2 and "2 task source(s) failed to load" in proc.stderr, proc.stderr
    out = proc.stdout.replace("\n", " ")
    for name in ("rotten_tomatoes", "rt_polarity", "imdb", "samsum"):
        assert name in out
    assert "2 task source(s) failed to load" in out
    assert "descriptoin" in out and "this plugin is broken on purpose" in out


def test_a_broken_task_file_is_the_error_when_that_task_is_asked_for(tmp_path, cli):
    (tmp_path / "broken.yaml").write_text("name: broken\nkind: classification\ndescriptoin: typo\n")
    code, _, err = cli("show", "task=broken", f"tasks_dir={tmp_path}")
    assert code == 2
    assert "broken.yaml" in err and "'descriptoin'" in err and "description" in err


def test_two_tasks_with_one_name_is_an_error_naming_both_origins(tmp_path, cli):
    text = (FOLDER_PLUGIN / "rotten_tomatoes.yaml").read_text().replace("name: rotten_tomatoes", "name: imdb")
    (tmp_path / "my_imdb.yaml").write_text(text)
    code, _, err = cli("show", "task=imdb", f"tasks_dir={tmp_path}")
    assert code == 2
    err = err.replace("\n", " ")
    assert "Two tasks are named 'imdb'" in err and "built-in" in err and "my_imdb.yaml" in err


HOOK_TASK = """
name: rt_short
description: rotten_tomatoes snippets under 60 characters, shouted
kind: classification
source: {mirror: rotten_tomatoes}
splits: {train: train, validation: validation, test: test}
label_column: %s
choices: {0: negative, 1: positive}
preprocess: rt_hook:shout
filter: short
templates:
  - name: shout
    input: "{{ loud }} Positive or negative?"
metrics: [accuracy]
primary_metric: accuracy
"""


def test_preprocessing_hook_feeds_templates_and_the_filter_but_not_the_label(tmp_path, monkeypatch, cli,
                                                                                shared_data):
    (tmp_path / "rt_hook.py").write_text(  # the comment makes the hook, so its cache key, new in every run
        f"# {tmp_path}\n" "def shout(row):\n    return {**row, 'loud': row['text'].upper(), 'short': len(row['text']) < 60}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "rt_short.yaml").write_text(HOOK_TASK % "label")
    task = discover(tasks).get("rt_short")
    rows = load_rows(task, "test", shared_data)
    texts = rows["text"]
    expected = sum(len(t) < 60 for t in load_rows(discover(FOLDER_PLUGIN).get("rotten_tomatoes"), "test",
                                                   shared_data)["text"])
    assert 0 < len(rows) == expected < 1066  # the filter read the hook's column
    assert all(len(t) < 60 for t in texts)
    rendered = render_row(task, rows[0], task.evaluation_template)
    assert rendered["input"] == f"{texts[0].upper()} Positive or negative?"
    tokenizer = load_tokenizer(None)
    features = tokenize(task, rows, tokenizer, role="test", template_seed=None)
    assert features[0]["input"] == rendered["input"]
    first_fingerprint = features._fingerprint

    # Cached filter and tokenisation results are keyed on the hook's source: editing it invalidates them.
    before = preprocess_digest(task)
    (tmp_path / "rt_hook.py").write_text((tmp_path / "rt_hook.py").read_text().replace("< 60", "< 70"))
    assert preprocess_digest(task) != before
    assert tokenize(task, rows, tokenizer, role="test", template_seed=None)._fingerprint != first_fingerprint

    # The label is read from the data, so a column only the hook makes can't be the label column.
    (tasks / "rt_short.yaml").write_text(HOOK_TASK % "short")
    code, _, err = cli("show", "task=rt_short", f"tasks_dir={tasks}", f"data_dir={shared_data}")
    assert code == 2
    assert "label_column reads column 'short', which the data does not have" in err
    assert "must name a column of the data" in err


def test_an_unknown_task_error_names_the_plugins_that_failed_to_load():
    """On the GPU machine `-m flantune` from the checkout's root missed the built-in tasks' package, and the
    error said only "Unknown task 'samsum'. Known tasks: ." The failure that hid the task is now in it."""
    from flantune.errors import FlantuneError
    from flantune.registry import Problem, Registry

    registry = Registry()
    registry.problems.append(Problem("plugin flantune (entry point builtin = flantune._builtin_tasks)",
                                     "The task plugin flantune failed to load: ModuleNotFoundError: No module "
                                     "named 'flantune._builtin_tasks'"))
    with pytest.raises(FlantuneError) as caught:
        registry.finish().get("samsum")
    message = str(caught.value)
    assert "Known tasks: none." in message
    assert "1 task plugin(s) failed to load" in message and "flantune._builtin_tasks" in message


def _empty_parquet(path: Path, shared_data: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(shared_data / "rotten_tomatoes" / "test.parquet").slice(0, 0), path)


BAD_TEST_FILES = {  # the test split's file -> what the error says about it
    "empty.parquet": ("test.parquet", _empty_parquet, "which has no rows"),
    "empty.jsonl": ("test.jsonl", b"", "which has no rows"),
    "header_only.csv": ("test.csv", b"text,label\n", "which has no rows"),
    "corrupt.parquet": ("test.parquet", b"not a parquet file at all", "which can't be read as parquet (ArrowInvalid: "),
    "malformed.jsonl": ("test.jsonl", b'{"text": "a", "label": 0}\n{not json\n',
                        "which can't be read as JSON lines (ArrowInvalid: JSON parse error"),
    "ragged.csv": ("test.csv", b"text,label\na,0\nb,1,2,3\n", "which can't be read as CSV (ParserError: "),
}


@pytest.mark.parametrize("case", sorted(BAD_TEST_FILES))
def test_an_empty_or_unreadable_mirror_file_is_an_error_naming_the_file(case, tmp_path, cli, shared_data):
    name, content, expected = BAD_TEST_FILES[case]
    mirror = tmp_path / "data" / "rotten_tomatoes"
    mirror.mkdir(parents=True)
    for split in ("train", "validation"):
        (mirror / f"{split}.parquet").symlink_to(shared_data / "rotten_tomatoes" / f"{split}.parquet")
    if callable(content):
        content(mirror / name, shared_data)
    else:
        (mirror / name).write_bytes(content)
    code, _, err = cli("show", "task=rotten_tomatoes", "split=test", f"tasks_dir={FOLDER_PLUGIN}",
                       f"data_dir={tmp_path / 'data'}")
    assert "Failed to" not in err  # datasets' reader logs its failure; flantune keeps that quiet and says it once
    err = " ".join(err[err.index("flantune show: error:"):].split())  # after datasets' progress bar
    assert code == 2 and "Traceback" not in err
    assert f"Task 'rotten_tomatoes' reads split 'test' (for its test role) from {mirror / name}, {expected}" in err
    if "no rows" in expected:
        # validation and test carved apart: the old hint, test='validation[80%:]', left them sharing those rows
        assert "tasks.rotten_tomatoes.splits.validation='validation[:50%]' " \
               "tasks.rotten_tomatoes.splits.test='validation[50%:]'" in err
    else:
        assert "Replace it with a good copy of the split" in err
    code, out, _ = cli("tasks", f"tasks_dir={FOLDER_PLUGIN}", f"data_dir={tmp_path / 'data'}")
    assert code == 0 and "rotten_tomatoes" in out  # the listing still works


def test_a_missing_mirror_split_hint_names_the_role_that_reads_it(cli, shared_data):
    code, _, err = cli("show", "task=mlqa_hi_en", "split=test", f"data_dir={shared_data}")  # the mirror has validation
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "needs split 'test' (read by its test role)" in err and "has no test.parquet" in err
    # train (validation less the holdout) carved apart from test too: the old hint, test='validation[80%:]'
    # alone, tested on training rows
    assert "tasks.mlqa_hi_en.splits.train='validation[:80%]' tasks.mlqa_hi_en.splits.test='validation[80%:]'" in err
    assert "splits.validation" not in err  # the holdout keeps validation apart


def _rt_file(folder: Path, file_name: str = "rotten_tomatoes.yaml", **changes) -> Path:
    """The folder plugin's rotten_tomatoes task with fields changed (None removes one), written to folder/file_name."""
    import yaml

    data = yaml.safe_load((FOLDER_PLUGIN / "rotten_tomatoes.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file_name).write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


BROKEN_RT = {  # a field changed -> words of the error it gives
    "metric": ({"metrics": ["accuracy", "acuracy"]}, "unknown metric 'acuracy'"),
    "jinja": ({"templates": [{"name": "t", "input": "{{ text "}]}, "is not valid Jinja2"),
    "choices": ({"choices": None}, "field 'choices' must map each label id"),
    "kind": ({"kind": "clasification"}, "Did you mean 'classification'?"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_RT))
def test_a_broken_task_file_named_otherwise_is_the_error_for_the_task_it_names(case, tmp_path, cli):
    changes, expected = BROKEN_RT[case]
    _rt_file(tmp_path, "rt.yaml", **changes)
    code, _, err = cli("show", "task=rotten_tomatoes", f"tasks_dir={tmp_path}")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err and "Unknown task" not in err
    assert "Malformed task file" in err and "rt.yaml" in err and expected in err


def test_an_unknown_task_error_names_the_task_files_that_failed_to_load(tmp_path, cli):
    _rt_file(tmp_path, "rt.yaml", metrics=["acuracy"])
    (tmp_path / "unparsable.yaml").write_text("name: [rotten\n")
    code, _, err = cli("show", "task=rotten_tomato", f"tasks_dir={tmp_path}")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "Unknown task 'rotten_tomato'. Did you mean 'rotten_tomatoes'?" in err
    assert f"1 task file(s) failed to load: {tmp_path / 'rt.yaml'} (task 'rotten_tomatoes')" in err
    # A file that failed before naming its task may hold the one asked for: its problem is in the error.
    assert "1 task file(s) failed to load before naming their task and may hold it" in err
    assert "unparsable.yaml: it is not valid YAML at line 2" in err


def test_a_plugin_task_dict_that_fails_is_the_error_for_its_name_and_skips_only_itself():
    from types import SimpleNamespace

    from flantune.errors import FlantuneError
    from flantune.registry import Registry, _add_entry_point
    from flantune.task import task_to_dict

    good = task_to_dict(discover(FOLDER_PLUGIN).get("rotten_tomatoes"))
    bad = {**good, "name": "rt_bad", "metrics": ["acuracy"]}
    ep = SimpleNamespace(name="rt", value="rt_plugin:tasks", dist=None, load=lambda: [bad, good])
    registry = Registry()
    _add_entry_point(registry, ep)
    registry.finish()
    assert "rotten_tomatoes" in registry.tasks
    with pytest.raises(FlantuneError, match="unknown metric 'acuracy'"):
        registry.get("rt_bad")


# Bad input is a one-paragraph error (exit code 2) before any heavy work. Runs name a data_dir that doesn't exist
# (checked just after the tasks), so that a check that lets bad input through fails fast instead of training.
FAIL_FAST = ("model=tiny", "data_dir=/nonexistent/data")


def test_a_holdout_from_a_split_no_role_reads_is_an_error(tmp_path, cli, registry):
    holdout = {"from": "trian", "to": "validation", "size": 0.1, "seed": 0}
    _rt_file(tmp_path, splits={"train": "train", "validation": "train", "test": "test"}, holdout=holdout)
    code, _, err = cli("show", "task=rotten_tomatoes", f"tasks_dir={tmp_path}")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "field 'holdout.from' must name a split the task's splits read (test, train), got 'trian'." in err
    assert "Did you mean 'train'?" in err
    code, _, err = cli("run", "task=imdb", *FAIL_FAST, "tasks.imdb.holdout.from=trian")
    err = " ".join(err.split())
    assert code == 2 and "tasks.imdb.holdout.from" in err and "got 'trian'" in err
    # Carving every role from other splits leaves the task file's holdout as it was: not an error.
    carved = registry.get("imdb").with_overrides({"splits": {"train": "test[:80%]", "validation": "test[80%:90%]",
                                                             "test": "test[90%:]"}})
    assert carved.holdout == registry.get("imdb").holdout


def test_a_task_override_that_is_not_a_mapping_is_an_error(cli):
    code, _, err = cli("run", "task=imdb", *FAIL_FAST, "tasks.imdb=5")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "tasks.imdb must be a mapping of task fields, e.g. tasks.imdb.max_input_length=256" in err


def test_a_bad_task_override_names_the_task_and_the_override(cli):
    code, _, err = cli("run", "task=imdb", *FAIL_FAST, "tasks.imdb.max_input_length=abc")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err and "Malformed task file" not in err
    assert ("Task 'imdb' (built-in) as changed on the command line by tasks.imdb.max_input_length: "
            "field 'max_input_length' must be a whole number >= 1, got 'abc'.") in err
