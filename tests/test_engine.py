"""`flantune run` end to end on the tiny model and real data: the run directory, learning, rank scoring
against generation, reloading full and LoRA models, generation and QA tasks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from flantune.config import load_config, to_yaml
from flantune.prelude import check, prepare
from flantune.evaluation import EvalResult, read_predictions

from tolerances import reordered

# A small real subset: 4,000 training reviews cut to 256 tokens, 200 steps of 16, 500 test reviews.
LEARN = ["task=imdb", "model=tiny", "train.max_steps=200", "train.eval_steps=200", "data.max_train_examples=4000",
         "data.max_eval_examples=500", "tasks.imdb.max_input_length=128", "seed=7"]


def _run(cli, tmp: Path, *options: str) -> Path:
    out = tmp / "run"
    code, stdout, err = cli("run", *options, f"output_dir={out}")
    assert code == 0, err
    assert f"run directory: {out}" in stdout
    return out


# A choice's score sums a few log-probabilities over the 32,128-token vocabulary, up to ~30 nats: a reloaded (or
# merged) model's forward pass, 2+2 layers of sums up to d_ff=256 terms, may reorder them (LoRA's x A B against
# the merged W + A B): reordered(...) of 30 nats, ~1e-3.
SCORES = 30 * reordered(256, depth=4)


def _score_gap(again: list[dict], saved: list[dict]) -> float:
    return max(abs(a["scores"][c] - b["scores"][c]) for a, b in zip(again, saved) for c in a["scores"])


def _predictions(out: Path, task: str) -> list[dict]:
    return read_predictions(out / "predictions" / f"{task}.jsonl")


def _reevaluate(out: Path, model, classify: str = "rank") -> EvalResult:
    cfg = OmegaConf.load(out / "config.yaml")
    cfg.eval.classify = classify
    return prepare(check(cfg, train=False)).evaluators[cfg.eval.split].run(model)


@pytest.fixture(scope="module")
def imdb_run(tmp_path_factory, shared_data):
    from flantune.cli import main

    out = tmp_path_factory.mktemp("imdb") / "run"
    assert main(["run", *LEARN, f"data_dir={shared_data}", f"output_dir={out}"]) == 0
    return out


@pytest.mark.slow
def test_run_directory_holds_everything(trained_run):
    out = trained_run
    cfg = OmegaConf.load(out / "config.yaml")
    assert list(cfg.task) == ["imdb", "samsum"] and cfg.model.name == "tiny" and cfg.train.max_steps == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["model"]["label"] == "tiny (random init)"
    imdb = metrics["tasks"]["imdb"]
    for key in ("accuracy", "macro_f1", "precision/negative", "recall/positive", "f1/positive", "support/negative",
                "loss"):
        assert key in imdb
    assert imdb["support/negative"] + imdb["support/positive"] == cfg.data.max_eval_examples
    assert metrics["trainable_parameters"] == metrics["total_parameters"] > 0
    for part in ("train", "eval"):
        assert metrics[part]["examples_per_s"] > 0 and metrics[part]["tokens_per_s"] > 0
    assert metrics["train"]["steps"] == 4 and metrics["wall_time_s"] > 0
    preds = _predictions(out, "imdb")
    assert len(preds) == cfg.data.max_eval_examples
    assert set(preds[0]) >= {"id", "input", "target", "prediction", "scores"}
    assert set(preds[0]["scores"]) == {"negative", "positive"}
    history = json.loads((out / "log_history.json").read_text())
    assert any("loss" in h for h in history) and any("eval_imdb/accuracy" in h for h in history)
    assert (out / "model" / "config.json").exists() and (out / "model" / "tokenizer.json").exists()


@pytest.mark.slow
def test_tiny_model_learns_imdb(imdb_run):
    # Chance is 50% (the 500 test reviews are about half positive); with 500 examples one standard error
    # is 2.2 points, so 60% is 4.5 standard errors above chance. (This run lands at 64.2%.)
    metrics = json.loads((imdb_run / "metrics.json").read_text())["tasks"]["imdb"]
    assert metrics["accuracy"] >= 60.0, metrics
    assert metrics["macro_f1"] >= 58.0, metrics


@pytest.mark.slow
def test_rank_scoring_never_invalid_and_agrees_with_generation_on_easy_cases(imdb_run):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(imdb_run / "model")
    rank = _predictions(imdb_run, "imdb")
    assert all(p["prediction"] in ("negative", "positive") for p in rank)
    generated = _reevaluate(imdb_run, model, classify="generate").tasks["imdb"]
    assert "invalid" in generated.metrics
    margin = [abs(p["scores"]["positive"] - p["scores"]["negative"]) for p in rank]
    easy = [i for i, m in enumerate(margin) if m > 1.0]  # one nat or more between the choices
    assert len(easy) >= 30
    agree = sum(rank[i]["prediction"] == generated.predictions[i]["prediction"] for i in easy)
    assert agree / len(easy) >= 0.95, (agree, len(easy))


@pytest.mark.slow
def test_saved_full_model_reloads_with_the_same_predictions(trained_run):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(trained_run / "model")
    again = _reevaluate(trained_run, model).tasks["imdb"].predictions
    saved = _predictions(trained_run, "imdb")
    assert [p["prediction"] for p in again] == [p["prediction"] for p in saved]
    assert _score_gap(again, saved) <= SCORES


@pytest.mark.slow
def test_lora_run_saves_an_adapter_that_reloads(cli, tmp_path, shared_data, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    out = _run(cli, tmp_path, "task=imdb", "model=tiny", "method=lora", "merge=true", "train.max_steps=20",
               "train.eval_steps=10", "data.max_train_examples=320", "data.max_eval_examples=40",
               "tasks.imdb.max_input_length=64", f"data_dir={shared_data}")
    adapter = json.loads((out / "model" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"] / 10
    assert adapter["base_model_name_or_path"] == str((out / "base_model").resolve())  # AutoPeft* loads it here
    base = AutoModelForSeq2SeqLM.from_pretrained(adapter["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, out / "model")
    saved = _predictions(out, "imdb")
    again = _reevaluate(out, model).tasks["imdb"].predictions
    assert _score_gap(again, saved) <= SCORES
    merged = AutoModelForSeq2SeqLM.from_pretrained(out / "merged")
    again = _reevaluate(out, merged).tasks["imdb"].predictions
    assert _score_gap(again, saved) <= SCORES
    # `flantune eval` of the LoRA run directory loads base + adapter itself
    code, _, err = cli("eval", f"model={out}", f"output_dir={tmp_path / 'eval'}")
    assert code == 0, err
    evaluated = read_predictions(tmp_path / "eval" / "predictions" / "imdb.jsonl")
    assert [p["prediction"] for p in evaluated] == [p["prediction"] for p in saved]

    # Moved, the run's adapter still finds the random base saved beside it, and a run given it as the model
    # trains on the same adapter (method=lora; peft would otherwise stack a second one on it) or merges it
    # into the base and trains every weight (method=full).
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(out, moved)
    code, _, err = cli("eval", f"model={moved}", f"output_dir={tmp_path / 'eval-moved'}")
    assert code == 0, err
    evaluated = read_predictions(tmp_path / "eval-moved" / "predictions" / "imdb.jsonl")
    assert [p["prediction"] for p in evaluated] == [p["prediction"] for p in saved]
    # README's plain-peft way for a run with base_model/, from another working directory
    monkeypatch.chdir(tmp_path / "elsewhere")
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(moved / "base_model"), moved / "model")
    assert _score_gap(_reevaluate(moved, model).tasks["imdb"].predictions, saved) <= SCORES
    short = ["train.max_steps=2", "train.eval_steps=2", "data.max_train_examples=32", "data.max_eval_examples=8",
             "tasks.imdb.max_input_length=64", f"data_dir={shared_data}"]
    for method in ("lora", "full"):
        code, _, err = cli("run", "task=imdb", f"model={moved}", f"method={method}", *short,
                           f"output_dir={tmp_path / method}")
        assert code == 0, err
        again = json.loads((tmp_path / method / "metrics.json").read_text())
        want = metrics["trainable_parameters"] if method == "lora" else again["total_parameters"]
        assert again["trainable_parameters"] == want
    # The adapter trained on keeps its own copy of the random base: moved in turn, it evaluates
    on = tmp_path / "lora"
    named = json.loads((on / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == str((on / "base_model").resolve()) and (on / "base_model" / "config.json").is_file()
    shutil.move(on, tmp_path / "lora-moved")
    code, _, err = cli("eval", f"model={tmp_path / 'lora-moved'}", f"output_dir={tmp_path / 'eval-lora-moved'}")
    assert code == 0, err


@pytest.mark.slow
def test_generation_task_samsum(trained_run):
    out = trained_run
    scores = json.loads((out / "metrics.json").read_text())["tasks"]["samsum"]
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "loss"}
    preds = _predictions(out, "samsum")
    assert len(preds) == OmegaConf.load(out / "config.yaml").data.max_eval_examples
    assert all(isinstance(p["prediction"], str) for p in preds)
    assert all("scores" not in p for p in preds)


@pytest.mark.slow
def test_extractive_qa_task_squad(cli, tmp_path, shared_data):
    # The mirror has no SQuAD train split: carve train / validation / test out of the official dev set.
    out = _run(cli, tmp_path, "task=squad", "model=tiny", "train.max_steps=10", "train.eval_steps=10",
               "tasks.squad.splits.train=validation[:80%]", "tasks.squad.splits.validation=validation[80%:90%]",
               "tasks.squad.splits.test=validation[90%:]", "data.max_train_examples=160",
               "data.max_eval_examples=12", "tasks.squad.max_input_length=128", f"data_dir={shared_data}")
    scores = json.loads((out / "metrics.json").read_text())["tasks"]["squad"]
    assert set(scores) == {"exact_match", "f1", "loss"}
    preds = _predictions(out, "squad")
    assert len(preds) == 12 and all(p["references"] for p in preds)  # every gold answer is kept


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics(cli, tmp_path, shared_data):
    opts = ["task=emotion", "model=tiny", "train.max_steps=12", "train.eval_steps=6", "data.max_train_examples=200",
            "data.max_eval_examples=40", f"data_dir={shared_data}"]
    a = json.loads((_run(cli, tmp_path / "a", *opts) / "metrics.json").read_text())
    b = json.loads((_run(cli, tmp_path / "b", *opts) / "metrics.json").read_text())
    assert a["tasks"] == b["tasks"]


def test_config_command_prints_the_resolved_config(cli):
    code, out, _ = cli("config", "task=imdb", "method=lora")
    cfg = OmegaConf.create(out)
    assert cfg.method == "lora" and cfg.train.lr == 1e-3 and cfg.model.path == "google/flan-t5-base"
    code, out, _ = cli("config", "task=imdb", "method=full")
    assert OmegaConf.create(out).train.lr == 1e-4  # LoRA's default learning rate is higher than full's
    code, _, err = cli("config", "task=[imdb,imbd]")  # `config` knows the tasks as `run` does
    assert code == 2 and "Unknown task 'imbd'. Did you mean 'imdb'?" in err


def test_config_file_then_overrides(cli, tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("task: samsum\nmethod: lora\nmodel: flan-t5-large\ntrain:\n  lr: 5.0e-4\n  batch_size: 4\n")
    code, out, err = cli("config", "--config", str(path), "train.batch_size=2")
    assert code == 0, err
    cfg = OmegaConf.create(out)
    assert (cfg.task, cfg.method, cfg.model.path, cfg.train.lr, cfg.train.batch_size) == \
        ("samsum", "lora", "google/flan-t5-large", 5e-4, 2)
    # options on both sides of --config
    code, out, err = cli("config", "train.max_steps=7", "--config", str(path), "train.batch_size=2")
    assert code == 0, err
    cfg = OmegaConf.create(out)
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr) == (7, 2, 5e-4)


@pytest.mark.parametrize("options, message", [
    (["train.lrr=3e-4"], "Unknown config key 'train.lrr' (command line train.lrr=3e-4). Did you mean 'train.lr'"),
    (["method=lorra"], "Unknown method 'lorra' (command line method=lorra). Did you mean 'lora' or 'qlora'"),
    (["model=flan-t5-lage"], "Did you mean 'flan-t5-large'"),
    (["model=./no/such/model"], "Model path './no/such/model' (command line model=./no/such/model) does not exist"),
    (["model=tiny", "precision=fp16"], "precision=fp16 is refused for T5-family models"),
    (["train.lr=abc"], "Bad value for config key 'train.lr' (command line train.lr=abc)"),
    (["task=imbd", "model=tiny"], "Unknown task 'imbd'. Did you mean 'imdb'?"),
    (["task=imdb", "model=tiny", "eval.classify=vote"], "Config key 'eval.classify' is 'vote'"),
    (["task=imdb", "model=tiny", "train.batch_size=8", "train.micro_batches=3"],
     "train.micro_batches=3 does not divide train.batch_size=8"),
    (["task=imdb", "model=tiny", "train.micro_batches=0"], "Config key 'train.micro_batches' is 0"),
    # the hub is unreachable here (and HF_HUB_OFFLINE=1 in the tests): the error says how to run offline
    (["task=imdb", "model=google/flan-t5-base"], "To run offline, pass a local folder (model=/path/to/flan-t5-base"),
])
def test_bad_run_input_is_a_clear_error_before_training(cli, tmp_path, options, message):
    out = tmp_path / "run"
    code, stdout, err = cli("run", *options, f"output_dir={out}", "data_dir=@sample")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (out / "checkpoints").exists()


def test_existing_output_dir_is_never_overwritten_silently(cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, _, err = cli("run", "task=imdb", "model=tiny", "data_dir=@sample", f"output_dir={out}")
    assert code == 2 and "already exists" in err and "resume=true" in err and "overwrite=true" in err
    code, _, err = cli("run", "task=imdb", "model=tiny", "data_dir=@sample", f"output_dir={out}", "overwrite=true")
    assert code == 2 and "flantune did not make" in err
    (out / "config.yaml").write_text("lr: 0.1\n")  # another tool's config.yaml doesn't make it a flantune run
    code, _, err = cli("run", "task=imdb", "model=tiny", "data_dir=@sample", f"output_dir={out}", "overwrite=true")
    assert code == 2 and "flantune did not make" in err
    assert (out / "notes.txt").read_text() == "my notes"
    code, _, err = cli("run", "task=imdb", "model=tiny", "data_dir=@sample", f"output_dir={out / 'notes.txt' / 'x'}")
    assert code == 2 and "notes.txt is a file" in err and "Traceback" not in err


def test_overwrite_never_deletes_what_the_command_reads(cli, tmp_path, monkeypatch):
    from transformers import T5Config, T5ForConditionalGeneration

    from flantune import rundir

    run = tmp_path / "run"  # a run directory flantune made, whose model/ the command is given
    rundir.mark(run, "run")
    (run / rundir.CONFIG).write_text(to_yaml(load_config(["model=tiny"])), encoding="utf-8")
    T5ForConditionalGeneration(T5Config(vocab_size=128, d_model=8, d_ff=16, d_kv=4, num_heads=2, num_layers=1,
                                        decoder_start_token_id=0)).save_pretrained(run / "model")
    for command in ("run", "eval"):
        code, _, err = cli(command, "task=imdb", f"model={run}", "data_dir=@sample", f"output_dir={run}",
                           "overwrite=true")
        assert code == 2 and "but this command reads" in err and "Traceback" not in err
        assert (run / "model" / "config.json").is_file()
    monkeypatch.chdir(run)  # nor the directory it runs in
    code, _, err = cli("run", "task=imdb", "model=tiny", "data_dir=@sample", "output_dir=.", "overwrite=true")
    assert code == 2 and "(the working directory)" in err and (run / rundir.MARK).is_file()


def test_precision_auto_is_bf16_on_a_gpu_and_fp32_on_cpu():
    cfg = load_config(["model=tiny"])
    from flantune.modeling import resolve_precision

    assert resolve_precision(cfg, "t5") == ("bf16" if torch.cuda.is_available() else "fp32")


@pytest.mark.slow
def test_gradient_accumulation_trains_like_the_whole_batch(cli, tmp_path, shared_data):
    """grad_accum=2 of 8 examples takes the same steps as batches of 16 (the same examples in random order):
    each step's loss is the token mean over both micro-batches. SAMSum's summaries differ in length, so a
    plain mean of the two batch means, or their sum (what the trainer does for T5 by itself), would differ."""
    opts = ["task=samsum", "model=tiny", "train.max_steps=3", "train.logging_steps=1", "train.eval_steps=100",
            "train.sampling=random", "data.max_train_examples=48", "data.max_eval_examples=8",
            "tasks.samsum.max_input_length=64", "tasks.samsum.max_target_length=32", f"data_dir={shared_data}"]
    logs = {}
    for batch, accum in ((16, 1), (8, 2)):
        out = _run(cli, tmp_path / str(accum), *opts, f"train.batch_size={batch}", f"train.grad_accum={accum}")
        history = json.loads((out / "log_history.json").read_text())
        logs[accum] = [(h["loss"], h["grad_norm"]) for h in history if "loss" in h]
    assert len(logs[1]) == 3
    for whole, accumulated in zip(logs[1], logs[2]):
        # batches of 8 pad and sum otherwise than one of 16 (model=tiny: 2+2 layers, d_ff=256), for up to 3 steps
        assert accumulated == pytest.approx(whole, rel=3 * reordered(256, depth=8))


@pytest.mark.slow
def test_the_schedulers_own_arguments_reach_it(cli, tmp_path, shared_data):
    """train.lr_scheduler_kwargs goes to transformers' scheduler, numbers as numbers (PyYAML alone reads 25e-2, with
    no decimal point, as text): cosine_with_min_lr decays to min_lr_rate x lr, where plain cosine decays to 0."""
    out = _run(cli, tmp_path, "task=imdb", "model=tiny", "train.max_steps=4", "train.logging_steps=1",
               "train.eval_steps=100", "train.lr=1e-3", "train.lr_scheduler=cosine_with_min_lr",
               "train.lr_scheduler_kwargs.min_lr_rate=25e-2", "data.max_train_examples=64", "data.max_eval_examples=8",
               "tasks.imdb.max_input_length=64", f"data_dir={shared_data}")
    rates = [h["learning_rate"] for h in json.loads((out / "log_history.json").read_text()) if "learning_rate" in h]
    # each step logs the rate it trained at: after k of the 4 steps, 0.25 + 0.75 x the cosine's (1 + cos(pi k / 4)) / 2
    assert rates == pytest.approx([1e-3 * (0.25 + 0.75 * (1 + math.cos(math.pi * k / 4)) / 2) for k in range(4)])


def test_flops_estimate_is_the_trainers_with_the_parameters_counted_once(tmp_path, monkeypatch):
    """FlantuneTrainer keeps the trainer's FLOP estimate (logged as total_flos) without walking the model's
    modules and parameters on every step."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from flantune.modeling import load_model
    from flantune.training import FlantuneTrainer

    model = load_model(load_config(["model=tiny"]), 0)
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = FlantuneTrainer(model=model, args=args, step=None, evaluator=None, sampler_factory=None)
    batches = [{"input_ids": torch.ones(b, n, dtype=torch.long), "labels": torch.ones(b, 3, dtype=torch.long)}
               for b, n in ((4, 7), (16, 300), (1, 1))]
    expected = [Seq2SeqTrainer.floating_point_ops(trainer, b) for b in batches]
    counted = []
    original = type(model).num_parameters
    monkeypatch.setattr(type(model), "num_parameters", lambda self, **kw: counted.append(kw) or original(self, **kw))
    assert [trainer.floating_point_ops(b) for b in batches * 2] == expected * 2
    assert expected[0] > 0 and len(counted) == 1


def test_a_model_or_metric_that_cannot_serve_is_an_error_before_the_data(cli, tmp_path, shared_data):
    bert = tmp_path / "bert"  # a complete-looking folder of another architecture
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"")
    code, _, err = cli("run", "task=imdb", f"model={bert}", "data_dir=@sample", f"output_dir={tmp_path / 'a'}")
    assert code == 2 and "is a bert model" in err and not (tmp_path / "a").exists()
    # an evaluate: metric loads before training (offline here, so it can't), not after it
    plugin = tmp_path / "tasks"
    plugin.mkdir()
    yaml_text = (Path(__file__).parents[1] / "examples" / "plugin_folder" / "rotten_tomatoes.yaml").read_text()
    (plugin / "rotten_tomatoes.yaml").write_text(
        yaml_text.replace("metrics: [accuracy, macro_f1, per_class]", "metrics: [accuracy, 'evaluate:accuracyy']"))
    code, _, err = cli("run", "task=rotten_tomatoes", "model=tiny", f"tasks_dir={plugin}", f"data_dir={shared_data}",
                       f"output_dir={tmp_path / 'b'}")
    assert code == 2 and "Could not load the metric 'evaluate:accuracyy'" in err and not (tmp_path / "b").exists()
