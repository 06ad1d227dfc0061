"""The README holds to the code: CI runs its test command, its commands name real commands and keys, its paths
exist, its quickstart figures and memory table match their sources, and its Python example loads a run's model."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)\n```", text, flags=re.S)


def _commands() -> list[list[str]]:
    """Every `flantune ...` command in the README, in its bash blocks (also after `-m`, continuation lines joined,
    comments dropped) and in its inline code, as the words after `flantune`."""
    found = []
    for block in _blocks(README, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word == "flantune" and (i == 0 or words[i - 1] in ("&&", "-m")):
                    found.append(words[i + 1:words.index("&&", i) if "&&" in words[i:] else len(words)])
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    for span in re.findall(r"`flantune ([^`]+)`", prose):
        words = [w for w in shlex.split(span) if not w.startswith("--")]  # --debug goes before the command
        if words and words[0] != "...":
            found.append(words)
    return found


def test_ci_runs_the_readme_test_command(capsys):
    run_line, test_line = _blocks(_section("Quickstart"), "bash")[:2]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_line in ci_lines
    setup, first_run = run_line.split(" && flantune ")
    assert test_line == f"{setup} && python -m pytest -q"
    assert f"flantune {first_run}\n" in _help("run", capsys)  # the example `flantune run --help` gives


def test_quickstart_sample_size_is_the_shipped_sample():
    sample = REPO / "flantune" / "assets" / "sample" / "imdb"
    rows = sum(pq.read_metadata(f).num_rows for f in sample.glob("*.parquet"))
    assert f"{rows:,}-review IMDB sample" in _section("Quickstart")


def _config_keys(cli) -> tuple[set[str], set[str]]:
    """The leaf keys `flantune config` prints, and the free-form mappings (printed empty) that take any sub-key."""
    code, out, err = cli("config")
    assert code == 0, err
    leaves, free = set(), set()

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, path + ".")
            else:
                (free if isinstance(value, dict) else leaves).add(path)

    walk(yaml.safe_load(out), "")
    return leaves, free


def _help(command: str, capsys) -> str:
    """`flantune COMMAND --help`, which exits 0 for a command and 2 for an unknown one."""
    from flantune.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0, f"README: flantune {command} is no command"
    return capsys.readouterr().out


def test_readme_commands_and_keys_exist(cli, capsys):
    leaves, free = _config_keys(cli)
    takes_config_keys = {"run", "config", "validate", "eval", "compare", "sweep"}
    commands = _commands()
    assert len(commands) >= 20 and {c[0] for c in commands} >= {"run", "tasks", "show", "validate", "eval",
                                                                "compare", "report", "config"}
    for words in commands:
        command, options = words[0], [w for w in words[1:] if "=" in w and not w.startswith("-")]
        own_options = set(re.findall(r"(\w+)=", _help(command, capsys)))
        for option in options:
            key = option.split("=", 1)[0]
            known = (key in own_options or command in takes_config_keys
                     and (key in leaves or any(key.startswith(f + ".") for f in free)))
            assert known, f"README: `flantune {' '.join(words)}`: {key} is no option of flantune {command}"


def test_list_values_are_quoted_for_zsh():
    for block in _blocks(README, "bash"):
        unquoted = re.findall(r"(?<!')\b[\w.]+=\[", block)
        assert not unquoted, f"README: quote list values for zsh: {unquoted}"
    assert "'task=[imdb,samsum]'" in _section("Configuration")


def test_every_config_group_is_in_the_configuration_table(cli):
    leaves, free = _config_keys(cli)
    table = _section("Configuration")
    for top in sorted({k.split(".")[0] for k in leaves | free}):
        assert f"`{top}`" in table or f"`{top}.*`" in table or f"`{top}." in table, \
            f"README: the configuration table has no line for `{top}` (configs/defaults.yaml)"
    for key in ("data.max_train_examples", "data.max_eval_examples", "train.max_steps", "train.eval_steps"):
        assert key in _section("Quickstart"), f"README: the quickstart's short run lacks {key}"
        assert key in leaves


def test_paths_the_readme_names_exist():
    linked = re.findall(r"\]\(([^)#:]+)\)", README)
    named = re.findall(r"(?<![\w/.])((?:configs|examples|bench|tests|flantune)/[\w./-]*\w)", README)
    assert len(linked) >= 8
    for path in {*linked, *named}:
        assert (REPO / path).exists(), f"README names {path}, which does not exist"


def _memory_rows(text: str) -> list[list[str]]:
    rows = re.findall(r"^\| (flan-t5-\w+)[^|]* \|(.*)\|$", text, flags=re.M)
    return [[model, *(c.strip().rstrip("*") for c in cells.split("|"))] for model, cells in rows]


def test_memory_table_is_the_measured_one():
    readme = _memory_rows(_section("Which GPU a run needs"))
    measured = _memory_rows((REPO / "bench" / "RESULTS.md").read_text().split("### Memory table", 1)[1])
    assert len(readme) == 5 and readme == measured[:5]


def _table(text: str) -> list[dict[str, str]]:
    """The first Markdown table in `text`, a dict per row keyed by the header's cells."""
    lines = [line for line in text[text.index("\n|") + 1:].splitlines()]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[:next(
        (i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]]
    return [dict(zip(rows[0], row)) for row in rows[2:]]


def test_performance_table_is_bench_results_lead_table():
    """The README's one performance table: the same figures as bench/RESULTS.md's first table, cell for cell."""
    readme = _table(_section("Performance"))
    results = (REPO / "bench" / "RESULTS.md").read_text()
    lead = {(row["data"], row["recipe"]): row for row in _table(results.split("\n## ", 1)[1])}
    assert len(readme) == len(lead) == 12
    for row in readme:
        measured = lead[(row["data"], row["recipe"])]
        assert row == {column: measured[column] for column in row}, row


def _saved_like_a_run(folder: Path, lora: bool) -> Path:
    """A folder laid out as a run's model/ (save_pretrained output and tokenizer; for LoRA, the adapter over a
    saved base): tests/test_engine.py checks that a run writes these, this test what the README does with them."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(REPO / "flantune" / "assets" / "t5-tokenizer")
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1,
                      decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        model.save_pretrained(folder / "base")
        model = T5ForConditionalGeneration.from_pretrained(folder / "base")
        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM"))
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder


def test_the_python_example_loads_a_runs_model(tmp_path):
    example = _blocks(_section("Using the model"), "python")[0]
    run = _saved_like_a_run(tmp_path / "full", lora=False)
    exec(re.sub(r'^run = ".*?"', f'run = "{run}"', example, count=1, flags=re.M), {})
    # LoRA: the adapter on its base, as the section says
    from peft import AutoPeftModelForSeq2SeqLM, PeftModel

    assert 'AutoPeftModelForSeq2SeqLM.from_pretrained(f"{run}/model")' in _section("Using the model")
    run = _saved_like_a_run(tmp_path / "lora", lora=True)
    assert isinstance(AutoPeftModelForSeq2SeqLM.from_pretrained(f"{run}/model"), PeftModel)
