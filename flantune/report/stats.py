"""The uncertainty of a difference between two systems scored on the same examples.

`paired_bootstrap` resamples examples (with replacement) and applies each resample to BOTH systems,
so that what varies between resamples is which examples are drawn, not how the two systems happened
to differ on one fixed draw. Every score is re-aggregated from the per-example statistics of
`flantune.metrics` (`aggregate_stats(..., index=...)`), so resampled scores follow the same
definitions as the reported ones. `mcnemar_exact` tests the classification case on the discordant
pairs only. `align_rows` puts two systems' prediction rows in one order before either is used.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

from flantune.errors import FlantuneError
from flantune.metrics import aggregate_stats, get_metric
from flantune.task import Task

CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "per_class")
# Resamples are aggregated in blocks of about this many drawn indices, so that memory stays bounded
# (25,000 examples x 1,000 resamples would be 200 MB of int64 at once).
_BLOCK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class Difference:
    metric: str
    reference: float  # the reference system's score on all examples
    system: float
    diff: float  # system - reference
    ci_low: float  # percentile interval of the resampled differences
    ci_high: float
    n: int  # examples
    confidence: float = 0.95

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (False when it is undefined)."""
        return bool(self.ci_low > 0 or self.ci_high < 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


@dataclass(frozen=True)
class McNemar:
    b: int  # reference right, system wrong
    c: int  # reference wrong, system right
    n: int  # all paired examples
    p_value: float  # exact two-sided binomial test of c out of b + c at 0.5 (1.0 when b + c == 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- pairing ---------------------------------------------------------------------------------------

def gold_texts(row: dict[str, Any]) -> list[str]:
    """The gold answers of a prediction row: `references` is only written when it differs from [target]."""
    return list(row["references"]) if "references" in row else [row["target"]]


def align_rows(task: str, ref_name: str, ref_rows: Sequence[dict[str, Any]], sys_name: str,
               sys_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`sys_rows` reordered to follow `ref_rows` by id. Paired statistics are meaningless unless both
    systems answered exactly the same examples with the same gold answers, so anything else raises."""
    ref_ids = _ids(task, ref_name, ref_rows)
    by_id = dict(zip(_ids(task, sys_name, sys_rows), sys_rows))
    differ = set(ref_ids).symmetric_difference(by_id)
    if differ:
        only_ref = len(set(ref_ids) - set(by_id))
        only_sys = len(differ) - only_ref
        sample = ", ".join(repr(i) for i in sorted(map(str, differ))[:3])
        raise FlantuneError(
            f"Task '{task}': '{ref_name}' and '{sys_name}' were not evaluated on the same examples: "
            f"{len(differ)} ids differ ({only_ref} only in '{ref_name}', {only_sys} only in '{sys_name}'; "
            f"e.g. {sample}). Evaluate both on the same split (eval.split) to compare them."
        )
    aligned = [by_id[i] for i in ref_ids]
    mismatched = sum(gold_texts(r) != gold_texts(s) for r, s in zip(ref_rows, aligned))
    if mismatched:
        raise FlantuneError(
            f"Task '{task}': '{ref_name}' and '{sys_name}' have different gold answers for {mismatched} of "
            f"{len(aligned)} examples with the same id: they were built from different data or task versions."
        )
    return aligned


def _ids(task: str, name: str, rows: Sequence[dict[str, Any]]) -> list[Any]:
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise FlantuneError(f"Task '{task}': the predictions of '{name}' repeat {len(ids) - len(set(ids))} "
                            "example ids, so they cannot be paired with another system's.")
    return ids


# ---- paired bootstrap ------------------------------------------------------------------------------

def resample_blocks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of resamples, one row of `n` indices each. Each row is its own rng.integers draw, so a
    resample's indices depend only on the seed and its position, not on the block size."""
    if n <= 0:
        raise ValueError("a bootstrap needs at least one example")
    rng = np.random.default_rng(seed)
    per_block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n_resamples, per_block):
        count = min(per_block, n_resamples - start)
        yield np.stack([rng.integers(0, n, size=n) for _ in range(count)])


def paired_bootstrap(task: Task, stats_ref: dict[str, dict[str, np.ndarray]],
                     stats_sys: dict[str, dict[str, np.ndarray]], *, n_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, groups: int = 1) -> dict[str, Difference]:
    """Percentile intervals of system - reference for every score the task's metrics produce
    (support counts excepted). `stats_*` are `compute_stats` outputs for the same examples in the
    same order (see `align_rows`). `groups` > 1: the stats hold that many blocks of the same examples end to
    end (a sweep's seeds); an example is drawn with all its blocks, so the examples, not their (seed, example)
    cells, are what is resampled."""
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < confidence < 1, got {n_resamples} and {confidence}")
    choices = task.choice_texts or None
    n = _length(stats_ref)
    if _length(stats_sys) != n:
        raise ValueError(f"the two systems' stats cover {n} and {_length(stats_sys)} examples: pair them first")
    ref_full = aggregate_stats(task.metrics, stats_ref, choices)
    sys_full = aggregate_stats(task.metrics, stats_sys, choices)
    names = [k for k, v in ref_full.items() if not k.startswith("support/") and isinstance(v, (int, float))]
    fast = _fast_path_agrees(task, stats_ref) and _fast_path_agrees(task, stats_sys)
    diffs: dict[str, list[np.ndarray]] = {k: [] for k in names}
    if groups < 1 or n % groups:
        raise ValueError(f"{n} stats rows do not split into {groups} groups of the same examples")
    m = n // groups
    for drawn in resample_blocks(m, n_resamples, seed):
        block = np.concatenate([drawn + g * m for g in range(groups)], axis=1)
        ref_scores = _resampled(task, stats_ref, block, fast)
        sys_scores = _resampled(task, stats_sys, block, fast)
        for k in names:
            diffs[k].append(sys_scores[k] - ref_scores[k])
    tail = 100 * (1 - confidence) / 2
    out: dict[str, Difference] = {}
    for k in names:
        d = np.concatenate(diffs[k])
        # A score that is undefined on some resample (nan) leaves the interval undefined too.
        low, high = np.percentile(d, [tail, 100 - tail]) if np.isfinite(d).all() else (np.nan, np.nan)
        out[k] = Difference(k, float(ref_full[k]), float(sys_full[k]), float(sys_full[k] - ref_full[k]),
                            float(low), float(high), n, confidence)
    return out


def _length(stats: dict[str, dict[str, np.ndarray]]) -> int:
    return len(next(iter(next(iter(stats.values())).values())))


def _resampled(task: Task, stats: dict[str, dict[str, np.ndarray]], block: np.ndarray,
               fast: bool) -> dict[str, np.ndarray]:
    """Scores of each resample (row of `block`): name -> array over resamples."""
    choices = task.choice_texts or None
    scores: dict[str, np.ndarray] = {}
    counted: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None  # (stats, their scores)
    for spec in task.metrics:
        if fast and _has_fast_path(spec):
            # scikit-learn's scorers spend ~10 ms a call on input checks (20 s for 1,000 paired
            # resamples), so classification scores come from resampled confusion counts, all at once:
            # once for all the classification metrics, which hold the same gold and pred indices.
            if counted is None or not _same_indices(counted[0], stats[spec.name]):
                counted = stats[spec.name], confusion_scores(stats[spec.name], choices, block)
            every = counted[1]
            scores.update({k: every[k] for k in get_metric(spec.name).output_names(choices)})
            continue
        rows = [aggregate_stats((spec,), {spec.name: stats[spec.name]}, choices, index=idx) for idx in block]
        for k in rows[0]:
            scores[k] = np.array([r[k] for r in rows], dtype=np.float64)
    return scores


def _has_fast_path(spec) -> bool:
    return spec.name in CLASSIFICATION_METRICS and not spec.params


def _same_indices(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a is b or all(np.array_equal(a[k], b[k]) for k in ("gold", "pred"))


def _fast_path_agrees(task: Task, stats: dict[str, dict[str, np.ndarray]]) -> bool:
    """Hold the confusion-count scores to `aggregate_stats` (scikit-learn) on the full sample and on
    one fixed resample; if the metric definitions ever drift apart, use the slow exact path."""
    specs = tuple(s for s in task.metrics if _has_fast_path(s))
    if not specs:
        return True
    choices = task.choice_texts
    n = _length(stats)
    probe = np.stack([np.arange(n), np.random.default_rng(12345).integers(0, n, size=n)])
    for spec in specs:
        fast = confusion_scores(stats[spec.name], choices, probe)
        for row, idx in enumerate(probe):
            exact = aggregate_stats((spec,), {spec.name: stats[spec.name]}, choices, index=idx)
            if not all(np.isclose(fast[k][row], v, rtol=0, atol=1e-9, equal_nan=True) for k, v in exact.items()):
                warnings.warn(f"the fast bootstrap of '{spec.name}' disagrees with flantune.metrics; using the "
                              "exact (slow) path", RuntimeWarning, stacklevel=3)
                return False
    return True


def confusion_scores(stats: dict[str, np.ndarray], choices: Sequence[str],
                     block: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, macro_f1 and per-class precision / recall / F1 / support for every resample (row) of
    `block`, from `classification_stats`: scikit-learn's definitions with zero_division=0, where an
    invalid prediction (-1) is a miss for its gold class and a prediction of no class."""
    gold, pred = stats["gold"], stats["pred"]
    k = len(choices)
    width = k + 1  # column 0 holds the invalid prediction -1
    cells = k * width
    codes = gold * width + (pred + 1)  # one code per (gold, predicted) pair
    shifted = codes[block] + (np.arange(len(block)) * cells)[:, None]  # a code range per resample
    counts = np.bincount(shifted.ravel(), minlength=len(block) * cells)
    confusion = counts.reshape(len(block), k, width).astype(np.float64)
    classes = np.arange(k)
    tp = confusion[:, classes, classes + 1]
    gold_n = confusion.sum(axis=2)
    pred_n = confusion[:, :, 1:].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred_n > 0, tp / pred_n, 0.0)
        recall = np.where(gold_n > 0, tp / gold_n, 0.0)
        f1 = np.where(pred_n + gold_n > 0, 2 * tp / (pred_n + gold_n), 0.0)
    out = {"accuracy": 100.0 * tp.sum(axis=1) / block.shape[1], "macro_f1": 100.0 * f1.mean(axis=1)}
    for i, c in enumerate(choices):
        out[f"precision/{c}"] = 100.0 * precision[:, i]
        out[f"recall/{c}"] = 100.0 * recall[:, i]
        out[f"f1/{c}"] = 100.0 * f1[:, i]
        out[f"support/{c}"] = gold_n[:, i]
    return out


# ---- McNemar ---------------------------------------------------------------------------------------

def mcnemar_exact(correct_ref: np.ndarray, correct_sys: np.ndarray) -> McNemar:
    """Exact McNemar test: under "both systems are equally often right", each discordant example is
    a fair coin, so c ~ Binomial(b + c, 1/2); concordant examples carry no information."""
    ref = np.asarray(correct_ref, dtype=bool)
    sys = np.asarray(correct_sys, dtype=bool)
    if ref.shape != sys.shape:
        raise ValueError(f"paired arrays differ in shape: {ref.shape} and {sys.shape}")
    b = int(np.sum(ref & ~sys))
    c = int(np.sum(~ref & sys))
    p = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)
    return McNemar(b=b, c=c, n=int(ref.size), p_value=p)


# ---- per-example scores ----------------------------------------------------------------------------

def per_example_scores(task: Task, stats: dict[str, dict[str, np.ndarray]]) -> tuple[str, np.ndarray] | None:
    """One score per example on a 0-1 scale, to find the examples a system fixed or broke:
    classification: 1 when the prediction maps to the gold choice; otherwise the primary metric's own
    per-example statistic when it has one (squad f1, a ROUGE F-measure); a corpus-level primary
    metric (BLEU) falls back to the example's rougeL F-measure when the task also computes ROUGE.
    None when no such score exists."""
    if task.is_classification:
        for s in stats.values():  # any classification metric's stats: they all hold gold and pred indices
            if "gold" in s and "pred" in s:
                return "correct", (s["gold"] == s["pred"]).astype(np.float64)
        return None
    for name in (task.primary_metric, "rougeL"):
        for spec in task.metrics:
            s = stats.get(spec.name, {})
            if name in s and np.issubdtype(s[name].dtype, np.floating):
                return name, s[name].astype(np.float64)
    return None
