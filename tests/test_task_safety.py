"""A task file is data from a stranger: its Jinja runs in a sandbox, its mirror stays inside data_dir, and its
templates are checked on every row (`flantune validate`, and `flantune run` / `show` before any heavy work)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDER_PLUGIN = REPO / "examples" / "plugin_folder"

# Five reviews; the third has no text (null), as real exports often do.
ROWS = [{"id": "r1", "text": "A fine film.", "label": 1}, {"id": "r2", "text": "Dull.", "label": 0},
        {"id": "r3", "text": None, "label": 1}, {"id": "r4", "text": "Loved it.", "label": 1},
        {"id": "r5", "text": "Awful.", "label": 0}]

TASK = """\
name: reviews
description: tiny reviews
kind: classification
source: {{mirror: {mirror}}}
splits: {{train: train, validation: validation, test: test}}
id_column: id
label_column: label
choices: {{0: negative, 1: positive}}
templates:
  - name: ask
    input: {input}
metrics: [accuracy]
primary_metric: accuracy
{extra}"""


def _task(tmp_path: Path, input: str = '"Review: {{ text }} Good or bad?"', mirror: str = "reviews",
          extra: str = "") -> tuple[Path, Path]:
    """A plugin task over a JSON Lines mirror of ROWS in tmp_path: (tasks_dir, data_dir)."""
    data = tmp_path / "data"
    (data / "reviews").mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        (data / "reviews" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "reviews.yaml").write_text(TASK.format(input=input, mirror=mirror, extra=extra))
    return tasks, data


def _oneline(text: str) -> str:
    return " ".join(text.split())


# Each payload would create the file PWNED if it ran: the classic ways out of a Jinja template.
ESCAPES = {
    "lipsum": "{{ lipsum.__globals__['os'].popen('touch PWNED').read() }}",
    "cycler": "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}",
    "joiner": "{{ joiner.__init__.__globals__.os.popen('touch PWNED').read() }}",
    "mro": "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
           "{{ c(['touch', 'PWNED']).wait() }}{% endif %}{% endfor %}",
}


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_a_template_escape_is_refused_and_runs_nothing(escape, tmp_path, cli):
    pwned = tmp_path / "pwned"
    payload = ESCAPES[escape].replace("PWNED", str(pwned))
    tasks, data = _task(tmp_path, input=json.dumps(payload + " {{ text }}"))
    code, _, err = cli("show", "task=reviews", f"tasks_dir={tasks}", f"data_dir={data}")
    err = _oneline(err)
    assert code == 2 and "Traceback" not in err
    assert "Task 'reviews'" in err and "template 'ask' (input)" in err and "refused by flantune's template sandbox" in err
    assert not pwned.exists()


@pytest.mark.parametrize("bomb", ["{{ 'x' * 10**9 }}", "{{ [0] * 10**9 }}", "{{ 2 ** 1000000000 }}"])
def test_a_template_that_would_take_the_machines_memory_is_refused(bomb, tmp_path, cli):
    # (Jinja's ** groups left to right, hence the literal exponent.) Without the bound each of these holds the process for minutes and gigabytes before anything fails.
    tasks, data = _task(tmp_path, input=json.dumps(bomb + " {{ text }}"))
    code, _, err = cli("show", "task=reviews", f"tasks_dir={tasks}", f"data_dir={data}")
    err = _oneline(err)
    assert code == 2 and "refused by flantune's template sandbox" in err and "is not allowed" in err


def test_a_filter_escape_from_a_config_file_is_refused_before_the_run_starts(tmp_path, cli):
    pwned, out = tmp_path / "pwned", tmp_path / "run"
    tasks, data = _task(tmp_path)
    config = tmp_path / "my.yaml"
    config.write_text(json.dumps({"tasks": {"reviews": {
        "filter": f"lipsum.__globals__['os'].popen('touch {pwned}').read() or true"}}}))
    code, _, err = cli("run", "--config", config, "task=reviews", "model=tiny", "train.max_steps=1",
                       f"tasks_dir={tasks}", f"data_dir={data}", f"output_dir={out}")
    err = _oneline(err)
    assert code == 2 and "Traceback" not in err
    assert "Task 'reviews'" in err and "filter fails on row r1" in err and "sandbox" in err
    assert not pwned.exists() and not out.exists()


NULL_ROW = '"Review: {{ text.strip() }} Good or bad?"'  # fails on the null text of row r3


def test_a_template_that_fails_on_the_third_row_names_split_row_and_template(tmp_path, cli):
    tasks, data = _task(tmp_path, input=NULL_ROW)
    expected = ("Task 'reviews' (" + str(tasks / "reviews.yaml") + "): template 'ask' (input) fails on row r3 of "
                "the train split (splits.train: train): UndefinedError: 'None' has no attribute 'strip'.")
    code, _, err = cli("show", "task=reviews", f"tasks_dir={tasks}", f"data_dir={data}")
    assert code == 2 and expected in _oneline(err)
    code, _, err = cli("validate", "task=reviews", f"tasks_dir={tasks}", f"data_dir={data}")
    assert code == 2 and expected in _oneline(err)
    out = tmp_path / "run"
    code, _, err = cli("run", "task=reviews", "model=tiny", "train.max_steps=1", f"tasks_dir={tasks}",
                       f"data_dir={data}", f"output_dir={out}")
    assert code == 2 and expected in _oneline(err) and "Traceback" not in err
    assert not out.exists()  # refused before the run directory, the tokenizer or the model


def test_validate_renders_every_row_of_every_role(tmp_path, cli, shared_data):
    # The null row is dropped by the filter, so every template renders on the rows that are left.
    tasks, data = _task(tmp_path, input=NULL_ROW, extra="filter: text is not none\n")
    code, out, err = cli("validate", "task=reviews", f"tasks_dir={tasks}", f"data_dir={data}")
    assert code == 0, err
    assert "every template renders on every row" in out
    for role in ("train", "validation", "test"):
        assert f"│ {role} " in out
    assert out.count("│            4 │") == 3  # four rows checked in each role

    # The task as a run sees it: the same task options as `flantune run`, and two tasks at once on real data
    # with three templates and a holdout.
    tasks, data = _task(tmp_path, input=NULL_ROW)
    (data / "imdb").symlink_to(shared_data / "imdb")
    code, out, err = cli("validate", "task=[reviews,imdb]", "tasks.reviews.filter='text is not none'",
                         "tasks.imdb.splits.test='test[:2000]'", f"tasks_dir={tasks}", f"data_dir={data}")
    assert code == 0, err
    out = " ".join(out.split())
    assert "train (less the holdout) │ 24,000" in out and "train (its holdout) │ 1,000" in out
    assert "test[:2000] │ 2,000 │ review_then_question, question_then_review, would_recommend" in out
    assert "ok reviews" in out and "ok imdb" in out


def _hook(tmp_path: Path, monkeypatch, module: str, source: str) -> None:
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("case", ["missing", "not_callable", "import_fails", "raises", "returns_none"])
def test_a_preprocessing_hook_that_fails_is_an_error_naming_task_and_hook(case, tmp_path, monkeypatch, cli):
    module = f"hook_{case}_{tmp_path.name}"  # a fresh module name in every test
    sources = {
        "missing": None,
        "not_callable": "shout = 'not a function'\n",
        "import_fails": "raise RuntimeError('no GPU here')\n",
        "raises": "def shout(row):\n    return {**row, 'loud': row['text'].upper()}\n",  # None on row r3
        "returns_none": "def shout(row):\n    row['loud'] = 'x'\n",
    }
    if sources[case] is not None:
        _hook(tmp_path, monkeypatch, module, sources[case])
    tasks, data = _task(tmp_path, input='"{{ loud }} Good or bad?"', extra=f"preprocess: {module}:shout\n")
    code, _, err = cli("show", "task=reviews", f"tasks_dir={tasks}", f"data_dir={data}")
    err = _oneline(err)
    assert code == 2 and "Traceback" not in err, err
    assert "Task 'reviews'" in err and f"'{module}:shout'" in err
    expected = {"missing": "ModuleNotFoundError", "not_callable": "is a str, not a function",
                "import_fails": "RuntimeError: no GPU here",
                "raises": "fails on row r3 of the train split (splits.train: train): AttributeError",
                "returns_none": "fails on row r1 of the train split (splits.train: train): TypeError: it must "
                                "return a dict, not a NoneType"}[case]
    assert expected in err


@pytest.mark.parametrize("mirror", ["../outside", "'/abs/outside'", "sub/reviews", "..", "'a\\\\b'"])
def test_a_mirror_outside_data_dir_is_refused_when_the_task_file_is_read(mirror, tmp_path, cli):
    tasks, data = _task(tmp_path, mirror=mirror)
    (tmp_path / "outside").mkdir()  # what ../outside would read: data beside data_dir
    for split in ("train", "validation", "test"):
        (tmp_path / "outside" / f"{split}.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    code, _, err = cli("show", "task=reviews", f"tasks_dir={tasks}", f"data_dir={data}")
    err = _oneline(err)
    assert code == 2 and "Traceback" not in err
    assert f"Malformed task file {tasks / 'reviews.yaml'}: field 'source.mirror' must be the name of a folder " \
           "in data_dir" in err


def test_a_hub_id_that_is_a_path_is_refused_when_the_task_file_is_read(tmp_path, cli):
    # datasets reads a local folder given as a hub id: without data_dir this read any folder on the machine.
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "train.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    tasks, _ = _task(tmp_path, mirror=f"null, hub: {tmp_path / 'outside'}")
    code, out, err = cli("show", "task=reviews", f"tasks_dir={tasks}")
    assert code == 2 and "A fine film" not in out
    assert "field 'source.hub' must be a Hugging Face hub dataset id" in _oneline(err)


def test_a_template_reads_no_attribute_of_a_value_that_is_not_plain_data(tmp_path, cli):
    """An Image column arrives as a PIL image, whose methods write files ({{ img.save(...) }}) or start programs."""
    import io

    import datasets
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, format="PNG")
    data = tmp_path / "data" / "pictures"
    data.mkdir(parents=True)
    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"), "img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = {"id": ["p1", "p2"], "text": ["A fine film."] * 2, "img": [{"bytes": png.getvalue(), "path": None}] * 2,
            "label": [1, 0]}
    for split in ("train", "validation", "test"):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(data / f"{split}.parquet"))
    written = tmp_path / "written.png"
    tasks, _ = _task(tmp_path, mirror="pictures", input=json.dumps("{{ text }} {{ img.save('%s') }}" % written))
    code, _, err = cli("show", "task=reviews", f"tasks_dir={tasks}", f"data_dir={tmp_path / 'data'}")
    assert code == 2 and "attribute 'save'" in err and "sandbox" in err
    assert not written.exists()


def test_tasks_exits_2_after_listing_when_a_task_file_fails(tmp_path, cli):
    tasks, _ = _task(tmp_path)
    (tasks / "broken.yaml").write_text("name: broken\nkind: classification\ndescriptoin: typo\n")
    code, out, err = cli("tasks", f"tasks_dir={tasks}")
    assert code == 2
    assert "│ reviews " in out and "│ imdb " in out  # what loaded is listed
    assert "broken.yaml" in out and "descriptoin" in out  # and what failed, with why
    assert "1 task source(s) failed to load" in err


@pytest.mark.parametrize("line", ["input: {{ text }}", "input: {{ text }} Good or bad?",
                                  "input: {% if text %}{{ text }}{% endif %}", "input: { text }"])
def test_an_unquoted_template_in_yaml_gets_a_hint_to_quote_it(line, tmp_path, cli):
    tasks, data = _task(tmp_path)
    path = tasks / "reviews.yaml"
    path.write_text(path.read_text().replace('input: "Review: {{ text }} Good or bad?"', line))
    code, _, err = cli("show", "task=reviews", f"tasks_dir={tasks}", f"data_dir={data}")
    err = _oneline(err)
    assert code == 2 and "Malformed task file" in err and "reviews.yaml" in err
    assert "must be quoted in YAML" in err and "block scalar" in err
