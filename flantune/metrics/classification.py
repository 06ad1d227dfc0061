"""Classification metrics: generated texts are mapped to choice indices, then scikit-learn scores them.

A prediction matches a choice exactly after stripping whitespace, else case-insensitively
(casefold); a prediction that matches no choice gets index -1 and counts as wrong for its
gold class. Aggregating zero examples gives nan (support counts give 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, f1_score

INVALID = -1


def choice_index(choices: Sequence[str] | None):
    if not choices:
        raise ValueError("classification metrics need the task's choices, got none")
    exact: dict[str, int] = {}
    folded: dict[str, int] = {}
    for i, c in enumerate(choices):
        # setdefault: if two choices collide, the first one wins (deterministic)
        exact.setdefault(c.strip(), i)
        folded.setdefault(c.strip().casefold(), i)

    def index(text: str) -> int:
        t = text.strip()
        if t in exact:
            return exact[t]
        return folded.get(t.casefold(), INVALID)

    return index


def classification_stats(predictions, references, *, choices, **_) -> dict[str, np.ndarray]:
    index = choice_index(choices)
    pred = np.array([index(p) for p in predictions], dtype=np.int64)
    gold = np.empty(len(references), dtype=np.int64)
    for i, refs in enumerate(references):
        g = index(refs[0]) if refs else INVALID
        if g == INVALID:
            # A gold label outside the choices is a task/data bug, not a model error.
            raise ValueError(f"gold answer {refs[0] if refs else None!r} of example {i} is not one of the "
                             f"choices {list(choices)!r}")
        gold[i] = g
    return {"pred": pred, "gold": gold}


def accuracy(stats, *, choices, **_) -> dict[str, float]:
    if len(stats["gold"]) == 0:
        return {"accuracy": float("nan")}
    return {"accuracy": 100.0 * float(accuracy_score(stats["gold"], stats["pred"]))}


def macro_f1(stats, *, choices, **_) -> dict[str, float]:
    if len(stats["gold"]) == 0:
        return {"macro_f1": float("nan")}
    # labels= the real choices only: -1 (invalid) is never a class of its own, it only
    # lowers the recall of the gold class.
    f1 = f1_score(stats["gold"], stats["pred"], labels=list(range(len(choices))), average="macro",
                  zero_division=0)
    return {"macro_f1": 100.0 * float(f1)}


def per_class(stats, *, choices, **_) -> dict[str, float]:
    out: dict[str, float] = {}
    if len(stats["gold"]) == 0:
        for c in choices:
            out.update({f"precision/{c}": float("nan"), f"recall/{c}": float("nan"),
                        f"f1/{c}": float("nan"), f"support/{c}": 0.0})
        return out
    report = classification_report(stats["gold"], stats["pred"], labels=list(range(len(choices))),
                                   output_dict=True, zero_division=0)
    for i, c in enumerate(choices):
        row = report[str(i)]
        out[f"precision/{c}"] = 100.0 * float(row["precision"])
        out[f"recall/{c}"] = 100.0 * float(row["recall"])
        out[f"f1/{c}"] = 100.0 * float(row["f1-score"])
        out[f"support/{c}"] = float(row["support"])
    return out
