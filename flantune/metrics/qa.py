"""Extractive-QA metrics: SQuAD v1.1 and MLQA exact match / token F1, max over gold answers.

Both follow the official scripts (SQuAD's evaluate-v1.1.py, MLQA's mlqa_evaluation_v1.py) so that
numbers compare with published ones. Stats are per example in [0, 1]; `mean_em_f1` scales to
0-100 and gives nan for zero examples.
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from flantune.errors import FlantuneError

# ---- SQuAD v1.1 -------------------------------------------------------------------------------

_SQUAD_PUNCT = set(string.punctuation)


def normalize_squad(s: str) -> str:
    """lowercase -> drop ASCII punctuation -> drop English articles -> collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _SQUAD_PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _em_f1_stats(predictions, references, normalize: Callable[[str], str]) -> dict[str, np.ndarray]:
    n = len(predictions)
    em = np.zeros(n, dtype=np.float64)
    f1 = np.zeros(n, dtype=np.float64)
    for i, (pred, golds) in enumerate(zip(predictions, references)):
        if not golds:
            raise ValueError(f"example {i} has no gold answer (extractive QA needs at least one)")
        p = normalize(pred)
        normed = [normalize(g) for g in golds]
        em[i] = max(float(p == g) for g in normed)
        f1[i] = max(_f1(p.split(), g.split()) for g in normed)
    return {"exact_match": em, "f1": f1}


def squad_stats(predictions, references, *, choices=None, **_) -> dict[str, np.ndarray]:
    return _em_f1_stats(predictions, references, normalize_squad)


# ---- MLQA ---------------------------------------------------------------------------------------

_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "hi": None,  # Hindi has no formal articles
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",  # as in the official script (its first alternative can never match)
    "zh": None,  # Chinese has no formal articles
}
MLQA_LANGS = tuple(_ARTICLES)
_MIXED_SEGMENTATION_LANGS = {"zh"}


@lru_cache(maxsize=1)
def _mlqa_punct() -> frozenset[str]:
    # Every Unicode punctuation character (category P*), plus ASCII punctuation. Built lazily:
    # scanning all code points takes a few tenths of a second. range() stops before
    # sys.maxunicode exactly as the official script does.
    return frozenset(
        chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")
    ) | frozenset(string.punctuation)


def _mixed_segmentation(text: str, punct: frozenset[str]) -> list[str]:
    # Each CJK character (or punctuation mark) is its own token; other runs split on whitespace.
    out: list[str] = []
    buf = ""
    for ch in text:
        if re.search(r"[\u4e00-\u9fa5]", ch) or ch in punct:
            out.extend(buf.split())
            buf = ""
            out.append(ch)
        else:
            buf += ch
    out.extend(buf.split())
    return out


def normalize_mlqa(s: str, lang: str) -> str:
    """lowercase -> drop Unicode punctuation -> drop the language's articles -> re-tokenise."""
    if lang not in _ARTICLES:
        raise ValueError(f"Unknown MLQA language {lang!r}; expected one of {', '.join(MLQA_LANGS)}")
    punct = _mlqa_punct()
    s = s.lower()
    s = "".join(ch for ch in s if ch not in punct)
    if _ARTICLES[lang] is not None:
        s = re.sub(_ARTICLES[lang], " ", s)
    tokens = _mixed_segmentation(s, punct) if lang in _MIXED_SEGMENTATION_LANGS else s.split()
    return " ".join(t for t in tokens if t.strip() != "")


def mlqa_stats(predictions, references, *, choices=None, lang=None, **_) -> dict[str, np.ndarray]:
    if lang is None:
        raise FlantuneError(
            "The mlqa metric needs the answer language: give it the parameter lang "
            f"(one of {', '.join(MLQA_LANGS)}), e.g. metrics: [{{name: mlqa, lang: hi}}]."
        )
    if lang not in _ARTICLES:
        raise FlantuneError(f"The mlqa metric does not know the language {lang!r}: MLQA's evaluation "
                            f"defines {', '.join(MLQA_LANGS)}.")
    return _em_f1_stats(predictions, references, lambda s: normalize_mlqa(s, lang))


# ---- aggregate -----------------------------------------------------------------------------------

def mean_em_f1(stats, **_) -> dict[str, float]:
    if len(stats["exact_match"]) == 0:
        return {"exact_match": float("nan"), "f1": float("nan")}
    return {"exact_match": 100.0 * float(np.mean(stats["exact_match"])),
            "f1": 100.0 * float(np.mean(stats["f1"]))}
