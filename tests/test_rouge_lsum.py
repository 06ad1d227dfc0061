"""ROUGE-Lsum as published SAMSum numbers compute it: Punkt sentences (nltk.sent_tokenize), one per line, then
rouge_score's rougeLsum; the Punkt model comes from an installed package, not a download."""

from __future__ import annotations

import nltk
import pandas as pd
import pytest
import yaml
from rouge_score import rouge_scorer

from flantune.errors import FlantuneError
from flantune.metrics import score
from flantune.report.baselines import lead_sentences
from flantune.task import task_from_dict


@pytest.fixture(scope="module")
def nltk_with_punkt_tab(tmp_path_factory):
    """nltk's own loader (nltk.sent_tokenize) reading punkt_tab files written from the package's English model:
    the data files nltk.download('punkt_tab') would install, which this machine can't fetch."""
    from punkt.data import english

    root = tmp_path_factory.mktemp("nltk_data")
    folder = root / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True)
    lines = {"abbrev_types.txt": sorted(english.ABBREV_TYPES), "sent_starters.txt": sorted(english.SENT_STARTERS),
             "collocations.tab": [f"{a}\t{b}" for a, b in sorted(english.COLLOCATIONS)],
             "ortho_context.tab": [f"{k}\t{v}" for k, v in sorted(english.ORTHO_CONTEXT.items())]}
    for name, rows in lines.items():
        (folder / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    nltk.data.path.insert(0, str(root))
    yield nltk.sent_tokenize
    nltk.data.path.remove(str(root))


def test_rouge_lsum_equals_punkt_sentences_and_rouge_score_on_samsum(shared_data, nltk_with_punkt_tab):
    sent_tokenize = nltk_with_punkt_tab
    test = pd.read_parquet(shared_data / "samsum" / "test.parquet").head(60)
    refs = list(test.summary)
    preds = lead_sentences(list(test.dialogue), k=3)  # utterances: several sentences, several lines
    assert sum(len(sent_tokenize(r)) > 1 for r in refs) >= 20  # multi-sentence references, where Lsum differs

    scorer = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=True)
    expected = [scorer.score("\n".join(sent_tokenize(r)), "\n".join(sent_tokenize(p)))
                for r, p in zip(refs, preds)]  # transformers' run_summarization.py postprocess_text
    got = score("rouge", preds, [[r] for r in refs])
    assert got["rougeLsum"] == pytest.approx(100 * sum(e["rougeLsum"].fmeasure for e in expected) / 60, abs=1e-9)
    assert got["rougeL"] == pytest.approx(100 * sum(e["rougeL"].fmeasure for e in expected) / 60, abs=1e-9)
    # The newline convention: rouge_score on the texts as they are.
    lines = score("rouge", preds, [[r] for r in refs], sentences="newline")
    plain = [scorer.score(r, p)["rougeLsum"].fmeasure for r, p in zip(refs, preds)]
    assert lines["rougeLsum"] == pytest.approx(100 * sum(plain) / 60, abs=1e-9)
    assert lines["rougeLsum"] != pytest.approx(got["rougeLsum"], abs=0.1)


def test_lsum_differs_from_l_on_two_swapped_sentences():
    """Reference "the cat sat. the dog ran." against the same two sentences swapped. ROUGE-L: the longest common
    subsequence of the 6 tokens is 3 ("the dog ran"), F = 3/6 = 0.5. ROUGE-Lsum: each reference sentence is
    covered whole by one predicted sentence, union LCS 3 + 3 = 6 of 6, F = 1."""
    ref, pred = "The cat sat. The dog ran.", "The dog ran. The cat sat."
    punkt = score("rouge", [pred], [[ref]])
    assert punkt["rougeL"] == pytest.approx(50.0) and punkt["rougeLsum"] == pytest.approx(100.0)
    newline = score("rouge", [pred], [[ref]], sentences="newline")  # one line each: Lsum is L
    assert newline["rougeLsum"] == pytest.approx(50.0)


def test_a_task_file_refuses_an_unknown_sentence_convention():
    data = yaml.safe_load("""
name: notes
description: Summaries.
kind: generation
source: {mirror: notes}
splits: {train: train, validation: validation, test: test}
templates: [{name: t, input: "{{ text }}"}]
target: "{{ summary }}"
metrics: [{name: rouge, sentences: lines}]
primary_metric: rougeLsum
""")
    with pytest.raises(FlantuneError, match=r"metrics\[rouge\].sentences' must be one of punkt, newline"):
        task_from_dict(data, origin="notes.yaml")
    data["metrics"] = [{"name": "rouge", "sentences": "newline"}]
    assert task_from_dict(data, origin="notes.yaml").metrics[0].params == {"sentences": "newline"}
