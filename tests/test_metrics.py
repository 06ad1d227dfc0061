"""Metrics: hand-computed cases, agreement with the reference libraries, and the resampling contract.

Expected numbers are worked out in the comments; the reference implementations (scikit-learn,
rouge_score, sacrebleu) are called directly, never through flantune's code.
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import classification_report, f1_score

from flantune.errors import FlantuneError
from flantune.metrics import get_metric, score
from flantune.metrics.classification import classification_stats
from flantune.metrics.passthrough import evaluate_aggregate, evaluate_stats, load_evaluate_metric
from flantune.metrics.qa import mlqa_stats, normalize_mlqa, normalize_squad, squad_stats
from flantune.metrics.text import bleu_stats


def subset(stats, idx):
    return {k: v[idx] for k, v in stats.items()}


# ---- classification -------------------------------------------------------------------------------

SENTIMENT = ["positive", "negative", "neutral"]


def test_prediction_matching_strip_casefold_and_invalid():
    stats = classification_stats([" Positive ", "NEGATIVE\n", "neutral", "maybe", "positive."],
                                 [["positive"]] * 5, choices=SENTIMENT)
    # strip + casefold find the choice; "maybe" and "positive." match nothing -> -1
    assert stats["pred"].tolist() == [0, 1, 2, -1, -1]
    assert stats["gold"].tolist() == [0, 0, 0, 0, 0]
    # 1 of 5 right: the invalid outputs count as wrong
    assert score("accuracy", [" Positive ", "NEGATIVE\n", "neutral", "maybe", "positive."],
                 [["positive"]] * 5, choices=SENTIMENT) == {"accuracy": pytest.approx(20.0)}


def test_exact_match_wins_over_case_insensitive():
    choices = ["Yes", "yes"]
    stats = classification_stats(["yes", "Yes", "YES"], [["Yes"]] * 3, choices=choices)
    # "yes" and "Yes" match exactly; "YES" only case-insensitively -> first choice that folds equal
    assert stats["pred"].tolist() == [1, 0, 0]


def test_gold_outside_choices_is_an_error():
    with pytest.raises(ValueError, match="'maybe'"):
        classification_stats(["positive"], [["maybe"]], choices=SENTIMENT)


def test_macro_f1_hand_computed():
    gold = ["a", "a", "b", "b", "c", "c"]
    pred = ["a", "b", "b", "b", "c", "garbage"]
    refs = [[g] for g in gold]
    # a: TP 1, FP 0, FN 1 -> P 1,   R 1/2 -> F1 2/3
    # b: TP 2, FP 1, FN 0 -> P 2/3, R 1   -> F1 0.8
    # c: TP 1, FP 0, FN 1 (the invalid output) -> P 1, R 1/2 -> F1 2/3
    # macro = (2/3 + 0.8 + 2/3) / 3 = 0.71111...
    assert score("macro_f1", pred, refs, choices=["a", "b", "c"])["macro_f1"] == pytest.approx(
        100 * (2 / 3 + 0.8 + 2 / 3) / 3)
    assert score("accuracy", pred, refs, choices=["a", "b", "c"])["accuracy"] == pytest.approx(100 * 4 / 6)
    pc = score("per_class", pred, refs, choices=["a", "b", "c"])
    assert pc["precision/b"] == pytest.approx(100 * 2 / 3)
    assert pc["recall/a"] == pytest.approx(50.0)
    assert pc["f1/c"] == pytest.approx(100 * 2 / 3)
    assert pc["support/a"] == pc["support/b"] == pc["support/c"] == 2.0


def test_macro_f1_averages_over_every_choice():
    # "c" is neither gold nor predicted: its F1 is 0 (zero_division=0) and still counts -> (1 + 1 + 0) / 3
    assert score("macro_f1", ["a", "b"], [["a"], ["b"]], choices=["a", "b", "c"])["macro_f1"] == pytest.approx(
        200 / 3)


def test_classification_against_sklearn():
    choices = ["yes", "no", "maybe"]
    gold = [0, 0, 1, 1, 1, 2, 2, 0, 1, 2, 2, 0]
    pred = [0, 1, 1, 1, -1, 2, 0, 0, 2, 2, -1, 0]
    texts = [choices[p] if p >= 0 else "unsure" for p in pred]
    refs = [[choices[g]] for g in gold]
    labels = [0, 1, 2]
    assert score("macro_f1", texts, refs, choices=choices)["macro_f1"] == pytest.approx(
        100 * f1_score(gold, pred, labels=labels, average="macro", zero_division=0))
    report = classification_report(gold, pred, labels=labels, output_dict=True, zero_division=0)
    ours = score("per_class", texts, refs, choices=choices)
    assert set(ours) == set(get_metric("per_class").output_names(choices))
    for i, c in enumerate(choices):
        assert ours[f"precision/{c}"] == pytest.approx(100 * report[str(i)]["precision"])
        assert ours[f"recall/{c}"] == pytest.approx(100 * report[str(i)]["recall"])
        assert ours[f"f1/{c}"] == pytest.approx(100 * report[str(i)]["f1-score"])
        assert ours[f"support/{c}"] == report[str(i)]["support"]


# ---- SQuAD ----------------------------------------------------------------------------------------

def test_squad_normalisation():
    # lower -> drop punctuation ("-" too, which glues the words) -> drop "the" -> collapse spaces
    assert normalize_squad("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_squad("An apple, a   day.") == "apple day"
    # articles only as whole words: "theory" and "Anna" stay
    assert normalize_squad("the Theory of Anna") == "theory of anna"


def test_squad_em_and_f1():
    s = squad_stats(["The  Eiffel-Tower!", "the Eiffel Tower.", "the big red dog", "dog dog dog"],
                    [["eiffel tower"], ["Eiffel Tower"], ["red dog barks"], ["dog"]])
    # 1: "eiffeltower" vs "eiffel tower": no shared token -> EM 0, F1 0
    # 2: both normalise to "eiffel tower" -> EM 1, F1 1
    # 3: [big, red, dog] vs [red, dog, barks]: 2 common, P = R = 2/3 -> F1 2/3
    # 4: Counter clipping: min(3, 1) = 1 common, P 1/3, R 1 -> F1 = 2*(1/3)/(4/3) = 0.5
    assert s["exact_match"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert s["f1"] == pytest.approx([0.0, 1.0, 2 / 3, 0.5])
    # means: EM 1/4 = 25, F1 (0 + 1 + 2/3 + 0.5)/4 = 0.541666...
    agg = get_metric("squad").aggregate(s)
    assert agg["exact_match"] == pytest.approx(25.0)
    assert agg["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0.5) / 4)


def test_squad_max_over_gold_answers():
    s = squad_stats(["red dog", "red dog"], [["big red dog", "dog"], ["blue cat", "The red dog"]])
    # 1: vs "big red dog": P 2/2, R 2/3 -> F1 0.8; vs "dog": P 1/2, R 1 -> 2/3; max 0.8, no exact match
    # 2: "the red dog" -> "red dog": exact
    assert s["exact_match"].tolist() == [0.0, 1.0]
    assert s["f1"] == pytest.approx([0.8, 1.0])


# ---- MLQA -----------------------------------------------------------------------------------------

def test_mlqa_hindi_danda_is_punctuation():
    pred, gold = "भारत की राजधानी।", "भारत की राजधानी"
    # "।" (U+0964 DEVANAGARI DANDA, category Po) is Unicode punctuation: MLQA drops it
    assert normalize_mlqa(pred, "hi") == gold
    assert mlqa_stats([pred], [[gold]], lang="hi")["exact_match"].tolist() == [1.0]
    # SQuAD only drops ASCII punctuation: "राजधानी।" != "राजधानी" -> 2 of 3 tokens, F1 2/3
    s = squad_stats([pred], [[gold]])
    assert s["exact_match"].tolist() == [0.0]
    assert s["f1"] == pytest.approx([2 / 3])


def test_mlqa_hindi_partial_f1():
    s = mlqa_stats(["नई दिल्ली भारत"], [["नई दिल्ली"]], lang="hi")
    # [नई, दिल्ली, भारत] vs [नई, दिल्ली]: 2 common, P 2/3, R 1 -> F1 = (4/3)/(5/3) = 0.8
    assert s["exact_match"].tolist() == [0.0]
    assert s["f1"] == pytest.approx([0.8])


def test_mlqa_articles_depend_on_language():
    # en drops "the"; hi has no articles, so "the" stays a token: [the, capital] vs [capital] -> F1 2/3
    en = mlqa_stats(["the capital"], [["capital"]], lang="en")
    hi = mlqa_stats(["the capital"], [["capital"]], lang="hi")
    assert en["exact_match"].tolist() == [1.0]
    assert hi["exact_match"].tolist() == [0.0]
    assert hi["f1"] == pytest.approx([2 / 3])
    assert normalize_mlqa("der Hund", "de") == "hund"
    assert normalize_mlqa("los perros", "es") == "perros"
    assert normalize_mlqa("الكتاب", "ar") == "كتاب"  # the "ال" prefix goes
    # « » are Unicode punctuation (Pi/Pf), not ASCII: MLQA drops them, SQuAD keeps them
    assert normalize_mlqa("«Paris»", "en") == "paris"
    assert normalize_squad("«Paris»") == "«paris»"


def test_mlqa_chinese_character_segmentation():
    # every CJK character is a token, "。" is punctuation and goes
    assert normalize_mlqa("北京。", "zh") == "北 京"
    s = mlqa_stats(["北京市", "北京。"], [["北京"], ["北京"]], lang="zh")
    # 1: [北, 京, 市] vs [北, 京]: P 2/3, R 1 -> F1 0.8
    assert s["exact_match"].tolist() == [0.0, 1.0]
    assert s["f1"] == pytest.approx([0.8, 1.0])
    # latin runs inside Chinese stay whole words
    assert normalize_mlqa("iPhone手机", "zh") == "iphone 手 机"


def test_mlqa_language_errors():
    with pytest.raises(FlantuneError, match="lang"):
        mlqa_stats(["a"], [["a"]])
    with pytest.raises(FlantuneError, match="'fr'"):
        mlqa_stats(["a"], [["a"]], lang="fr")
    with pytest.raises(ValueError, match="'fr'"):
        normalize_mlqa("a", "fr")


# ---- ROUGE ----------------------------------------------------------------------------------------

def test_rouge_identical_is_100():
    text = "The quick brown fox jumps over the lazy dog.\nIt was not amused."
    assert score("rouge", [text], [[text]]) == pytest.approx(
        {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0})


def test_rouge_hand_computed():
    r = score("rouge", ["the cat sat"], [["the cat sat on the mat"]])
    # no word is longer than 3 letters, so the stemmer leaves all alone
    # rouge1: overlap the/cat/sat = 3, P 3/3, R 3/6 -> F 2*(1*0.5)/1.5 = 2/3
    # rouge2: [the cat, cat sat] both in the reference (5 bigrams): P 1, R 2/5 -> F 0.8/1.4 = 4/7
    # rougeL: LCS "the cat sat" = 3 -> same as rouge1
    assert r["rouge1"] == pytest.approx(200 / 3)
    assert r["rouge2"] == pytest.approx(400 / 7)
    assert r["rougeL"] == pytest.approx(200 / 3)


def test_rouge_uses_porter_stemmer():
    # "cats" -> "cat", "running"/"runs" -> "run" (words of > 3 letters are stemmed): identical token lists
    assert score("rouge", ["cats running"], [["cat runs"]])["rouge1"] == pytest.approx(100.0)


def test_rouge_against_rouge_score():
    pred = "Police killed the gunman after a standoff in the city centre."
    refs = ["The gunman was shot dead by police in the city center.", "Police shot the attacker."]
    direct = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    ours = score("rouge", [pred, pred], [[refs[0]], refs])
    single = direct.score(refs[0], pred)
    multi = direct.score_multi(refs, pred)
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[k] == pytest.approx(100 * (single[k].fmeasure + multi[k].fmeasure) / 2)
    # several references: max F over them ("a cat" gives rouge1 F 0.4 < 2/3 for the other one)
    assert score("rouge", ["the cat sat"], [["a cat", "the cat sat on the mat"]])["rouge1"] == pytest.approx(
        200 / 3)


def test_rouge_lsum_splits_on_newlines():
    ref = "the cat sat\nthe dog ran"
    pred = "the dog ran\nthe cat sat"
    r = score("rouge", [pred], [[ref]])
    # rougeL over the whole token stream: LCS of [the cat sat the dog ran] and [the dog ran the cat sat]
    # is 3 (e.g. "the dog ran") of 6 tokens -> P = R = F = 0.5
    assert r["rougeL"] == pytest.approx(50.0)
    # rougeLsum: each reference sentence is matched against each predicted sentence (union LCS):
    # both sentences are found whole -> 6/6 hits -> 100
    assert r["rougeLsum"] == pytest.approx(100.0)
    assert r["rouge1"] == pytest.approx(100.0)  # same bag of words


# ---- BLEU -----------------------------------------------------------------------------------------

BLEU_PREDS = [
    "The cat is sitting on the mat in the kitchen.",
    "A quick brown fox jumped over a lazy dog today.",
    "He reads the newspaper every single morning at home.",
    "The weather was cold and rainy all week long.",
    "Completely unrelated output text here.",
]
BLEU_REFS = [
    ["The cat sits on the mat in the kitchen.", "A cat is sitting on the kitchen mat."],
    ["The quick brown fox jumped over the lazy dog today."],
    ["Every morning he reads the newspaper at home.", "He reads the paper every morning at home."],
    ["The weather was cold and rainy for the whole week."],
    ["The meeting was moved to Thursday afternoon."],
]


def _transpose(refs):
    # sacrebleu's layout: one stream per reference position, None where an example has fewer
    width = max(len(r) for r in refs)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(width)]


def test_bleu_hand_computed_brevity_penalty():
    s = bleu_stats(["a b c d"], [["a b c d e f"]])
    # every n-gram of the hypothesis is in the reference: 4/4, 3/3, 2/2, 1/1 -> precisions 100
    # sys_len 4 < ref_len 6 -> BP = exp(1 - 6/4) = exp(-0.5) -> BLEU = 100 * 0.60653...
    assert [int(s[k][0]) for k in ("sys_len", "ref_len")] == [4, 6]
    assert [int(s[f"correct_{n}"][0]) for n in range(1, 5)] == [4, 3, 2, 1]
    assert [int(s[f"total_{n}"][0]) for n in range(1, 5)] == [4, 3, 2, 1]
    assert get_metric("bleu").aggregate(s)["bleu"] == pytest.approx(100 * math.exp(-0.5))


def test_bleu_equals_sacrebleu_with_variable_reference_counts():
    expected = sacrebleu.corpus_bleu(BLEU_PREDS, _transpose(BLEU_REFS)).score
    assert 0 < expected < 100
    assert score("bleu", BLEU_PREDS, BLEU_REFS)["bleu"] == expected  # bit-for-bit: same code path


def test_bleu_resampling_equals_sacrebleu_on_resampled_texts():
    stats = bleu_stats(BLEU_PREDS, BLEU_REFS)
    for idx in (np.array([0, 0, 3, 1, 4]), np.array([2, 2, 2]), np.array([4, 1])):
        preds = [BLEU_PREDS[i] for i in idx]
        refs = [BLEU_REFS[i] for i in idx]
        expected = sacrebleu.corpus_bleu(preds, _transpose(refs)).score
        # float64 from the same n-gram counts through log and exp: ~1e-14 of a score up to 100
        assert get_metric("bleu").aggregate(subset(stats, idx))["bleu"] == pytest.approx(expected, abs=1e-9)


# ---- resampling contract and empty input, every built-in metric ---------------------------------------

CHOICES = ["yes", "no", "maybe"]
CASES = [
    ("accuracy", {}, ["yes", "No", "maybe", "dunno", "no", "yes"],
     [["yes"], ["no"], ["yes"], ["maybe"], ["no"], ["maybe"]], CHOICES),
    ("macro_f1", {}, ["yes", "No", "maybe", "dunno", "no", "yes"],
     [["yes"], ["no"], ["yes"], ["maybe"], ["no"], ["maybe"]], CHOICES),
    ("per_class", {}, ["yes", "No", "maybe", "dunno", "no", "yes"],
     [["yes"], ["no"], ["yes"], ["maybe"], ["no"], ["maybe"]], CHOICES),
    ("squad", {}, ["the Eiffel Tower", "1889", "Paris, France", "red dog", "x", "Gustave"],
     [["Eiffel Tower"], ["in 1889"], ["Paris"], ["big red dog", "dog"], ["y"], ["Gustave Eiffel"]], None),
    ("mlqa", {"lang": "hi"}, ["भारत की राजधानी।", "नई दिल्ली भारत", "x", "the capital", "दिल्ली", "a b"],
     [["भारत की राजधानी"], ["नई दिल्ली"], ["y"], ["capital"], ["नई दिल्ली"], ["a b c"]], None),
    ("rouge", {}, BLEU_PREDS + ["one\ntwo three"], BLEU_REFS + [["two three\none"]], None),
    ("bleu", {}, BLEU_PREDS + ["The cat is on the mat."], BLEU_REFS + [["The cat is on the mat."]], None),
]


@pytest.mark.parametrize("name,params,preds,refs,choices", CASES, ids=[c[0] for c in CASES])
def test_resampled_stats_aggregate_like_the_resampled_texts(name, params, preds, refs, choices):
    metric = get_metric(name)
    stats = metric.stats(preds, refs, choices=choices, **params)
    for v in stats.values():
        assert isinstance(v, np.ndarray) and len(v) == len(preds)
    idx = np.array([5, 0, 0, 3, 2, 5, 1])
    resampled = metric.aggregate(subset(stats, idx), choices=choices, **params)
    direct = score(name, [preds[i] for i in idx], [refs[i] for i in idx], choices=choices, **params)
    assert resampled.keys() == direct.keys()
    for k in direct:
        assert resampled[k] == pytest.approx(direct[k], abs=1e-9), k  # float64 sums regrouped: ~1e-14 of 100
    full = score(name, preds, refs, choices=choices, **params)
    if metric.output_names(choices) is not None:
        assert list(full) == list(metric.output_names(choices))


@pytest.mark.parametrize("name,params,preds,refs,choices", CASES, ids=[c[0] for c in CASES])
def test_zero_examples_aggregate_to_nan(name, params, preds, refs, choices):
    metric = get_metric(name)
    stats = metric.stats(preds, refs, choices=choices, **params)
    out = metric.aggregate(subset(stats, np.array([], dtype=int)), choices=choices, **params)
    assert out.keys() == score(name, preds, refs, choices=choices, **params).keys()
    for k, v in out.items():
        # counts are really 0; every score is undefined
        assert (v == 0.0) if k.startswith("support/") else math.isnan(v), k


# ---- evaluate passthrough -------------------------------------------------------------------------------

def _fake_evaluate(monkeypatch, load):
    # A stand-in module: importing the real evaluate takes seconds and its load() needs the hub.
    monkeypatch.setitem(sys.modules, "evaluate", types.SimpleNamespace(load=load))
    load_evaluate_metric.cache_clear()  # loaded metrics are cached by name; don't reuse another test's fake


def test_evaluate_load_failure_explains_the_offline_fix(monkeypatch):
    def offline(name, *a, **k):
        raise ConnectionError("Couldn't reach 'meteor' on the Hub (LocalEntryNotFoundError)")

    _fake_evaluate(monkeypatch, offline)
    stats = evaluate_stats(["a"], [["a"]])
    with pytest.raises(FlantuneError) as err:
        evaluate_aggregate(stats, evaluate_name="evaluate:meteor")
    msg = str(err.value)
    assert "'evaluate:meteor'" in msg
    assert "evaluate:/path/to/metric_dir" in msg
    assert "need no network" in msg
    assert isinstance(err.value.__cause__, ConnectionError)


def test_evaluate_passthrough_computes_on_resampled_texts(monkeypatch):
    from datasets import Features, Value

    seen = {}

    class ExactMatch:  # like evaluate's exact_match: one reference string per example, 0-1 scale
        features = Features({"predictions": Value("string"), "references": Value("string")})

        def compute(self, *, predictions, references, ignore_case=False):
            seen.update(predictions=predictions, references=references, ignore_case=ignore_case)
            norm = (lambda s: s.lower()) if ignore_case else (lambda s: s)
            hits = [norm(p) == norm(r) for p, r in zip(predictions, references)]
            return {"exact_match": np.float64(sum(hits) / len(hits)), "per_item": hits, "note": "x"}

    loads = []
    _fake_evaluate(monkeypatch, lambda name: loads.append(name) or ExactMatch())
    # equal-length reference lists must stay one cell per example, not a 2-D array
    stats = evaluate_stats(["A", "b", "c"], [["a"], ["b"], ["z"]], choices=None, ignore_case=True)
    assert stats["references"].shape == (3,)
    out = evaluate_aggregate(subset(stats, np.array([0, 0, 2])), evaluate_name="exact_match", ignore_case=True)
    # "A" vs "a" twice (match with ignore_case), "c" vs "z" -> 2/3, on evaluate's own 0-1 scale
    assert out == {"exact_match": pytest.approx(2 / 3)}
    assert seen == {"predictions": ["A", "A", "c"], "references": ["a", "a", "z"], "ignore_case": True}
    evaluate_aggregate(stats, evaluate_name="exact_match", ignore_case=True)
    assert loads == ["exact_match"]  # the second aggregate (a resample) reuses the loaded metric


def test_evaluate_passthrough_keeps_reference_lists_when_the_metric_takes_them(monkeypatch):
    from datasets import Features, Sequence, Value

    seen = {}

    class MultiRef:  # like sacrebleu / bleu: a list of references per example
        features = [Features({"predictions": Value("string"), "references": Sequence(Value("string"))}),
                    Features({"predictions": Value("string"), "references": Value("string")})]

        def compute(self, *, predictions, references):
            seen["references"] = references
            return {"score": 1}

    _fake_evaluate(monkeypatch, lambda name: MultiRef())
    assert evaluate_aggregate(evaluate_stats(["a"], [["a"]]), evaluate_name="evaluate:x") == {"score": 1.0}
    assert seen["references"] == [["a"]]


def test_evaluate_passthrough_through_the_registry(monkeypatch):
    from datasets import Features, Value

    class Fake:
        features = Features({"predictions": Value("string"), "references": Value("string")})

        def compute(self, *, predictions, references):
            return {"n": len(predictions)}

    loaded = []
    _fake_evaluate(monkeypatch, lambda name: loaded.append(name) or Fake())
    assert score("evaluate:some_metric", ["a", "b"], [["a"], ["b"]]) == {"n": 2.0}
    assert loaded == ["some_metric"]
