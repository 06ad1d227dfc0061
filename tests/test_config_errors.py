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
    code, _, err = cli(command, *options, *RUN, f"output_dir={out}")
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
    from flantune.engine import check

    err = _refused(cli, tmp_path, "train.optim=adamw_torch_xla", "precision=fp32")
    assert ("train.optim=adamw_torch_xla can't run here: Trainer failed to import syncfree AdamW from torch_xla. "
            "Or choose another train.optim (adamw_torch is the default).") in err
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


def test_config_still_answers_without_importing_torch_or_transformers():
    code = ("import sys; from flantune.cli import main; main(['config', 'model=tiny', 'mixing.scheme=equal']);"
            "print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr


# ---- --debug -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--debug", "config", "train.lrr=1"], ["config", "--debug", "train.lrr=1"]])
def test_debug_raises_before_or_after_the_command(args):
    with pytest.raises(FlantuneError, match="Unknown config key 'train.lrr'"):
        main(args)


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
    from flantune.engine import run_label

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
