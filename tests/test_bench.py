"""bench/run.py's recipe children: a packed child trains on packed rows (the trainer must not drop the rows'
segment ids, or examples would attend to each other and the loss would be another model's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.mark.slow
def test_a_packed_child_counts_the_examples_in_its_rows(tmp_path, shared_data):
    out = tmp_path / "child.json"
    done = subprocess.run([sys.executable, str(BENCH), "--child", "--recipe", "flantune", "--sampling", "packed",
                           "--dataset", "samsum", "--examples", "80", "--valid-examples", "8", "--batch", "4",
                           "--warmup", "1", "--threads", "1", "--data-dir", str(shared_data), "--child-out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["timed_steps"] * result["batch"]
    examples = result["examples_per_s"] * result["seconds"]
    assert examples > 2 * rows  # samsum's dialogues share rows about 3 to a row
    assert result["pad_fraction"] < 0.15 and result["validation_loss"] > 0
