"""The peft methods beside LoRA (ia3, prompt_tuning, adalora, qlora) on real imdb data with the tiny model: each
trains, saves an adapter that PeftModel.from_pretrained loads and that scores the test set as the run did (rank
scoring), merges where it can, refuses merge=true where it can't (before any data), and resumes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from flantune.evaluation import read_predictions
from flantune.prelude import check, prepare

from tolerances import reordered

# A few steps of 8 short reviews, two evaluations (the best checkpoint is reloaded at the end), 24 test reviews.
SHORT = ["task=imdb", "model=tiny", "train.max_steps=4", "train.eval_steps=2", "train.batch_size=8",
         "data.max_train_examples=64", "data.max_eval_examples=24", "tasks.imdb.max_input_length=64", "seed=5"]
# A choice's score sums a few log-probabilities, up to ~30 nats, through 2+2 layers (tests/test_engine.py's bound).
SCORES = 30 * reordered(256, depth=4)
PEFT_TYPE = {"ia3": "IA3", "prompt_tuning": "PROMPT_TUNING", "adalora": "ADALORA", "qlora": "LORA"}


def _run(cli, out: Path, shared_data: Path, *options: str) -> dict:
    code, _, err = cli("run", *SHORT, *options, f"data_dir={shared_data}", f"output_dir={out}")
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text())


def _rescore(out: Path, model) -> list[dict]:
    """The run's test set scored again (rank scoring) by `model`."""
    cfg = OmegaConf.load(out / "config.yaml")
    return prepare(check(cfg, train=False)).evaluators[cfg.eval.split].run(model).tasks["imdb"].predictions


def _gap(again: list[dict], saved: list[dict]) -> float:
    return max(abs(a["scores"][c] - b["scores"][c]) for a, b in zip(again, saved) for c in a["scores"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ia3", "prompt_tuning", "adalora", "qlora"])
def test_method_trains_saves_a_loadable_adapter_and_merges_where_it_can(cli, tmp_path, shared_data, method):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    mergeable = method != "prompt_tuning"
    out = tmp_path / "run"
    metrics = _run(cli, out, shared_data, f"method={method}", f"merge={str(mergeable).lower()}")
    assert metrics["model"]["method"] == method
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"] / 20
    adapter = json.loads((out / "model" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == PEFT_TYPE[method]
    saved = read_predictions(out / "predictions" / "imdb.jsonl")
    assert len(saved) == 24 and all(set(p["scores"]) == {"negative", "positive"} for p in saved)

    base = AutoModelForSeq2SeqLM.from_pretrained(adapter["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, out / "model")
    again = _rescore(out, model)
    if method == "qlora":  # trained and evaluated over the 4-bit base; here the adapter sits on the fp32 base
        assert [p["prediction"] for p in again] and _gap(again, saved) < 5.0
    else:
        assert _gap(again, saved) <= SCORES
    assert (out / "merged").is_dir() == mergeable
    if mergeable and method != "qlora":  # qlora's merged/ holds the adapter folded into the 4-bit weights
        merged = AutoModelForSeq2SeqLM.from_pretrained(out / "merged")
        assert _gap(_rescore(out, merged), saved) <= SCORES
    # `flantune eval` of the run directory loads base + adapter itself and scores as the run did
    code, _, err = cli("eval", f"model={out}", f"output_dir={tmp_path / 'eval'}")
    assert code == 0, err
    if method != "qlora":
        evaluated = read_predictions(tmp_path / "eval" / "predictions" / "imdb.jsonl")
        assert _gap(evaluated, saved) <= SCORES


@pytest.mark.slow
def test_prompt_tuning_starts_from_the_init_text(cli, tmp_path, shared_data):
    # Trained with a zero-ish rate, the virtual tokens stay the init text's embeddings, repeated to fill them.
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "run"
    _run(cli, out, shared_data, "method=prompt_tuning", "prompt_tuning.num_virtual_tokens=8",
         "prompt_tuning.init_text='Is it positive'", "train.lr=1e-12")
    prompt = load_file(out / "model" / "adapter_model.safetensors")["prompt_embeddings"]
    base = AutoModelForSeq2SeqLM.from_pretrained(out / "base_model")
    ids = AutoTokenizer.from_pretrained(out / "base_model")("Is it positive")["input_ids"]  # with </s>
    assert 4 <= len(ids) < 8 and prompt.shape == (8, 128)
    want = base.shared.weight[(ids * 2)[:8]].detach()  # the text's tokens, repeated to fill the 8
    assert (prompt - want).abs().max() < 1e-6


@pytest.mark.slow
def test_an_adapter_method_resumes_from_its_last_checkpoint(cli, tmp_path, shared_data):
    # A finished run, then a copy cut back to its step-2 checkpoint as if killed there: resumed, it trains steps
    # 3-4 again and ends with the same test scores.
    keep = ["method=ia3", "train.save_total_limit=null"]
    first = tmp_path / "first"
    _run(cli, first, shared_data, *keep)
    cut = tmp_path / "cut"
    shutil.copytree(first, cut)
    (cut / "metrics.json").unlink()
    shutil.rmtree(cut / "checkpoints" / "checkpoint-4")
    code, _, err = cli("run", *SHORT, *keep, f"data_dir={shared_data}", f"output_dir={cut}", "resume=true")
    assert code == 0, err
    resumed = json.loads((cut / "metrics.json").read_text())
    assert resumed["train"]["resumed_from"].endswith("checkpoint-2")
    assert _gap(read_predictions(cut / "predictions" / "imdb.jsonl"),
                read_predictions(first / "predictions" / "imdb.jsonl")) <= SCORES


@pytest.mark.parametrize("options, message", [
    (["method=prompt_tuning", "merge=true"], "merge=true writes the adapter merged into its base model (merged/), "
                                             "but method=prompt_tuning can't be merged"),
    (["method=prompt_tuning", "train.sampling=packed"], "which packed rows (several examples a row) can't hold"),
    (["method=prompt_tuning", "prompt_tuning.num_virtual_tokens=0"], "'prompt_tuning.num_virtual_tokens' is 0"),
    (["method=qlora", "qlora.bits=3"], "Config key 'qlora.bits' is 3; choose 4 (NF4) or 8."),
    (["method=adalora", "adalora.target_r=16"], "adalora.target_r=16 and adalora.init_r=12"),
    (["method=ia3", "ia3.target_modules=[q,nope]", "ia3.feedforward_modules=[]"],
     "ia3.target_modules names nope, which this t5 model has no modules called"),
])
def test_method_settings_that_cant_work_are_refused_before_any_data(cli, tmp_path, shared_data, options, message):
    code, out, err = cli("run", "task=imdb", "model=tiny", *options, f"data_dir={shared_data}",
                         f"output_dir={tmp_path / 'run'}")
    assert code == 2 and message in " ".join(err.split()), err
    assert not (tmp_path / "run" / "config.yaml").exists() and "reading" not in out.lower()


def test_qlora_without_bitsandbytes_says_how_to_install_it(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    code, _, err = cli("run", "task=imdb", "model=tiny", "method=qlora", f"data_dir={tmp_path / 'none'}",
                       f"output_dir={tmp_path / 'run'}")
    assert code == 2 and "pip install 'flantune[qlora]'" in err and "use method=lora" in " ".join(err.split()), err
