"""`flantune predict`: the predictions a run's evaluation saved come back for the same rows (rank-scored
classification, generation, a LoRA run), plain text from standard input, streamed input, and the bad inputs it
refuses before a model loads."""

from __future__ import annotations

import io
import json
import math
import re
import shlex
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flantune.evaluation import read_predictions

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

# Options for a quick model: tiny (random weights, built in a second) with short inputs.
TINY = ["model=tiny", "task=imdb", "tasks.imdb.max_input_length=32"]
# A model source that loading would fail on (no hub in the tests): bad input must be refused before that.
UNLOADABLE = ["model=google/flan-t5-base", "task=imdb"]


def _records(out: str) -> list[dict]:
    # split at line ends only: texts keep U+2028 and U+0085, which str.splitlines() would cut at
    return [json.loads(line) for line in out.split("\n") if line.strip()]


def _split_rows(shared_data: Path, task: str, saved: list[dict], id_column: str | None) -> list[dict]:
    """The raw test-split rows of the saved predictions, in their order (ids: the id column, else test-<row>)."""
    table = pq.read_table(shared_data / task / "test.parquet")
    rows = table.to_pylist()
    if id_column:
        by_id = {str(r[id_column]): r for r in rows}
        return [by_id[p["id"]] for p in saved]
    return [rows[int(p["id"].removeprefix("test-"))] for p in saved]


def _predict_split(cli, tmp_path, run: Path, shared_data: Path, task: str, id_column: str | None) -> tuple:
    saved = read_predictions(run / "predictions" / f"{task}.jsonl")
    rows = _split_rows(shared_data, task, saved, id_column)
    given = tmp_path / f"{task}.jsonl"
    given.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = cli("predict", f"model={run}", f"task={task}", f"input={given}")
    assert code == 0, err
    return saved, _records(out)


@pytest.mark.slow
def test_predict_gives_the_predictions_the_runs_evaluation_saved(trained_run, shared_data, cli, tmp_path):
    # classification: rank-scored over the choices, each choice's score as evaluation saved it
    saved, got = _predict_split(cli, tmp_path, trained_run, shared_data, "imdb", None)
    assert [g["input"] for g in got] == [s["input"] for s in saved]
    assert [g["prediction"] for g in got] == [s["prediction"] for s in saved]
    for g, s in zip(got, saved):
        assert g["scores"] == pytest.approx(s["scores"], abs=1e-4)
        assert g["label"] in (0, 1) and "text" in g  # the row's own fields come back with it
        exp = {c: math.exp(v) for c, v in g["scores"].items()}
        assert g["probabilities"] == pytest.approx({c: e / sum(exp.values()) for c, e in exp.items()}, abs=1e-4)
    # generation: the run's max_new_tokens (tasks.samsum.max_new_tokens=16) and greedy decoding, as evaluated
    saved, got = _predict_split(cli, tmp_path, trained_run, shared_data, "samsum", "id")
    assert [g["id"] for g in got] == [s["id"] for s in saved]
    assert [g["input"] for g in got] == [s["input"] for s in saved]
    assert [g["prediction"] for g in got] == [s["prediction"] for s in saved]
    assert all("scores" not in g for g in got)


@pytest.mark.slow
def test_a_mixture_run_needs_its_task_named(trained_run, cli, tmp_path):
    given = tmp_path / "in.txt"
    given.write_text("A film.\n")
    code, _, err = cli("predict", f"model={trained_run}", f"input={given}")
    assert code == 2 and "several tasks (imdb, samsum)" in err and "task=imdb" in err


@pytest.mark.slow
def test_predict_on_a_lora_run_and_the_readme_example(cli, tmp_path, shared_data, monkeypatch):
    run = tmp_path / "lora"
    code, _, err = cli("run", "task=imdb", "model=tiny", "method=lora", "train.max_steps=2", "train.eval_steps=2",
                       "data.max_train_examples=16", "data.max_eval_examples=8", "tasks.imdb.max_input_length=64",
                       f"data_dir={shared_data}", f"output_dir={run}")
    assert code == 0, err
    saved, got = _predict_split(cli, tmp_path, run, shared_data, "imdb", None)  # task: the run's own
    assert [g["prediction"] for g in got] == [s["prediction"] for s in saved]
    for g, s in zip(got, saved):
        assert g["scores"] == pytest.approx(s["scores"], abs=1e-4)
    # the README's example, on this run
    monkeypatch.chdir(tmp_path)
    Path("reviews.txt").write_text("A gripping film.\nI walked out.\n")
    section = README.split("\n### Predict on new text\n", 1)[1]
    line = re.search(r"^flantune predict .*$", section, flags=re.M).group(0)
    words = [w.replace("runs/imdb-tiny-20261202-101500", str(run)) for w in shlex.split(line, comments=True)]
    code, out, err = cli(*words[1:])
    assert code == 0, err
    assert [g["text"] for g in _records(out)] == ["A gripping film.", "I walked out."]


def test_text_from_standard_input(cli, monkeypatch):
    lines = ["A wonderful, moving film.", "", "Dull and far too long."]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, err = cli("predict", *TINY)
    assert code == 0, err
    got = _records(out)
    assert [g["text"] for g in got] == [lines[0], lines[2]]  # one example a line, blank lines skipped
    assert got[0]["input"].startswith(lines[0]) and "OPTIONS:\n- negative\n- positive" in got[0]["input"]
    for g in got:
        assert set(g["scores"]) == {"negative", "positive"} and g["prediction"] in g["scores"]
        assert g["prediction"] == max(g["scores"], key=g["scores"].get)
        assert sum(g["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "examples/s" in err  # the summary goes to stderr when the predictions go to stdout


def test_template_none_sends_lines_unrendered_and_output_goes_to_a_file(cli, tmp_path):
    given, written = tmp_path / "in.txt", tmp_path / "out.jsonl"
    given.write_text("Is this review positive? It was great.\nSecond line\n")
    code, out, err = cli("predict", *TINY, "template=none", f"input={given}", f"output={written}")
    assert code == 0, err
    got = _records(written.read_text())
    assert [g["input"] for g in got] == ["Is this review positive? It was great.", "Second line"]
    assert "examples/s" in out and str(written) in out
    code, _, err = cli("predict", *TINY, "template=none", f"input={given}", f"output={written}")
    assert code == 2 and "exists" in err and "overwrite=true" in err
    code, _, err = cli("predict", *TINY, "template=none", f"input={given}", f"output={written}", "overwrite=true")
    assert code == 0, err


def test_a_terminal_gets_a_table(cli, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", io.StringIO("A wonderful film.\n"))
    monkeypatch.setattr(sys, "stdout", terminal := Terminal())
    code, _, err = cli("predict", *TINY)
    assert code == 0, err
    shown = terminal.getvalue()
    assert "prediction" in shown and "A wonderful film." in shown and "{" not in shown  # no JSON


def test_csv_and_parquet_rows_keep_their_order_and_fields(cli, tmp_path):
    texts = [f"review {i}: " + "good " * (i % 7) for i in range(11)]  # lengths differ: batches are formed by length
    csv = tmp_path / "in.csv"
    csv.write_text("id,text\n" + "".join(f'{i},"{t}\nsecond line"\n' for i, t in enumerate(texts)))
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(11)), "text": texts}), parquet, row_group_size=4)
    results = {}
    for given in (csv, parquet):
        code, out, err = cli("predict", *TINY, f"input={given}", "chunk_size=3")
        assert code == 0, err
        results[given.suffix] = got = _records(out)
        assert [str(g["id"]) for g in got] == [str(i) for i in range(11)]
    assert [g["text"] for g in results[".csv"]] == [f"{t}\nsecond line" for t in texts]  # quoted line breaks
    assert [g["text"] for g in results[".parquet"]] == texts


def _error(cli, *options) -> str:
    code, out, err = cli("predict", *options)
    assert code == 2 and out == "", err
    assert err.count("\n") == 1, err  # one paragraph
    return err


def test_bad_input_is_refused_before_the_model_loads(cli, tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert "no such file" in _error(cli, *UNLOADABLE, f"input={missing}")
    for name, text in (("empty.jsonl", ""), ("blank.txt", "\n \n"), ("empty.csv", ""), ("header.csv", "text\n")):
        (tmp_path / name).write_text(text)
        err = _error(cli, *UNLOADABLE, f"input={tmp_path / name}")
        assert "empty" in err or "no rows" in err, err
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "fine"}\n\n{"text": "fine"}\n{"review": "no text column"}\n')
    err = _error(cli, *UNLOADABLE, f"input={rows}")
    assert "row 3 (line 4)" in err and "'text'" in err and "review_then_question" in err
    table = tmp_path / "rows.csv"
    table.write_text("id,text\n1,fine\n2,\n")
    assert "row 2 of" in (err := _error(cli, *UNLOADABLE, f"input={table}")) and "'text'" in err
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"review": ["a"]}), other)
    err = _error(cli, *UNLOADABLE, f"input={other}")
    assert "no column 'text'" in err and "review" in err
    assert "Unknown task 'imbd'" in _error(cli, "model=google/flan-t5-base", "task=imbd", f"input={rows}")
    err = _error(cli, *UNLOADABLE, "template=nope", f"input={rows}")
    assert "no template 'nope'" in err and "review_then_question" in err
    # plain text fills one column: a template reading several is refused, naming them
    text = tmp_path / "in.txt"
    text.write_text("What is the capital of France?\n")
    err = _error(cli, "model=google/flan-t5-base", "task=squad", f"input={text}")
    assert "reads 2: context, question" in err  # in the order the template reads them
    err = _error(cli, "model=google/flan-t5-base", f"input={text}")
    assert "not a flantune run directory" in err and "task=NAME" in err
    # with good input, the model is what fails: the errors above came before loading it
    assert "Could not load" in _error(cli, *UNLOADABLE, f"input={text}")


class _Lines(io.StringIO):
    """Standard input that counts the lines read from it."""

    def __init__(self, lines: list[str]):
        super().__init__("".join(f"{line}\n" for line in lines))
        self.read_lines = 0

    def __next__(self) -> str:
        line = super().__next__()
        self.read_lines += 1
        return line


class _Reader(io.StringIO):
    """Standard output that notes how many input lines had been read at each write, and closes (as `| head -n
    LIMIT` does: a broken pipe) once it has `limit` lines."""

    def __init__(self, source: _Lines, limit: int | None = None):
        super().__init__()
        self.source, self.limit, self.read_at = source, limit, []

    def write(self, text: str) -> int:
        self.read_at.append(self.source.read_lines)
        return super().write(text)

    def flush(self) -> None:  # where a real pipe's buffer is written
        if self.limit is not None and self.getvalue().count("\n") >= self.limit:
            raise BrokenPipeError(32, "Broken pipe")


def test_standard_input_is_streamed_chunk_by_chunk(monkeypatch):
    from flantune.cli import main

    source = _Lines([f"line {i}" for i in range(10)])
    stdout = _Reader(source)
    monkeypatch.setattr(sys, "stdin", source)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["predict", *TINY, "chunk_size=4"]) == 0
    got = _records(stdout.getvalue())
    assert [g["text"] for g in got] == [f"line {i}" for i in range(10)]
    # the first chunk's four predictions were written when four lines had been read, the next four at eight
    assert stdout.read_at[:4] == [4] * 4 and stdout.read_at[4:8] == [8] * 4


@pytest.mark.slow
def test_a_large_file_is_read_in_chunks(tmp_path, monkeypatch):
    # 100,000 rows of 500 characters (50 MB): checked and predicted in chunks, the Python memory they take stays a
    # small part of the file's size. The reader stops after the first chunk, as `flantune predict ... | head` does.
    import random
    import tracemalloc

    from flantune.cli import main

    words = ["plot", "actor", "dull", "superb", "scene", "ending", "music", "boring", "script", "moving"]
    rng = random.Random(0)
    given = tmp_path / "large.jsonl"
    texts = [json.dumps(" ".join(rng.choices(words, k=80))[:500]) for _ in range(100)]
    with open(given, "w") as f:
        f.writelines(f'{{"id": {i}, "text": {texts[i % 100]}}}\n' for i in range(100_000))
    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "warm up"}\n')
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["predict", *TINY, f"input={small}"]) == 0  # first imports and caches, outside the measure
    stdout = _Reader(_Lines([]), limit=200)
    monkeypatch.setattr(sys, "stdout", stdout)
    tracemalloc.start()
    try:
        assert main(["predict", *TINY, f"input={given}", "chunk_size=200"]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    got = _records(stdout.getvalue())
    assert [g["id"] for g in got] == list(range(200))
    assert peak < 20e6, f"{peak / 1e6:.0f} MB of Python objects at the peak, for a {given.stat().st_size / 1e6:.0f} MB file"
