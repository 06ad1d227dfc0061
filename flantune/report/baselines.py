"""Simple baselines that put a model's scores in context. Each returns prediction TEXTS (answer choice
texts or summaries); the caller turns them into prediction rows beside a model's.

- majority_class: what a model that ignores its input scores (the floor of a classification task).
- tfidf_logreg: a bag-of-n-grams linear classifier, the classic strong cheap baseline.
- lead_sentences: the first k sentences (or lines, or words) of the input document (LEAD-3 for summarisation).
"""

from __future__ import annotations

import re
from collections import Counter

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from flantune.task_sections import LEAD_SPLITS  # one list, read by the task-file check too

# Fixed hyperparameters, chosen once and not tuned on any evaluation data:
TFIDF = {
    "sublinear_tf": True,  # 1 + log(tf): a word said ten times is not ten times the evidence
    "ngram_range": (1, 2),  # bigrams catch short negations ("not good")
    "min_df": 2,  # n-grams seen in a single training text only add noise and memory
}
LOGREG = {"C": 1.0, "max_iter": 1000}  # scikit-learn's default L2 strength; max_iter so lbfgs converges


def majority_class(train_labels: list[str], n: int) -> list[str]:
    """The most frequent training label, `n` times. Ties go to the label that sorts first, so the
    answer does not depend on the order of the training data."""
    if not train_labels:
        raise ValueError("majority_class needs at least one training label")
    counts = Counter(train_labels)
    best = max(sorted(counts), key=counts.__getitem__)  # max keeps the first of equal counts
    return [best] * n


def tfidf_pipeline(seed: int = 0) -> Pipeline:
    return Pipeline([
        ("tfidf", TfidfVectorizer(**TFIDF)),
        ("logreg", LogisticRegression(**LOGREG, random_state=seed)),
    ])


def tfidf_logreg(train_texts: list[str], train_labels: list[str], eval_texts: list[str], *,
                 seed: int = 0) -> list[str]:
    """TF-IDF (word 1-2 grams, sublinear tf, min_df=2) + L2 logistic regression (C=1), trained on the
    training texts and their label texts; returns the predicted label text of each eval text."""
    model = tfidf_pipeline(seed).fit(train_texts, train_labels)
    return [str(label) for label in model.predict(eval_texts)]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Only real line ends: str.splitlines() would also cut at U+2028 or U+0085 inside an utterance.
_LINE_END = re.compile(r"\r\n|\n|\r")


def lead_sentences(documents: list[str], k: int = 3, *, split: str = "auto") -> list[str]:
    """The first `k` sentences of each document, joined with "\\n" (split="words": its first k words, joined
    with spaces).

    split="lines": a sentence is a non-empty line ("\\n" or "\\r\\n" line ends). This is the unit of a
    chat dialogue such as SAMSum's (one utterance per line), so lead-3 on SAMSum takes the first three
    utterances, as the SAMSum paper's LEAD-3 baseline does (Gliwa et al., 2019).
    split="sentences": prose cut after ".", "!" or "?" followed by whitespace.
    split="auto": "lines" for a document that has a line break, else "sentences".
    split="words": the first k whitespace-separated words.
    """
    if split not in LEAD_SPLITS:
        raise ValueError(f"split must be one of {', '.join(LEAD_SPLITS)}, got {split!r}")
    if split == "words":
        return [" ".join(doc.split()[:k]) for doc in documents]
    out = []
    for doc in documents:
        by_lines = split == "lines" or (split == "auto" and ("\n" in doc or "\r" in doc))
        parts = _LINE_END.split(doc) if by_lines else _SENTENCE_END.split(doc)
        out.append("\n".join([p.strip() for p in parts if p.strip()][:k]))
    return out
