"""Bad configuration input is a one-paragraph error (exit code 2, no traceback) before any data or model work:
the checks of flantune/config.py, the --config and mixture files it reads, and `--debug` in either place."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flantune.cli import main
from flantune.config import load_config
from flantune.errors import FlantuneError
from flantune.transformers_checks import validate_with_transformers

# The audit's run options: its bad values used to fail only after tokenising and building the model.
RUN = ["task=imdb", "model=tiny", "data_dir=@sample", "data.max_train_examples=32", "data.max_eval_examples=8",
       "train.max_steps=2"]


def _refused(cli, tmp_path, *options: str, command: str = "run") -> str:
    """The error of `flantune COMMAND RUN... OPTIONS`, checked to be a clear one given before the run
    directory was made; returned on one line."""
    out = tmp_path / "run"
    code, _, err = cli(command, *RUN, *options, f"output_dir={out}")  # the options last: they win
    assert code == 2, err
    assert "Traceback" not in err and err.startswith(f"flantune {command}: error: ")
    assert not out.exists()
    return " ".join(err.split())


# ---- --config files ----------------------------------------------------------------------------------------------


def test_a_directory_given_as_config_file(cli, tmp_path):
    err = _refused(cli, tmp_path, "--config", str(tmp_path))
    assert f"Config file '{tmp_path}' is a directory: give the path of a YAML file." in err


def test_a_config_file_that_is_not_utf8(cli, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"train:\n  lr: 0.1 # \xe9t\xe9\n")
    err = _refused(cli, tmp_path, "--config", str(path))
    assert f"Config file '{path}' is not UTF-8 text (byte 0xe9 on line 2): save it as UTF-8 YAML." in err


def test_invalid_yaml_names_the_line(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.1\n   batch_size: 4\n")  # one space too many
    err = _refused(cli, tmp_path, "--config", str(path))
    assert f"Config file '{path}' is not valid YAML: mapping values are not allowed here at line 3, column 14." in err
    path.write_text("task: [imdb, samsum\ntrain: {lr: 0.1}\n")
    err = _refused(cli, tmp_path, "--config", str(path))
    assert "expected ',' or ']', but got ':' at line 2, column 6 (while parsing a flow sequence that starts at " \
           "line 1, column 7)." in err


@pytest.mark.parametrize("text", ["train: 5\n", "train:\n"])
def test_a_value_where_a_section_belongs(cli, tmp_path, text):
    path = tmp_path / "scalar.yaml"
    path.write_text(text)
    err = _refused(cli, tmp_path, "--config", str(path))
    assert f"Config key 'train' (--config {path}) holds settings, not a value" in err
    assert "'?'" not in err and "its keys: batch_size, compile," in err


def test_a_value_where_a_section_belongs_on_the_command_line(cli, tmp_path):
    err = _refused(cli, tmp_path, "train=5")
    assert "Config key 'train' (command line train=5) holds settings, not a value: got 5." in err


# ---- values load_config checks (every command) -------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (["train.save_steps=3", "train.eval_steps=2"],
     "train.save_steps=3 is not a multiple of train.eval_steps=2: the best checkpoint is chosen by the evaluations"),
    (["train.num_workers=-1"], "Config key 'train.num_workers' is -1; it must be at least 0."),
    (["data.template_seed=-1"], "Config key 'data.template_seed' is -1; it must be at least 0."),
    (["seed=-1"], "Config key 'seed' is -1; it must be in [0, 2**32)."),
    (["seed=4294967296"], "Config key 'seed' is 4294967296; it must be in [0, 2**32)."),
    (["train.warmup_ratio=5"], "Config key 'train.warmup_ratio' is 5.0; it must be in [0, 1)."),
    (["train.weight_decay=-0.1"], "Config key 'train.weight_decay' is -0.1; it must be at least 0."),
    (["train.max_grad_norm=-1"], "Config key 'train.max_grad_norm' is -1.0; it must be at least 0."),
    (["train.epochs=-1"], "Config key 'train.epochs' is -1.0; it must be at least 0."),
    (["train.save_total_limit=0"], "Config key 'train.save_total_limit' is 0; it must be at least 1."),
    (["mixing.scheme=propotional"], "mixing.scheme is 'propotional'; choose one of proportional, temperature, equal, "
                                    "weights. Did you mean 'proportional'?"),
    (["mixing.weights.imbd=2"], "mixing.weights names task 'imbd', which is not in this run (imdb). Did you mean "
                                "'imdb'?"),
    (["mixing.cap=0"], "mixing.cap is 0; it must be a positive number of examples"),
    (["merge=true"], "merge=true writes a LoRA adapter merged into its base model (merged/), but method=full has no "
                     "adapter"),
    (["report_to=5"], "Config key 'report_to' is 5; give none, all, an integration name"),
    (["report_to=null"], "Config key 'report_to' is None"),
])
def test_bad_values_are_refused_before_the_run_starts(cli, tmp_path, options, message):
    assert message in _refused(cli, tmp_path, *options)


def test_good_values_next_to_the_refused_ones_pass(cli):
    for options in (["train.save_steps=400", "train.eval_steps=200"], ["method=lora", "merge=true"],
                    ["train.warmup_ratio=0.1", "train.max_grad_norm=0", "seed=0"], ["mixing.weights.imdb=2"],
                    ["report_to=[tensorboard,wandb]"]):
        code, _, err = cli("config", *RUN, *options)
        assert code == 0, (options, err)


# ---- values checked against transformers' own lists (validate_with_transformers) ---------------------------------


@pytest.mark.parametrize("options, message", [
    (["train.lr_scheduler=cosin"], "Config key 'train.lr_scheduler' is 'cosin'; choose one of linear, cosine,"),
    (["train.lr_scheduler=cosin"], "Did you mean 'cosine'?"),
    (["train.optim=adamw", "precision=bf16-mixed"], "Config key 'train.optim' is 'adamw'; choose one of adamw_torch,"),
    (["report_to=tensorbord"], "Config key 'report_to' names 'tensorbord', which transformers doesn't report to. "
                               "Did you mean 'tensorboard'?"),
    (["report_to=[tensorboard,tensorbord]"], "Config key 'report_to' names 'tensorbord'"),
    (["model.architecture.d_model=abc"], "Config key 'model.architecture.d_model' is 'abc'; T5Config says: Field "
                                         "'d_model' expected int, got str"),
    (["train.lr_scheduler=cosine_with_min_lr"], "train.lr_scheduler=cosine_with_min_lr can't be built with "
                                                "train.lr_scheduler_kwargs (none): One of min_lr or min_lr_rate"),
    (["train.lr_scheduler=warmup_stable_decay"], "missing 1 required positional argument: 'num_decay_steps'. Set the "
                                                 "scheduler's arguments as train.lr_scheduler_kwargs.NAME=VALUE"),
    (["train.lr_scheduler_kwargs.min_lr_rat=0.1"], "(min_lr_rat=0.1): get_linear_schedule_with_warmup() got an "
                                                   "unexpected keyword argument 'min_lr_rat'"),
    (["train.lr_scheduler=constant", "train.lr_scheduler_kwargs.min_lr_rate=0.1"],
     "train.lr_scheduler=constant takes no arguments, but train.lr_scheduler_kwargs gives min_lr_rate=0.1."),
    (["train.lr_scheduler=cosine_with_min_lr", "train.lr_scheduler_kwargs.min_lr_rate=low"],
     "can't be built with train.lr_scheduler_kwargs (min_lr_rate='low'): unsupported operand"),
    (["model.architecture.feed_forward_proj=gated-gelu_neww"], "'gelu_neww' is not an activation transformers knows. "
                                                               "Did you mean 'gelu_new'"),
    (["model.architecture.d_modell=64"], "Unknown config key 'model.architecture.d_modell': T5Config has no field "
                                         "'d_modell'. Did you mean 'd_model'?"),
])
def test_values_for_transformers_are_checked_against_its_lists(options, message):
    cfg = load_config([*RUN, *options])  # the cheap checks let these through: they need transformers' lists
    with pytest.raises(FlantuneError) as caught:
        validate_with_transformers(cfg)
    assert message in " ".join(str(caught.value).split())


def test_an_optimizer_whose_package_is_missing_is_refused_before_a_run_but_not_an_evaluation(cli, tmp_path):
    from flantune.prelude import check

    err = _refused(cli, tmp_path, "train.optim=adamw_torch_xla", "precision=fp32")
    assert ("train.optim=adamw_torch_xla can't run here: Trainer failed to import syncfree AdamW from torch_xla. "
            "Or choose another train.optim (adamw_torch_fused is the default).") in err
    check(load_config([*RUN, "train.optim=adamw_torch_xla", "precision=fp32"]))  # eval's checks: no optimizer


def test_report_to_a_missing_package_says_what_to_install(monkeypatch):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(FlantuneError, match=r"report_to=tensorboard can't report here: the tensorboard package is "
                                            r"not installed: pip install tensorboard \(or pip install "
                                            r"'flantune\[tensorboard\]'\)\. Or set report_to=none\."):
        validate_with_transformers(load_config([*RUN, "report_to=tensorboard"]))


def test_the_shipped_configs_pass_the_transformers_checks():
    for options in ([], ["model=tiny"], ["method=lora"], ["train.lr_scheduler=cosine", "train.optim=adafactor",
                                                          "report_to=[none]", "model.architecture.hidden_size=64"],
                    ["train.lr_scheduler=cosine_with_min_lr", "train.lr_scheduler_kwargs.min_lr_rate=0.1",
                     "model.architecture.feed_forward_proj=relu"]):
        validate_with_transformers(load_config(["task=imdb", *options]))


def test_numbers_without_a_decimal_point_are_numbers_in_free_form_mappings_too(tmp_path):
    """1e-6 is a number on the command line and in --config files, as OmegaConf reads it, also where no schema
    converts it (PyYAML's YAML 1.1 rules read it as text, which T5Config and the schedulers refuse)."""
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  lr: 3e-4\n  lr_scheduler: cosine_with_min_lr\n  lr_scheduler_kwargs:\n"
                      "    min_lr: 1e-6\n")
    cfg = load_config([*RUN, "model.architecture.layer_norm_epsilon=1e-6"], [str(config)])
    assert cfg.model.architecture.layer_norm_epsilon == 1e-6 and cfg.train.lr_scheduler_kwargs.min_lr == 1e-6
    assert cfg.train.lr == 3e-4
    validate_with_transformers(cfg)


@pytest.mark.slow
def test_config_still_answers_without_importing_torch_or_transformers():
    code = ("import sys; from flantune.cli import main; main(['config', 'model=tiny', 'mixing.scheme=equal']);"
            "print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr


# ---- --debug -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--debug", "config", "train.lrr=1"], ["config", "--debug", "train.lrr=1"]])
def test_debug_shows_the_traceback_before_or_after_the_command(args, capsys):
    assert main(args) == 2  # the exit code of bad input, with the traceback too
    err = capsys.readouterr().err
    assert "Traceback" in err and "FlantuneError: Unknown config key 'train.lrr'" in err


def test_without_debug_the_error_is_one_paragraph(cli):
    code, _, err = cli("config", "train.lrr=1")
    assert code == 2 and "Traceback" not in err and "Unknown config key 'train.lrr'" in err


# ---- mixture files -----------------------------------------------------------------------------------------------


def test_a_mixture_file_error_names_the_file_itself(cli, tmp_path):
    path = tmp_path / "mixTemp.yaml"
    path.write_text("tasks: [imdb, emotion]\nmixing: {temperature: abc, scheme: temperature}\n")
    code, _, err = cli("config", f"mixture={path}")
    assert code == 2 and "Traceback" not in err
    assert f"Bad value for config key 'mixing.temperature' (mixture file {path}):" in err
    assert "configs/mixture/" not in err


def test_a_mixture_file_may_include_one_mixture_without_brackets(cli, tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text("tasks: [samsum]\ninclude: classify3\n")
    code, out, err = cli("config", f"mixture={path}")
    assert code == 0, err
    assert load_config([f"mixture={path}"]).task == ["imdb", "emotion", "paws", "samsum"]
    path.write_text("tasks: [samsum]\ninclude: 5\n")
    code, _, err = cli("config", f"mixture={path}")
    assert code == 2 and f"Mixture file {path}: 'include' must be a list of mixture names or files" in err
    path.write_text("tasks: [samsum]\nmixing: equal\n")
    code, _, err = cli("config", f"mixture={path}")
    assert code == 2 and f"Mixture file {path}: 'mixing' must be a mapping of settings" in err


def test_mixing_weights_take_effect_or_are_an_error(tmp_path):
    with pytest.raises(FlantuneError, match="mixing.scheme=proportional doesn't read weights"):
        load_config(["task=[imdb,emotion]", "mixing.weights.imdb=10", "mixing.weights.emotion=1"])
    mixture = tmp_path / "weighed.yaml"  # a mixture file that weighs its tasks means those weights
    mixture.write_text("tasks: {imdb: 1, emotion: 3}\n")
    cfg = load_config([f"mixture={mixture}"])
    assert cfg.mixing.scheme == "weights" and dict(cfg.mixing.weights) == {"imdb": 1, "emotion": 3}
    from flantune.prelude import run_label

    assert run_label(cfg, []) == "weighed"  # runs/weighed-..., not a run directory beside the file


def test_an_evaluation_of_one_task_of_a_weighted_mixture_run(tmp_path):
    from flantune.compare import config_for

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        "task: [imdb, emotion]\nmethod: lora\nmerge: true\nmixing:\n  scheme: weights\n  weights: {imdb: 1, emotion: 3}\n")
    cfg = config_for(["task=imdb"], [], [str(run)])  # the run's weights name emotion, which this leaves out
    assert cfg.task == "imdb" and not cfg.merge and not cfg.mixing.weights


@pytest.mark.parametrize("option, message", [("train.lr_scheduler=cosin", "Did you mean 'cosine'?"),
                                             ("report_to=tensorbord", "Did you mean 'tensorboard'?")])
def test_run_checks_transformers_values_before_its_run_directory(cli, tmp_path, option, message):
    assert message in _refused(cli, tmp_path, option)


# ---- bad input that used to end in a traceback or pass silently -----------------------------------------------


@pytest.mark.parametrize("option, shown", [
    ("train.lr=.nan", "nan"), ("train.lr=inf", "inf"), ("train.epochs=.inf", "inf"), ("train.max_grad_norm=.nan", "nan"),
    ("mixing.temperature=.nan", "nan"), ("model.architecture.layer_norm_epsilon=.nan", "nan"),
    ("train.lr_scheduler_kwargs.min_lr_rate=-.inf", "-inf"),
])
def test_a_number_that_is_not_finite_is_refused_wherever_it_is(cli, tmp_path, option, shown):
    """NaN passes every comparison (nan < 0 is False): lr=inf trained a NaN model and exited 0, max_grad_norm=.nan
    switched clipping off; checked for every number of the config, free-form mappings included."""
    key = option.split("=")[0]
    assert f"Config key '{key}' is {shown}; it must be a finite number." in _refused(cli, tmp_path, option)


def test_a_mixture_and_a_task_that_disagree_are_refused(cli, tmp_path):
    err = _refused(cli, tmp_path, "mixture=flan8", "task=emotion")  # trained emotion alone, recorded as flan8
    assert "mixture=flan8 (command line mixture=flan8) and task=emotion (command line task=emotion) both name the " \
           "run's tasks" in err and "Give one of them" in err
    code, _, err = cli("config", "mixture=classify3")  # a mixture alone, or a run's own config.yaml holding both
    assert code == 0, err


def test_an_evaluation_of_one_task_of_a_mixture_run(tmp_path):
    from flantune.compare import config_for
    from flantune.config import to_yaml

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config(["mixture=classify3"])))  # holds the tasks and the mixture
    cfg = config_for(["task=imdb"], [], [str(run)])
    assert cfg.task == "imdb" and cfg.mixture is None
    cfg = config_for([], [], [str(run)])
    assert cfg.mixture == "classify3" and list(cfg.task) == ["imdb", "emotion", "paws"]


def test_a_hub_id_stays_a_hub_id_beside_a_folder_named_like_its_organisation(cli, tmp_path, monkeypatch):
    (tmp_path / "google" / "other-model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    err = _refused(cli, tmp_path, "model=google/flan-t5-small")  # offline here: the hub's error, not a path's
    assert "google/flan-t5-small" in err and "does not exist" not in err


def test_an_empty_model_is_refused_not_read_as_the_working_directory(cli, tmp_path):
    assert "model= is empty (command line model=)" in _refused(cli, tmp_path, "model=")


@pytest.mark.parametrize("command", ["run", "eval"])
@pytest.mark.parametrize("path", ["runs/imdb-tiny-typo", "evals/x", "a/b/c", "./{here}/typo"])
def test_a_mistyped_local_path_is_said_at_once_not_tried_on_the_hub(cli, tmp_path, command, path):
    """A value that can only be a path (flantune's output folders, written as a path, more than one '/') is not
    sent to the hub, where it spent 37 s retrying and then blamed the connection."""
    here = tmp_path / "here"
    here.mkdir()
    path = path.format(here=here.name)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        err = _refused(cli, tmp_path, f"model={path}", command=command)
    finally:
        os.chdir(cwd)
    assert f"Model path '{path}' (command line model={path}) does not exist" in err


def test_model_architecture_that_cannot_build_is_refused(cli, tmp_path):
    err = _refused(cli, tmp_path, "model.architecture.num_heads=0")  # a ZeroDivisionError in the weights' init
    assert "Config key 'model.architecture.num_heads' is 0; a size or count of the model must be at least 1" in err
    err = _refused(cli, tmp_path, "model.architecture.vocab_size=100")  # an IndexError in the embedding, mid-run
    assert "The model's vocab_size is 100, but its tokenizer (the FLAN-T5 tokenizer shipped with flantune) has " \
           "32,100 tokens" in err and "model.architecture.vocab_size to at least 32100" in err


def test_an_empty_tokenizer_folder_is_refused_before_the_data(cli, tmp_path):
    empty = tmp_path / "tok"
    empty.mkdir()
    assert f"Tokenizer folder '{empty}' is empty" in _refused(cli, tmp_path, f"model.tokenizer={empty}")
    code, out, err = cli("show", "task=imdb", "data_dir=@sample", f"tokenizer={empty}")
    assert code == 2 and "Traceback" not in err and f"Tokenizer folder '{empty}' is empty" in err
    assert "target:" not in out  # said before any example is rendered


def test_a_corrupt_safetensors_file_is_refused_before_the_data(cli, tmp_path, capsys):
    from transformers import T5Config, T5ForConditionalGeneration

    model = tmp_path / "model"
    T5ForConditionalGeneration(T5Config(d_model=8, d_ff=16, d_kv=4, num_heads=2, num_layers=1,
                                        decoder_start_token_id=0)).save_pretrained(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # as an interrupted copy leaves it
    capsys.readouterr()  # save_pretrained's progress bar
    for command in ("run", "eval"):
        err = _refused(cli, tmp_path, f"model={model}", command=command)
        assert f"Model folder '{model}': model.safetensors can't be read as safetensors" in err


@pytest.mark.slow
def test_an_unreachable_hub_is_asked_once_not_retried(tmp_path):
    """huggingface_hub retries a file it can't fetch for about 30 s; flantune asks the hub once and then reads
    the cache only."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                          "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))  # nothing listens there
    proc = subprocess.run([sys.executable, "-m", "flantune", "eval", "model=google/flan-t5-basx", "task=imdb",
                           "data_dir=@sample", f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "The Hugging Face hub at http://127.0.0.1:9 can't be reached" in proc.stderr
    assert "Retrying" not in proc.stderr and not (tmp_path / "out").exists()
    proc = subprocess.run([sys.executable, "-m", "flantune", "show", "task=imdb"], capture_output=True, text=True,
                          env=env, timeout=300)  # a dataset on the hub: datasets retried it as long
    assert proc.returncode == 2, proc.stderr
    assert "the hub at http://127.0.0.1:9 can't be reached" in proc.stderr and "Retrying" not in proc.stderr


@pytest.mark.slow
def test_debug_keeps_exit_code_2_with_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flantune", "--debug", "run", *RUN, "train.lr=.nan",
                           f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "FlantuneError" in proc.stderr
    assert "Config key 'train.lr' is nan" in proc.stderr
