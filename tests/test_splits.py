"""Split specs mean what they mean on the hub, and a holdout never leaks into training."""

from __future__ import annotations

import numpy as np
import pytest
from datasets.arrow_reader import ReadInstruction

from flantune.errors import FlantuneError
from flantune.splits import check_split_syntax, segments, select_rows
from flantune.task import Holdout

SPECS = ["train", "train[:80%]", "train[80%:]", "train[10:20]", "train[-10:]", "train[:-5%]", "train[5:3]",
         "train[33%:66%](pct1_dropremainder)", "train[:33%](closest)", "train[:50%]+validation[10:]",
         "train[1_000:]", "train[-200%:]", "train[:50](closest)"]


@pytest.mark.parametrize("n", [7, 99, 100, 1234])
@pytest.mark.parametrize("spec", SPECS)
def test_segments_agree_with_datasets(spec, n):
    sizes = {"train": n, "validation": n + 3}
    try:
        ours = [(s.split, s.start, s.stop) for s in segments(spec, sizes)]
    except FlantuneError:
        ours = None
    try:
        theirs = [(a.splitname, a.from_, a.to) for a in ReadInstruction.from_spec(spec).to_absolute(sizes)]
    except ValueError:
        theirs = None
    assert ours == theirs


def test_bad_specs_are_clear_errors():
    for spec in ("train[5]", "train[::2]", "", "train[:50%"):
        with pytest.raises(FlantuneError, match="is not a valid split"):
            check_split_syntax(spec)


def test_holdout_is_seeded_disjoint_and_applies_to_every_role_on_that_split():
    holdout = Holdout(from_="train", to="validation", size=0.1, seed=3)
    sizes = {"train": 1000, "test": 50}
    (_, held), = select_rows("train", "validation", sizes, holdout)
    (_, rest), = select_rows("train", "train", sizes, holdout)
    (_, half), = select_rows("train[:50%]", "train", sizes, holdout)
    assert len(held) == 100 and len(rest) == 900
    assert not set(held) & set(rest) and not set(held) & set(half)
    assert set(half) <= set(range(500))
    (_, again), = select_rows("train", "validation", sizes, holdout)
    assert np.array_equal(held, again)  # same seed, same rows
    (_, other), = select_rows("train", "validation", sizes, Holdout("train", "validation", 0.1, seed=4))
    assert not np.array_equal(held, other)
    (_, test), = select_rows("test", "test", sizes, holdout)
    assert len(test) == 50  # other splits are untouched
