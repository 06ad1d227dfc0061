"""A report built from realistic systems (real IMDB and SAMSum examples, designed predictions): its
numbers against scikit-learn / scipy / rouge_score computed here, its sections in report.md and
report.json, and report.html: self-contained, escaped, and rendered by headless Chromium."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from browser import chromium_page
from scipy.stats import binomtest
from sklearn.metrics import classification_report, confusion_matrix, f1_score

from flantune.errors import FlantuneError
from flantune.registry import discover
from flantune.report import System, baselines
from flantune.report.build import build_report

XSS = "<script>alert(1)</script>"
URL = "https://example.com/x"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tasks():
    reg = discover()
    return {"imdb": reg.get("imdb"), "samsum": reg.get("samsum")}


@pytest.fixture(scope="module")
def data(shared_data, tasks):
    """Designed predictions on real examples, and the arrays the expected numbers come from."""
    rng = np.random.default_rng(0)
    choices = tasks["imdb"].choice_texts
    test = pd.read_parquet(shared_data / "imdb" / "test.parquet").sample(160, random_state=1)
    gold = test.label.to_numpy()
    base = np.where(rng.random(160) < 0.7, gold, 1 - gold)
    tuned = np.where(rng.random(160) < 0.9, gold, 1 - gold)
    tuned_text = [choices[i] for i in tuned]
    tuned_text[int(np.flatnonzero(gold == base)[0])] = XSS  # an invalid prediction, and one the base got right
    imdb_rows = [{"id": f"test-{i}", "input": f"{text}\nIs this movie review positive or negative?",
                  "target": choices[g]} for i, (text, g) in enumerate(zip(test.text, gold))]

    chats = pd.read_parquet(shared_data / "samsum" / "test.parquet").head(40)
    # The chats' source URL in every input: texts from the data reach the report, URLs included.
    samsum_rows = [{"id": i, "input": f"Summarize this dialogue (from {URL}):\n{d}", "target": s}
                   for i, d, s in zip(chats.id, chats.dialogue, chats.summary)]
    lead1 = baselines.lead_sentences(list(chats.dialogue), k=1)
    tuned_sum = [s if i % 3 else lead for i, (s, lead) in enumerate(zip(chats.summary, lead1))]

    def rows(base_rows, preds):
        return [{**r, "prediction": p} for r, p in zip(base_rows, preds)]

    log = ([{"step": 10 * k, "loss": 2.0 / k, "learning_rate": 1e-4} for k in range(1, 21)]
           + [{"step": 50 * k, "eval_imdb/accuracy": 80.0 + k, "eval_score": 70.0 + k} for k in range(1, 5)])
    eval_speed = {"seconds": 12.0, "examples_per_s": 16.7, "tokens_per_s": 8000.0, "ms_per_example": 60.0}
    systems = [
        System("base: google/flan-t5-small", "model",
               {"imdb": rows(imdb_rows, [choices[i] for i in base]), "samsum": rows(samsum_rows, lead1)},
               {"eval": eval_speed, "model": {"label": "google/flan-t5-small", "method": "full"},
                "tasks": {"imdb": {"accuracy": 12.3}}}, source="runs/base"),
        System("fine-tuned: imdb+samsum", "model",
               {"imdb": list(reversed(rows(imdb_rows, tuned_text))), "samsum": rows(samsum_rows, tuned_sum)},
               {"eval": {**eval_speed, "examples_per_s": 20.0, "ms_per_example": 50.0},
                "model": {"label": "google/flan-t5-small", "method": "lora"}, "trainable_parameters": 344064,
                "total_parameters": 77305216, "wall_time_s": 321.5,
                "train": {"seconds": 300.0, "steps": 200, "examples_per_s": 10.7, "tokens_per_s": 5400.0}},
               log, source="runs/tuned"),
        System("majority class", "baseline", {"imdb": rows(imdb_rows, baselines.majority_class(["negative"], 160))}),
    ]
    return {"systems": systems, "gold": gold, "base": base, "tuned_text": tuned_text,
            "choices": choices, "chats": chats, "lead1": lead1, "tuned_sum": tuned_sum}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tasks, data):
    out = tmp_path_factory.mktemp("report")
    html = build_report(tasks, data["systems"], out, n_resamples=500, seed=0, examples_per_list=3)
    assert html == out / "report.html"
    return out, json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), html.read_text()


def test_scores_and_differences_match_scikit_learn(built, data):
    _, report, _, _ = built
    imdb = report["tasks"]["imdb"]
    gold, base, choices = data["gold"], data["base"], data["choices"]
    tuned_idx = np.array([choices.index(t) if t in choices else -1 for t in data["tuned_text"]])
    base_m = imdb["systems"]["base: google/flan-t5-small"]["metrics"]
    tuned_m = imdb["systems"]["fine-tuned: imdb+samsum"]["metrics"]
    assert base_m["accuracy"] == pytest.approx(100 * np.mean(base == gold))
    assert tuned_m["accuracy"] == pytest.approx(100 * np.mean(tuned_idx == gold))
    assert tuned_m["macro_f1"] == pytest.approx(100 * f1_score(gold, tuned_idx, labels=[0, 1], average="macro"))
    d = imdb["differences"]["fine-tuned: imdb+samsum"]["accuracy"]
    assert d["diff"] == pytest.approx(tuned_m["accuracy"] - base_m["accuracy"])
    assert d["ci_low"] < d["diff"] < d["ci_high"] and d["significant"] == (d["ci_low"] > 0 or d["ci_high"] < 0)
    assert "support/negative" not in imdb["differences"]["majority class"]
    assert imdb["invalid"]["fine-tuned: imdb+samsum"] == pytest.approx(100 / 160)

    right_b, right_t = base == gold, tuned_idx == gold
    b, c = int(np.sum(right_b & ~right_t)), int(np.sum(~right_b & right_t))
    m = imdb["mcnemar"]["fine-tuned: imdb+samsum"]
    assert (m["b"], m["c"], m["n"]) == (b, c, 160)
    assert m["p_value"] == pytest.approx(binomtest(c, b + c, 0.5).pvalue)

    expected = classification_report(gold, tuned_idx, labels=[0, 1], output_dict=True, zero_division=0)
    for i, name in enumerate(choices):
        got = imdb["per_class"]["fine-tuned: imdb+samsum"][name]
        assert got["precision"] == pytest.approx(100 * expected[str(i)]["precision"])
        assert got["recall"] == pytest.approx(100 * expected[str(i)]["recall"])
        assert got["support"] == expected[str(i)]["support"]
    conf = imdb["confusion"]["fine-tuned: imdb+samsum"]
    assert conf["columns"] == ["negative", "positive", "invalid"]  # the invalid column only where needed
    assert conf["counts"] == confusion_matrix(gold, tuned_idx, labels=[0, 1, -1])[:2].tolist()
    assert imdb["confusion"]["base: google/flan-t5-small"]["columns"] == ["negative", "positive"]

    # metrics.json of the base claims accuracy 12.3: the report keeps the recomputed value and says so.
    assert any("12.3000" in n and "metrics.json" in n for n in imdb["notes"])


def test_fixed_and_broken_examples(built, data):
    _, report, _, _ = built
    ex = report["tasks"]["imdb"]["examples"]["fine-tuned: imdb+samsum"]
    gold, base, choices = data["gold"], data["base"], data["choices"]
    right_t = np.array([t == choices[g] for t, g in zip(data["tuned_text"], gold)])
    right_b = base == gold
    assert ex["score"] == "correct"
    assert ex["n_fixed"] == int(np.sum(~right_b & right_t)) and ex["n_broke"] == int(np.sum(right_b & ~right_t))
    assert 0 < len(ex["fixed"]) <= 3 and len(ex["broke"]) == 3
    for e in ex["fixed"]:
        i = int(e["id"].split("-")[1])
        assert not right_b[i] and right_t[i] and e["system_prediction"] == choices[gold[i]]
        assert len(e["input"]) <= 300
    assert "majority class" not in report["tasks"]["imdb"]["examples"]  # baselines get no example lists

    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    summ = report["tasks"]["samsum"]["examples"]["fine-tuned: imdb+samsum"]
    assert summ["score"] == "rougeL"
    chats = data["chats"]

    def rl(preds):
        return np.array([scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(chats.summary, preds)])

    delta = rl(data["tuned_sum"]) - rl(data["lead1"])
    assert summ["n_fixed"] == int(np.sum(delta >= 0.5)) and summ["n_broke"] == int(np.sum(delta <= -0.5))
    for e in summ["fixed"]:
        assert e["system_score"] - e["reference_score"] >= 0.5


def test_sections_of_markdown_and_json(built):
    out, report, md, _ = built
    assert [s["role"] for s in report["systems"]] == ["reference", "fine-tuned", "baseline"]
    assert set(report["tasks"]) == {"imdb", "samsum"}
    assert "majority class" not in report["tasks"]["samsum"]["systems"]  # a baseline for one task only
    assert any("majority class" in n for n in report["tasks"]["samsum"]["notes"])
    assert report["speed"]["systems"]["fine-tuned: imdb+samsum"]["examples_per_s"] == 20.0
    assert report["speed"]["measured_together"] is False and "separate runs" in report["speed"]["note"]
    training = report["training"]["fine-tuned: imdb+samsum"]
    assert training["trainable_parameters"] == 344064 and training["validation_metric"] == "score"
    assert list(report["training"]) == ["fine-tuned: imdb+samsum"]

    for heading in ("# flantune report", "## Task: imdb", "## Task: samsum", "Exact McNemar test",
                    "Per class: fine-tuned: imdb+samsum", "fixed", "broke", "## Speed", "## Training",
                    "344,064", "ms/example"):
        assert heading in md, heading
    # Differences read "+3.2 [+1.0, +5.5]", bold with * when the interval excludes 0.
    assert re.search(r"\*\*[+-]\d+\.\d \\\[[+-]\d+\.\d, [+-]\d+\.\d\\\] \\\*\*\*", md)
    images = re.findall(r"!\[[^\]]*\]\((images/[^)]+\.png)\)", md)
    assert len(images) == 4  # three confusion matrices and one training curve
    for rel in images:
        assert (out / rel).read_bytes().startswith(PNG_MAGIC)
    # A prediction's HTML is escaped in report.md as in report.html: a Markdown viewer shows it as text.
    assert "<script" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md


def test_html_is_self_contained_and_escaped(built):
    _, report, _, html = built
    for bad in ("http://", "https://", 'src="//', "<script src", "<script", "<link", "@import", "url("):
        assert bad not in html, bad
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "https&#58;//example.com/x" in html  # a URL in the data is shown, but is no URL in the file
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 4 and all(base64.b64decode(u).startswith(PNG_MAGIC) for u in uris)
    assert re.search(r'class="up">[+]\d+\.\d \[[+]\d+\.\d, [+]\d+\.\d\] \*<', html)  # a marked significant gain


def test_measured_together_and_alignment_errors(tmp_path, tasks, data):
    base, tuned, _ = data["systems"]
    together = [System(s.name, s.kind, {"imdb": s.predictions["imdb"]}, {**s.metrics, "measured_together": True},
                       s.log_history) for s in (base, tuned)]
    build_report({"imdb": tasks["imdb"]}, together, tmp_path / "a", n_resamples=50)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["speed"]["measured_together"] is True and "same machine" in report["speed"]["note"]
    assert report["training"]["fine-tuned: imdb+samsum"]["validation_metric"] == "imdb/accuracy"

    short = System("short", "model", {"imdb": base.predictions["imdb"][:-2]})
    with pytest.raises(FlantuneError, match=r"Task 'imdb'.*'base: google/flan-t5-small' and 'short'.*2 ids differ"):
        build_report({"imdb": tasks["imdb"]}, [base, short], tmp_path / "b", n_resamples=50)


@pytest.mark.slow
def test_chromium_renders_the_report_offline(built, tmp_path):
    from PIL import Image
    html = built[0] / "report.html"
    failed, errors, requests = [], [], []
    with chromium_page(viewport={"width": 1200, "height": 900}) as page:
        page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri(), wait_until="load")
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        n_images = page.evaluate("document.images.length")
        title = page.title()
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
    assert failed == [] and errors == []
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert (n_images, broken, title) == (4, 0, "flantune report")
    image = Image.open(shot).convert("RGB")
    assert image.height > 2000  # the whole page, not one viewport
    colours = image.getcolors(maxcolors=1 << 24)  # (count, colour) pairs
    assert len(colours) > 50  # text, tables, figures: not a blank page
    assert np.mean(np.asarray(image).min(axis=2) < 250) > 0.02  # and not nearly all white
