"""Split specs in the hub's slicing syntax (`train`, `validation[:80%]`, `train[10:20]+test`) and the
rows they select, with a task's seeded holdout taken out.

The rows are computed as index lists over the full base split, so selecting them costs an index
mapping, not a copy of the data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flantune.errors import FlantuneError

if TYPE_CHECKING:
    from flantune.task import Holdout


@dataclass(frozen=True)
class Segment:
    split: str
    start: int
    stop: int


# datasets' own grammar (datasets.arrow_reader), re-read here so that task loading and `flantune tasks`
# don't import datasets; tests/test_splits.py checks both agree.
_PART = re.compile(
    r"^\s*(?P<split>\w[\w.-]*)\s*"
    r"(\[\s*(?P<from>-?[\d_]+)?\s*(?P<from_pct>%)?\s*:\s*(?P<to>-?[\d_]+)?\s*(?P<to_pct>%)?\s*\])?"
    r"(\((?P<rounding>closest|pct1_dropremainder)\))?\s*$"
)
_EXAMPLES = "e.g. 'train', 'validation[:80%]', 'train[100:200]' or 'train[:50%]+validation'"


def _parts(spec: str) -> list[re.Match]:
    matches = [_PART.match(part) for part in re.split(r"\s*\+\s*", spec)]
    if not all(matches):
        raise FlantuneError(f"'{spec}' is not a valid split: use a split name with an optional slice, {_EXAMPLES}.")
    for m in matches:
        pct = m.group("from_pct") or m.group("to_pct")
        if m.group("rounding") and not pct:
            raise FlantuneError(f"'{spec}': a rounding mode only goes with percent slices, {_EXAMPLES}.")
        if pct and any(v is not None and abs(int(v)) > 100 for v in (m.group("from"), m.group("to"))):
            raise FlantuneError(f"'{spec}': percent slice bounds must lie between -100% and 100%.")
    return matches


def check_split_syntax(spec: str) -> list[str]:
    """The split names a spec reads, in order; a FlantuneError if it is not in the hub's slicing syntax."""
    return [m.group("split") for m in _parts(spec)]


def _bound(value: str | None, pct: bool, rounding: str | None, n: int, default: int) -> int:
    if value is None:
        return default
    v = int(value)
    if pct:
        if rounding == "pct1_dropremainder":
            if n < 100:
                raise FlantuneError("pct1_dropremainder rounding needs a split of at least 100 rows.")
            v = v * (n // 100)
        else:  # "closest", the default
            v = int(round(v * n / 100.0))
    return v


def segments(spec: str, sizes: dict[str, int]) -> list[Segment]:
    """The absolute [start, stop) row range of each part of a spec, as datasets computes it."""
    out = []
    for m in _parts(spec):
        split = m.group("split")
        if split not in sizes:
            raise FlantuneError(f"Split '{split}' does not exist; splits there: {', '.join(sorted(sizes))}.")
        n = sizes[split]
        pct = bool(m.group("from_pct") or m.group("to_pct"))
        start = _bound(m.group("from"), pct, m.group("rounding"), n, 0)
        stop = _bound(m.group("to"), pct, m.group("rounding"), n, n)
        start = min(max(n + start, 0) if start < 0 else start, n)
        stop = min(max(n + stop, 0) if stop < 0 else stop, n)
        out.append(Segment(split, start, stop))
    return out


def holdout_rows(holdout: Holdout, n_rows: int) -> np.ndarray:
    """The held-out row indices of the holdout's split: a seeded permutation's first rows, sorted."""
    count = holdout.count(n_rows)
    if not 0 < count < n_rows:
        raise FlantuneError(
            f"The holdout of {holdout.size} rows from split '{holdout.from_}' must leave rows on both sides, "
            f"but that split has {n_rows} rows. Lower holdout.size or pick a larger split."
        )
    rng = np.random.default_rng(holdout.seed)
    return np.sort(rng.permutation(n_rows)[:count])


def select_rows(spec: str, role: str, sizes: dict[str, int], holdout: Holdout | None) -> list[tuple[str, np.ndarray]]:
    """(split, row indices) for each segment of `spec` as used by `role`.

    Rows of the holdout's split are the held-out rows for role `holdout.to` and every other row for
    the other roles, so a role never sees rows that are held out for another.
    """
    out = []
    for seg in segments(spec, sizes):
        rows = np.arange(seg.start, seg.stop)
        if holdout is not None and seg.split == holdout.from_:
            held = holdout_rows(holdout, sizes[seg.split])
            inside = np.isin(rows, held)
            rows = rows[inside] if role == holdout.to else rows[~inside]
        out.append((seg.split, rows))
    return out
