"""The report's verdict sentence per task, its base row marked when the base model was trained on the task, the
plain note where no baseline applies, and the lead-3 baseline's ROUGE on real SAMSum rows checked here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
from rouge_score import rouge_scorer

from flantune.registry import discover
from flantune.report import System, baselines
from flantune.report.build import SINGLE_ANSWER_SHARE, build_report


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data):
    reg = discover()
    tasks = {"imdb": reg.get("imdb"), "samsum": reg.get("samsum"), "squad": reg.get("squad")}
    rng = np.random.default_rng(3)
    test = pd.read_parquet(shared_data / "imdb" / "test.parquet").sample(100, random_state=2)
    gold = ["negative", "positive"]
    golds = [gold[g] for g in test.label]
    imdb_rows = [{"id": f"test-{i}", "input": t, "target": g} for i, (t, g) in enumerate(zip(test.text, golds))]
    base = [g if rng.random() < 0.6 else gold[1 - gold.index(g)] for g in golds]
    tuned = ["positive"] * 100
    tuned[0] = "Negative "  # 99 of 100 answers are 'positive': at least SINGLE_ANSWER_SHARE

    chats = pd.read_parquet(shared_data / "samsum" / "test.parquet").head(12)
    samsum_rows = [{"id": i, "input": d, "target": s} for i, d, s in zip(chats.id, chats.dialogue, chats.summary)]
    squad = pd.read_parquet(shared_data / "squad" / "validation.parquet").head(10)
    squad_rows = [{"id": i, "input": q, "target": a["text"][0], "references": list(a["text"])}
                  for i, q, a in zip(squad.id, squad.question, squad.answers)]

    def rows(base_rows, preds):
        return [{**r, "prediction": p} for r, p in zip(base_rows, preds)]

    lead3 = baselines.lead_sentences(list(chats.dialogue), k=3)
    systems = [
        System("base: google/flan-t5-base", "model",
               {"imdb": rows(imdb_rows, base), "samsum": rows(samsum_rows, list(chats.summary.str.split().str[0])),
                "squad": rows(squad_rows, [r["target"] for r in squad_rows])},
               {"model": {"name": "flan-t5-base", "path": "google/flan-t5-base", "label": "google/flan-t5-base",
                          "method": None}, "split": "validation"}),
        System("fine-tuned: run", "model", {"imdb": rows(imdb_rows, tuned), "samsum": rows(samsum_rows, lead3),
                                            "squad": rows(squad_rows, ["x"] * 10)},
               {"model": {"label": "google/flan-t5-base", "method": "lora"}}),
        System("majority class", "baseline", {"imdb": rows(imdb_rows, ["negative"] * 100)}),
        System("lead sentences", "baseline", {"samsum": rows(samsum_rows, lead3)}),
    ]
    out = tmp_path_factory.mktemp("verdict")
    build_report(tasks, systems, out, n_resamples=300, seed=0)
    return {"report": json.loads((out / "report.json").read_text()), "md": (out / "report.md").read_text(),
            "chats": chats, "golds": golds, "base": base, "tuned": tuned}


def test_verdict_states_gain_interval_significance_and_single_answers(built):
    report, md = built["report"], built["md"]
    d = report["tasks"]["imdb"]["differences"]["fine-tuned: run"]["accuracy"]
    acc_base = 100 * np.mean([b == g for b, g in zip(built["base"], built["golds"])])
    acc_tuned = 100 * np.mean([t.strip().lower() == g for t, g in zip(built["tuned"], built["golds"])])
    assert d["reference"] == pytest.approx(acc_base) and d["system"] == pytest.approx(acc_tuned)
    verdict = report["tasks"]["imdb"]["verdict"]
    gain = (f"gains {d['diff']:.1f} accuracy points over" if d["diff"] >= 0 else
            f"loses {-d['diff']:.1f} accuracy points against") + " base: google/flan-t5-base"
    assert gain in verdict
    assert f"95% interval [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]" in verdict
    assert ("not significant" in verdict) == (not d["significant"])
    assert SINGLE_ANSWER_SHARE == 0.95
    assert "fine-tuned: run answers 'positive' for 99% of examples (at least 95%" in verdict
    assert "base: google/flan-t5-base answers" not in verdict  # 60% right on a mixed test set: no single answer
    # the verdict opens the report, before the tables
    assert md.index("imdb: fine-tuned: run ") < md.index("**Systems**")


def test_base_row_is_marked_when_the_base_model_was_trained_on_the_task(built):
    report, md = built["report"], built["md"]
    seen = report["tasks"]["samsum"]["seen_in_training"]
    assert seen["splits"] == ["train"] and not seen["evaluated_split_seen"]  # samsum validation: its own split
    assert "trained on this task's train split: the base score is not zero-shot" in seen["note"]
    squad = report["tasks"]["squad"]["seen_in_training"]  # squad's validation role is carved out of train
    assert squad["evaluated_split_seen"] and "validation rows (train) come from a split it was trained on" in squad["note"]
    assert "| base: google/flan-t5-base † |" in md
    assert "† base: google/flan-t5-base: trained on this task's train split" in md


def test_a_task_without_a_baseline_says_so_and_others_name_what_does_not_apply(built):
    notes = {name: t["notes"] for name, t in built["report"]["tasks"].items()}
    assert notes["squad"][0].startswith("No baseline applies to this extractive_qa task")
    assert "Not applicable to this classification task: lead sentences." in notes["imdb"]
    assert "Not applicable to this generation task: majority class." in notes["samsum"]
    assert not any("No predictions for this task" in n for ns in notes.values() for n in ns)


def test_lead3_rouge_on_real_samsum_rows(built):
    """LEAD-3 (the chat's first three utterances, as the task file's baseline declares) scored here with
    rouge_score on nltk Punkt sentences built from the package's English model."""
    from punkt.data import english
    from collections import defaultdict

    params = PunktParameters()
    params.abbrev_types, params.collocations = set(english.ABBREV_TYPES), set(english.COLLOCATIONS)
    params.sent_starters, params.ortho_context = set(english.SENT_STARTERS), defaultdict(int, english.ORTHO_CONTEXT)
    punkt = PunktSentenceTokenizer(params)
    chats = built["chats"]
    lead3 = ["\n".join([line.strip() for line in d.replace("\r\n", "\n").split("\n") if line.strip()][:3])
             for d in chats.dialogue]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score("\n".join(punkt.tokenize(s)), "\n".join(punkt.tokenize(p)))
              for s, p in zip(chats.summary, lead3)]
    got = built["report"]["tasks"]["samsum"]["systems"]["lead sentences"]["metrics"]
    for k in ("rouge1", "rougeL", "rougeLsum"):
        assert got[k] == pytest.approx(100 * np.mean([s[k].fmeasure for s in scores]), abs=1e-9), k


def test_a_lead_baseline_counts_words_when_its_task_file_says_so():
    import yaml

    from flantune.errors import FlantuneError
    from flantune.task import task_from_dict

    assert baselines.lead_sentences(["One two,  three\nfour five."], k=4, split="words") == ["One two, three four"]
    data = yaml.safe_load((__import__("pathlib").Path(__file__).parents[1] / "tasks" / "samsum.yaml").read_text())
    data["baselines"] = [{"name": "lead", "column": "dialogue", "k": 20, "split": "words"}]
    assert task_from_dict(data, origin="samsum.yaml").baselines[0]["split"] == "words"
    data["baselines"] = [{"name": "lead", "column": "dialogue", "k": 3, "split": "paragraphs"}]
    with pytest.raises(FlantuneError, match=r"'baselines\[0\].split' must be one of auto, lines, sentences, words"):
        task_from_dict(data, origin="samsum.yaml")
    data["baselines"] = [{"name": "lead", "column": "dialogue", "n": 3}]
    with pytest.raises(FlantuneError, match=r"'baselines\[0\].n' is not a known field"):
        task_from_dict(data, origin="samsum.yaml")
