"""`evaluate:<name>`: any metric of the Hugging Face evaluate library, computed on the raw texts.

Unlike the built-in metrics these need the hub (or a local copy of the metric script:
`evaluate:/path/to/metric_dir`) and keep the evaluate library's own scale (often 0-1, not 0-100).
Their stats are the texts themselves, so every resample re-runs the metric.
"""

from __future__ import annotations

from functools import lru_cache
from numbers import Number

import numpy as np

from flantune.errors import FlantuneError

PREFIX = "evaluate:"


def _object_array(items) -> np.ndarray:
    # np.array() would turn equal-length reference lists into a 2-D array; keep one cell per example.
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item
    return arr


def evaluate_stats(predictions, references, *, choices=None, evaluate_name=None, **_) -> dict[str, np.ndarray]:
    return {"predictions": _object_array(list(predictions)),
            "references": _object_array([list(r) for r in references])}


@lru_cache(maxsize=None)  # a bootstrap aggregates hundreds of times: load each metric once
def load_evaluate_metric(name: str):
    try:
        import evaluate
    except ImportError as exc:
        raise FlantuneError(f"The metric '{PREFIX}{name}' needs the evaluate library: pip install evaluate. "
                            "The built-in metrics do not.") from exc
    try:
        return evaluate.load(name)
    except Exception as exc:  # network, missing script, bad name: all reported the same way
        raise FlantuneError(
            f"Could not load the metric '{PREFIX}{name}' from the evaluate library ({type(exc).__name__}: {exc}). "
            "evaluate.load fetches metric scripts from the Hugging Face hub, so it needs network access or a "
            f"local copy of the metric: evaluate.load also accepts a directory, written as "
            f"'{PREFIX}/path/to/metric_dir'. The built-in metrics (accuracy, macro_f1, per_class, squad, mlqa, "
            "rouge, bleu) are computed locally and need no network."
        ) from exc


def _wants_flat_references(module) -> bool:
    """True when the metric only accepts one reference string per example (e.g. exact_match)."""
    from datasets import Value

    options = module.features if isinstance(module.features, list) else [module.features]
    return all(isinstance(f.get("references"), Value) for f in options)


def evaluate_aggregate(stats, *, choices=None, evaluate_name, **params) -> dict[str, float]:
    name = evaluate_name[len(PREFIX):] if evaluate_name.startswith(PREFIX) else evaluate_name
    if len(stats["predictions"]) == 0:
        return {}  # the output names are unknown without running the metric: nothing to report
    module = load_evaluate_metric(name)
    references = list(stats["references"])
    if all(len(r) == 1 for r in references) and _wants_flat_references(module):
        references = [r[0] for r in references]
    result = module.compute(predictions=list(stats["predictions"]), references=references, **params)
    # Keep top-level numbers only (lists such as BLEU's precisions don't fit a score table).
    return {k: float(v) for k, v in (result or {}).items() if _is_number(v)}


def _is_number(v) -> bool:
    if isinstance(v, np.ndarray):  # some metrics return 0-d arrays
        return v.ndim == 0 and np.issubdtype(v.dtype, np.number)
    return isinstance(v, (Number, np.number)) and not isinstance(v, (bool, np.bool_))
