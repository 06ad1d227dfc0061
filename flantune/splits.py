"""Split specs in the hub's slicing syntax (`train`, `validation[:80%]`, `train[10:20]+test`), a task's seeded
holdout, and the rows they select.

The rows are computed as index lists over the full base split, so selecting them costs an index
mapping, not a copy of the data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from flantune.errors import FlantuneError


@dataclass(frozen=True)
class Holdout:
    """A seeded division of one split: `size` rows go to role `to`, every other role drawing on
    split `from_` leaves them out, so evaluation rows never appear in training."""

    from_: str
    to: str
    size: float  # a row count (>= 1) or a fraction of the split (< 1)
    seed: int

    def count(self, n_rows: int) -> int:
        return int(self.size) if self.size >= 1 else int(round(self.size * n_rows))


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


# ---- roles kept apart ----------------------------------------------------------------------------------------

# Where a role is carved from when its split is missing, in order of preference: the test set stays whole where it
# can, and an evaluation role is carved from another evaluation split before the training split.
_SOURCES = {"train": ("train", "validation", "test"), "validation": ("validation", "train", "test"),
            "test": ("test", "validation", "train")}
# The slices that carve one split into the roles that share it, by how many share it.
_CARVES = {3: ("[:80%]", "[80%:90%]", "[90%:]"), 2: ("[:80%]", "[80%:]")}


def carve_apart(splits: dict[str, str], holdout: Holdout | None, there: list[str], change: set[str]) -> dict[str, str]:
    """New split specs, by role, that read only splits that are `there` and keep the three roles' rows apart: each
    role of `change` and each role that reads a split not there is carved anew, as are the roles that then share
    its split. Only the specs that change are returned. A holdout keeps its own role apart (it takes its rows out
    of every other role's), so that role keeps reading the whole split."""
    roles = tuple(splits)
    base: dict[str, str] = {}
    for role in roles:
        names = check_split_syntax(splits[role])
        if role in change or any(n not in there for n in names):
            kept = {check_split_syntax(splits[r])[0] for r in roles if r == "test" and r not in change
                    and all(n in there for n in check_split_syntax(splits[r]))}
            order = [s for s in _SOURCES.get(role, ()) if s in there] + [s for s in there if s not in _SOURCES[role]]
            # the training rows come from a split the test role doesn't read, where there is one
            base[role] = next((s for s in order if role != "train" or s not in kept), order[0])
        elif len(names) == 1 and splits[role].strip() == names[0]:
            base[role] = names[0]  # a whole split, kept: it may share rows with a carved role
    new = dict(splits)
    for split in dict.fromkeys(base.values()):
        group = [r for r in roles if base.get(r) == split]
        if holdout is not None and holdout.from_ == split and holdout.to in group:
            group.remove(holdout.to)
            new[holdout.to] = split
        if len(group) == 1 and group[0] in base and base[group[0]] != splits[group[0]].strip():
            new[group[0]] = split
        elif len(group) > 1:
            slices = _CARVES[min(len(group), 3)] if "train" in group or len(group) == 3 else ("[:50%]", "[50%:]")
            for role, part in zip(group, slices):
                new[role] = f"{split}{part}"
    return {r: spec for r, spec in new.items() if spec != splits[r]}


def shared_rows(splits: dict[str, str], holdout: Holdout | None, sizes: dict[str, int],
                pairs: tuple[tuple[str, str], ...] = (("train", "validation"), ("train", "test"))
                ) -> list[tuple[str, str, str, np.ndarray]]:
    """(role, other role, split, row indices) for each pair of roles that read the same rows of a split, computed
    from the specs, the holdout and the splits' sizes alone (no data is read). A role reading a split of unknown size
    is left out: loading it says what is wrong."""
    rows = {}
    for role, spec in splits.items():
        if all(n in sizes for n in check_split_syntax(spec)):
            rows[role] = select_rows(spec, role, sizes, holdout)
    out = []
    for a, b in pairs:
        if a not in rows or b not in rows:
            continue
        for split_a, rows_a in rows[a]:
            for split_b, rows_b in rows[b]:
                if split_a == split_b:
                    common = np.intersect1d(rows_a, rows_b)
                    if len(common):
                        out.append((a, b, split_a, common))
    return out


def describe_rows(rows: np.ndarray, limit: int = 3) -> str:
    """'rows 0-8447' or 'rows 3-9, 20 and 31-40' or '1,200 rows (rows 0-99, ... )': sorted row indices as ranges."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = [(int(r[0]), int(r[-1])) for r in np.split(rows, breaks)]
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    listed = text[0] if len(text) == 1 else ", ".join(text[:-1]) + " and " + text[-1]
    if len(runs) > limit:
        return f"{len(rows):,} rows (rows {', '.join(text)}, ...)"
    return f"row{'s' if len(rows) > 1 else ''} {listed}"
