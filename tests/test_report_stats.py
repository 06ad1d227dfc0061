"""Report statistics and baselines, checked against hand computations, scipy, sacrebleu and
scikit-learn pipelines built here (never against the code under test run twice)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import sacrebleu
from scipy.stats import binomtest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_recall_fscore_support
from sklearn.pipeline import Pipeline

from flantune.errors import FlantuneError
from flantune.metrics import compute_stats
from flantune.report import baselines
from flantune.report.stats import (align_rows, confusion_scores, mcnemar_exact, paired_bootstrap,
                                   per_example_scores)


def _paired_classification(n=200, ref_right=130, fixes=30, breaks=10, seed=1):
    """Gold labels and two systems' predictions: B fixes `fixes` of A's errors and breaks `breaks` of
    A's right answers, in shuffled positions."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 2, n)
    a_right = np.zeros(n, bool)
    a_right[:ref_right] = True
    b_right = a_right.copy()
    b_right[ref_right:ref_right + fixes] = True  # fixed
    b_right[:breaks] = False  # broken
    order = rng.permutation(n)
    gold, a_right, b_right = gold[order], a_right[order], b_right[order]
    a = np.where(a_right, gold, 1 - gold)
    b = np.where(b_right, gold, 1 - gold)
    return gold, a, b, a_right, b_right


def _stats(task, pred_idx, gold_idx):
    choices = task.choice_texts
    return compute_stats(task.metrics, [choices[i] for i in pred_idx], [[choices[i]] for i in gold_idx], choices)


def test_paired_bootstrap_matches_the_known_difference_and_the_normal_approximation(registry):
    imdb = registry.get("imdb")
    gold, a, b, a_right, b_right = _paired_classification()
    diffs = paired_bootstrap(imdb, _stats(imdb, a, gold), _stats(imdb, b, gold), n_resamples=1000, seed=0)
    acc = diffs["accuracy"]
    assert acc.reference == pytest.approx(65.0) and acc.system == pytest.approx(75.0)
    assert acc.diff == pytest.approx(10.0, abs=1e-9)  # (30 fixed - 10 broken) / 200 examples, in float64
    assert acc.n == 200
    assert acc.ci_low < 10.0 < acc.ci_high and acc.significant
    # The per-example difference d_i is +1 (fixed), -1 (broken) or 0: its standard error gives the
    # normal-approximation half-width of the interval.
    d = b_right.astype(float) - a_right.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) * 100
    assert (acc.ci_high - acc.ci_low) / 2 == pytest.approx(half, rel=0.15)
    assert abs((acc.ci_high - 10.0) - (10.0 - acc.ci_low)) < 0.2 * (acc.ci_high - acc.ci_low)
    # Every score but the support counts gets an interval.
    assert set(diffs) == {"accuracy", "macro_f1", "precision/negative", "recall/negative", "f1/negative",
                          "precision/positive", "recall/positive", "f1/positive"}
    assert diffs["macro_f1"].diff == pytest.approx(
        100 * (f1_score(gold, b, average="macro") - f1_score(gold, a, average="macro")))


def test_paired_bootstrap_is_reproducible_by_seed(registry):
    imdb = registry.get("imdb")
    gold, a, b, *_ = _paired_classification()
    sa, sb = _stats(imdb, a, gold), _stats(imdb, b, gold)
    first = paired_bootstrap(imdb, sa, sb, n_resamples=500, seed=7)["accuracy"]
    again = paired_bootstrap(imdb, sa, sb, n_resamples=500, seed=7)["accuracy"]
    other = paired_bootstrap(imdb, sa, sb, n_resamples=500, seed=8)["accuracy"]
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert abs(first.ci_low - other.ci_low) < 2.0 and abs(first.ci_high - other.ci_high) < 2.0


def test_an_identical_system_has_a_zero_width_interval(registry):
    imdb = registry.get("imdb")
    gold, a, *_ = _paired_classification()
    s = _stats(imdb, a, gold)
    acc = paired_bootstrap(imdb, s, s, n_resamples=200)["accuracy"]
    assert (acc.diff, acc.ci_low, acc.ci_high, acc.significant) == (0.0, 0.0, 0.0, False)


def test_fast_classification_scores_equal_scikit_learn_on_resamples(registry):
    emotion = registry.get("emotion")
    k = len(emotion.choice_texts)
    rng = np.random.default_rng(3)
    gold = rng.integers(0, k, 300)
    pred = np.where(rng.random(300) < 0.6, gold, rng.integers(-1, k, 300))  # some invalid (-1) predictions
    block = rng.integers(0, 300, (5, 300))
    fast = confusion_scores({"gold": gold, "pred": pred}, emotion.choice_texts, block)
    labels = list(range(k))
    for r, idx in enumerate(block):
        g, p = gold[idx], pred[idx]
        assert fast["accuracy"][r] == pytest.approx(100 * np.mean(g == p))
        assert fast["macro_f1"][r] == pytest.approx(100 * f1_score(g, p, labels=labels, average="macro",
                                                                   zero_division=0))
        prec, rec, f1, sup = precision_recall_fscore_support(g, p, labels=labels, zero_division=0)
        for i, c in enumerate(emotion.choice_texts):
            assert fast[f"precision/{c}"][r] == pytest.approx(100 * prec[i])
            assert fast[f"recall/{c}"][r] == pytest.approx(100 * rec[i])
            assert fast[f"f1/{c}"][r] == pytest.approx(100 * f1[i])
            assert fast[f"support/{c}"][r] == sup[i]


def test_bootstrap_of_a_mean_metric(registry):
    squad = registry.get("squad")
    rng = np.random.default_rng(5)
    ref_f1, sys_f1 = rng.random(400), rng.random(400) * 0.5 + 0.3
    ref = {"squad": {"exact_match": (ref_f1 > 0.9).astype(float), "f1": ref_f1}}
    sys = {"squad": {"exact_match": (sys_f1 > 0.9).astype(float), "f1": sys_f1}}
    f1 = paired_bootstrap(squad, ref, sys, n_resamples=1000)["f1"]
    d = sys_f1 - ref_f1
    assert f1.diff == pytest.approx(100 * d.mean())
    assert (f1.ci_high - f1.ci_low) / 2 == pytest.approx(1.96 * d.std(ddof=1) / np.sqrt(400) * 100, rel=0.15)


def test_bootstrap_of_corpus_bleu_against_sacrebleu(registry):
    task = registry.get("squad_qg")  # bleu (corpus-level) + rouge
    refs = ["what is the capital of france ?", "who wrote the book ?", "when did the war end ?",
            "how many people live in the city ?", "where is the river ?"] * 8
    ref_preds = ["what is france ?", "who wrote it ?", "when was the war ?", "how many live there ?",
                 "where is it ?"] * 8
    sys_preds = ["what is the capital of france ?", "who wrote the book ?", "when did the war start ?",
                 "how many people live there ?", "where is the river ?"] * 8
    gold = [[r] for r in refs]
    ref_stats = compute_stats(task.metrics, ref_preds, gold, None)
    sys_stats = compute_stats(task.metrics, sys_preds, gold, None)
    bleu = paired_bootstrap(task, ref_stats, sys_stats, n_resamples=300)["bleu"]
    assert bleu.reference == pytest.approx(sacrebleu.corpus_bleu(ref_preds, [refs]).score)
    assert bleu.system == pytest.approx(sacrebleu.corpus_bleu(sys_preds, [refs]).score)
    assert bleu.ci_low <= bleu.diff <= bleu.ci_high and bleu.significant


def test_mcnemar_against_scipy_and_by_hand():
    _, _, _, a_right, b_right = _paired_classification()
    m = mcnemar_exact(a_right, b_right)
    assert (m.b, m.c, m.n) == (10, 30, 200)
    assert m.p_value == pytest.approx(binomtest(30, 40, 0.5).pvalue, rel=1e-12)  # float64 sums of 40 terms
    # b=0, c=5: both tails of Binomial(5, 1/2) at their extremes: 2 * 0.5**5.
    five = mcnemar_exact(np.zeros(5, bool), np.ones(5, bool))
    assert (five.b, five.c) == (0, 5) and five.p_value == pytest.approx(2 * 0.5 ** 5)
    # b=1, c=3: 2 * P(X >= 3 | n=4) = 2 * (4 + 1) / 16.
    small = mcnemar_exact(np.array([1, 0, 0, 0, 1], bool), np.array([0, 1, 1, 1, 1], bool))
    assert (small.b, small.c) == (1, 3) and small.p_value == pytest.approx(0.625)
    assert mcnemar_exact(np.ones(4, bool), np.ones(4, bool)).p_value == 1.0  # no discordant pair


def _rows(ids, target="positive"):
    return [{"id": i, "input": f"text {i}", "target": target, "prediction": target} for i in ids]


def test_align_rows_orders_by_reference_and_refuses_other_examples():
    ref = _rows(["a", "b", "c"])
    sys = [dict(r, prediction=f"p-{r['id']}") for r in reversed(ref)]
    assert [r["prediction"] for r in align_rows("imdb", "base", ref, "tuned", sys)] == ["p-a", "p-b", "p-c"]
    with pytest.raises(FlantuneError) as err:
        align_rows("imdb", "base", ref, "tuned", _rows(["a", "b", "x", "y"]))
    msg = str(err.value)
    assert "imdb" in msg and "'base'" in msg and "'tuned'" in msg and "3 ids differ" in msg
    with pytest.raises(FlantuneError, match="different gold answers"):
        align_rows("imdb", "base", ref, "tuned", _rows(["a", "b", "c"], target="negative"))
    with pytest.raises(FlantuneError, match="repeat 1 example ids"):
        align_rows("imdb", "base", ref, "tuned", _rows(["a", "b", "c", "c"]))


def test_per_example_scores_by_task_kind(registry):
    imdb, squad, qg = registry.get("imdb"), registry.get("squad"), registry.get("squad_qg")
    name, scores = per_example_scores(imdb, _stats(imdb, [1, 0, 1], [1, 1, 1]))
    assert name == "correct" and scores.tolist() == [1.0, 0.0, 1.0]
    name, scores = per_example_scores(squad, compute_stats(squad.metrics, ["the cat sat", "dog"],
                                                           [["cat sat"], ["a cat"]], None))
    assert name == "f1" and scores.tolist() == [1.0, 0.0]
    name, _ = per_example_scores(qg, compute_stats(qg.metrics, ["a b"], [["a b"]], None))
    assert name == "rougeL"  # BLEU is corpus-level: ROUGE-L stands in
    bleu_only = compute_stats(qg.metrics[:1], ["a b"], [["a b"]], None)
    assert per_example_scores(qg, bleu_only) is None


# ---- baselines on real data ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imdb_subset(shared_data):
    train = pd.read_parquet(shared_data / "imdb" / "train.parquet").sample(2000, random_state=0)
    test = pd.read_parquet(shared_data / "imdb" / "test.parquet").sample(500, random_state=0)
    names = {0: "negative", 1: "positive"}
    return (list(train.text), [names[x] for x in train.label], list(test.text), [names[x] for x in test.label])


def test_majority_class(imdb_subset):
    _, train_labels, test_texts, test_labels = imdb_subset
    top = Counter(train_labels).most_common(1)[0][0]
    preds = baselines.majority_class(train_labels, len(test_texts))
    assert preds == [top] * 500
    assert np.mean(np.array(preds) == np.array(test_labels)) == pytest.approx(
        sum(label == top for label in test_labels) / 500)
    assert baselines.majority_class(["b", "a", "b", "a"], 2) == ["a", "a"]  # a tie: the first in sorted order
    assert baselines.majority_class(["b", "a", "b"], 1) == ["b"]


def test_tfidf_logreg_equals_a_hand_built_pipeline(imdb_subset):
    train_texts, train_labels, test_texts, test_labels = imdb_subset
    preds = baselines.tfidf_logreg(train_texts, train_labels, test_texts, seed=0)
    hand = Pipeline([("tfidf", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)),
                     ("lr", LogisticRegression(C=1.0, max_iter=1000, random_state=0))])
    expected = hand.fit(train_texts, train_labels).predict(test_texts)
    assert preds == list(expected)
    accuracy = np.mean(np.array(preds) == np.array(test_labels))
    assert 0.75 < accuracy < 0.95  # a bag of n-grams on 2,000 reviews: well above chance, below the state of the art


def test_lead_sentences():
    dialogue = "Anna: Hi!\r\nBen: Hello. How are you?\r\n\r\nAnna: Fine\nBen: Good\nAnna: Bye"
    assert baselines.lead_sentences([dialogue]) == ["Anna: Hi!\nBen: Hello. How are you?\nAnna: Fine"]
    assert baselines.lead_sentences([dialogue], k=1) == ["Anna: Hi!"]
    prose = "It rained. Then it stopped! Did it? Yes. Done."
    assert baselines.lead_sentences([prose]) == ["It rained.\nThen it stopped!\nDid it?"]
    assert baselines.lead_sentences(["Only one."], k=3) == ["Only one."]
    assert baselines.lead_sentences(["a\u2028b\nc"], k=1) == ["a\u2028b"]  # only real line ends split


def test_lead3_on_samsum_reproduces_the_papers_baseline(shared_data):
    from rouge_score import rouge_scorer

    test = pd.read_parquet(shared_data / "samsum" / "test.parquet")
    preds = baselines.lead_sentences(list(test.dialogue), k=3)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=True)
    scores = [scorer.score(ref, pred) for ref, pred in zip(test.summary, preds)]
    r1 = 100 * np.mean([s["rouge1"].fmeasure for s in scores])
    r2 = 100 * np.mean([s["rouge2"].fmeasure for s in scores])
    # Gliwa et al. (2019), Table 2, LEAD-3 on the SAMSum test set: ROUGE-1 31.40, ROUGE-2 8.68.
    assert r1 == pytest.approx(31.40, abs=1.0) and r2 == pytest.approx(8.68, abs=1.0)
