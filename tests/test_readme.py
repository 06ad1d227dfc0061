"""The README's commands are the ones CI runs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]  # the Quickstart's two commands
    return [b.split("\n```")[0].strip() for b in blocks]


def test_ci_runs_the_readme_test_command():
    setup_and_run, setup_and_test = _commands()
    ci_lines = [l.strip() for l in (REPO / ".ci" / "run").read_text().splitlines()]
    assert setup_and_test in ci_lines
    assert setup_and_run.split(" && flantune ")[0] == setup_and_test.split(" && python -m pytest")[0]
