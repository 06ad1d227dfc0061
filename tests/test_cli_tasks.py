"""`flantune tasks` and `flantune show`, and the one-paragraph errors for bad task input (exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RT = REPO / "examples" / "plugin_folder" / "rotten_tomatoes.yaml"


def _task_file(folder: Path, **changes) -> Path:
    data = yaml.safe_load(RT.read_text())
    data.update(changes)
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_tasks_lists_every_task_with_sizes_from_the_mirror(cli, shared_data):
    code, out, err = cli("tasks", f"data_dir={shared_data}")
    assert code == 0, err
    for name in ("imdb", "emotion", "squad", "squad_qg", "paws", "paws_paraphrase", "samsum", "mlqa_hi_en"):
        assert f"│ {name} " in out
    assert "stanfordnlp/imdb" in out and "train (24,000)" in out and "train (1,000)" in out
    assert "test (missing here)" in out  # mlqa's test split is not in the mirror


def test_tasks_counts_the_rows_of_every_mirror_format(cli, tmp_path):
    """JSON Lines rows are non-blank lines, CSV rows are records (a quoted field may hold a newline, a blank line
    is none), and a file that can't be read says so rather than 'missing'."""
    mirror = tmp_path / "data" / "rotten_tomatoes"
    mirror.mkdir(parents=True)
    (mirror / "train.jsonl").write_text('{"text": "a", "label": 0}\n\n{"text": "b", "label": 1}\n'
                                        '{"text": "c", "label": 1}\n')
    long = "x" * 200_000  # more than the csv module's default field limit; datasets reads it
    (mirror / "validation.csv").write_text(f'text,label\n"two\nlines",0\n   \n"{long}",1\n')
    (mirror / "test.parquet").write_bytes(b"PAR1 not a parquet file")
    code, out, err = cli("tasks", f"data_dir={tmp_path / 'data'}", f"tasks_dir={RT.parent}")
    assert code == 0, err
    assert "train: train (3)" in out and "validation: validation (2)" in out
    assert "test: test (unreadable: flantune show" in " ".join(out.split())


@pytest.mark.slow
def test_tasks_answers_without_importing_torch_or_transformers(shared_data):
    code = ("import sys; from flantune.cli import main; main(['tasks', 'data_dir=' + sys.argv[1]]);"
            "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules];"
            "print('HEAVY', heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(shared_data)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr


def test_show_renders_examples_and_length_statistics(cli, shared_data):
    code, out, err = cli("show", "task=samsum", "n=2", "split=validation", f"data_dir={shared_data}")
    assert code == 0, err
    assert out.count("Summarize this dialogue:") == 2 and "target:" in out
    assert "token lengths over 818 rows of validation" in out
    assert "p50" in out and "truncated" in out and "<unk> share" in out


def test_show_warns_when_the_tokenizer_cannot_spell_the_text(cli, shared_data):
    code, out, err = cli("show", "task=mlqa_hi_en", "n=1", "split=validation", f"data_dir={shared_data}")
    assert code == 0, err
    out = " ".join(out.split())
    assert "are <unk>" in out and "Devanagari" in out and "umt5" in out


def test_show_does_not_warn_for_english(cli, shared_data):
    code, out, _ = cli("show", "task=emotion", "n=1", "split=test", f"data_dir={shared_data}")
    assert code == 0 and "<unk>: this tokenizer" not in out


def test_unknown_task_suggests_close_matches(cli):
    code, out, err = cli("show", "task=imbd")
    assert code == 2 and out == ""
    assert "Unknown task 'imbd'" in err and "'imdb'" in err and "Traceback" not in err


def test_template_naming_a_missing_column_is_caught_when_the_task_loads(cli, tmp_path, shared_data):
    templates = [{"name": "uses_review", "input": "{{ review }} positive or negative?"},
                 {"name": "b", "input": "{{ text }}"}, {"name": "c", "input": "{{ text }}?"}]
    _task_file(tmp_path, templates=templates)
    code, _, err = cli("show", "task=rotten_tomatoes", f"tasks_dir={tmp_path}", f"data_dir={shared_data}")
    err = " ".join(err.split())
    assert code == 2
    assert "rotten_tomatoes" in err and "'uses_review'" in err and "'review'" in err
    assert "Columns available: label, text" in err and "Traceback" not in err


def test_malformed_task_file_names_the_path_and_the_field(cli, tmp_path):
    path = _task_file(tmp_path, max_input_length="long")
    code, _, err = cli("show", "task=rotten_tomatoes", f"tasks_dir={tmp_path}")
    err = " ".join(err.split())
    assert code == 2 and str(path) in err and "'max_input_length'" in err
    (tmp_path / "rotten_tomatoes.yaml").write_text("name: [unclosed\n")
    code, _, err = cli("show", "task=rotten_tomatoes", f"tasks_dir={tmp_path}")
    assert code == 2 and "not valid YAML at line 2" in " ".join(err.split())


def test_label_outside_the_choices_is_an_error(cli, tmp_path, shared_data):
    _task_file(tmp_path, choices={0: "negative"} | {5: "positive"})
    code, _, err = cli("show", "task=rotten_tomatoes", f"tasks_dir={tmp_path}", f"data_dir={shared_data}")
    err = " ".join(err.split())
    assert code == 2 and "has label 1, which is not one of its choices" in err


def test_empty_split_is_an_error(cli, tmp_path, shared_data):
    _task_file(tmp_path, splits={"train": "train[10:10]", "validation": "validation", "test": "test"})
    code, _, err = cli("show", "task=rotten_tomatoes", f"tasks_dir={tmp_path}", f"data_dir={shared_data}")
    err = " ".join(err.split())
    assert code == 2 and "the train split 'train[10:10]'" in err and "has no rows" in err
    _task_file(tmp_path, filter="label == 7")
    code, _, err = cli("show", "task=rotten_tomatoes", f"tasks_dir={tmp_path}", f"data_dir={shared_data}")
    assert code == 2 and "after its filter" in err


def test_missing_mirror_split_names_the_splits_there(cli, shared_data):
    code, _, err = cli("show", "task=squad", "split=train", f"data_dir={shared_data}")
    err = " ".join(err.split())
    assert code == 2 and "has no train.parquet" in err and "(splits there: validation)" in err


def test_bad_option_of_a_command(cli):
    code, _, err = cli("show", "task=imdb", "nn=3")
    assert code == 2 and "has no option 'nn'" in err and "'n'" in err
    code, _, err = cli("tasks", "data_dir")
    assert code == 2 and "is not an override" in err


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flantune", "show", "--debug", "task=imbd"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "FlantuneError" in proc.stderr


@pytest.mark.parametrize("command", ["tasks", "show", "validate", "config", "run", "eval", "compare", "report", "runs", "mirror"])
def test_each_commands_help_shows_its_options_and_example(command, capsys):
    from flantune.commands import COMMANDS
    from flantune.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = capsys.readouterr().out
    declared = COMMANDS[command]
    assert declared.summary in shown and declared.example in shown
    for key in declared.options or {}:  # the options the command parses, from the same declaration
        assert f"{key}=" in shown, key
    assert ("--config FILE" in shown) == declared.config_files
