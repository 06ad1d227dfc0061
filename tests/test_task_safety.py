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
