"""`flantune sweep`: one run per combination of the settings given a list, then one report over them.

    flantune sweep task=imdb model=tiny train.lr=[1e-4,3e-4,1e-3] seed=[1,2,3]

A config key given a list is swept; `seed` is the replicate: runs that differ only in their seed are one setting.
Every run is an ordinary run directory, <sweep>/runs/<name>/, trained through `flantune run`'s path with
eval.split=validation: the runs are chosen between on validation rows (data.eval_seed draws the same rows for every
seed). The best setting by mean validation score is then evaluated on the test split (<sweep>/test/<name>/), its
held-out score, and the report (<sweep>/report/, flantune/report/sweep.py) compares the settings on the validation
predictions. Re-running the same command continues the sweep: finished runs are skipped, interrupted ones resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from flantune import rundir
from flantune.config import check_key, load_config, task_names
from flantune.console import console
from flantune.errors import FlantuneError, Interrupted
from flantune.overrides import parse_overrides, parse_value

PLAN, RUNS, TEST, REPORT, LOGS = "sweep.json", "runs", "test", "report", "logs"
SEED = "seed"
# Keys a sweep sets itself, or whose lists would compare runs on different examples (the report pairs them by
# example): one sweep per task, mixture or evaluation set.
FIXED = {
    "task": "task=[a,b] trains one mixture, as in `flantune run`; to sweep over tasks, run one sweep per task",
    "mixture": "to compare mixtures, run one sweep per mixture",
    "eval.split": "the sweep evaluates its runs on validation and the best setting on test",
    "data.eval_seed": "every run is evaluated on the same rows, which this key draws",
    "data.max_eval_examples": "every run is evaluated on the same rows, which this key counts",
    "data_dir": "every run reads the same data", "tasks_dir": "every run reads the same tasks",
    "output_dir": "output_dir= names the sweep's folder", "resume": "re-running a sweep resumes it by itself",
    "overwrite": "a sweep never deletes its runs; choose another output_dir to start over",
    "compare": "the sweep writes one report over all its runs",
}
SET_BY_SWEEP = ("eval.split", "resume", "overwrite", "compare")  # refused even with one value
# A list is one value of these (a list of lists sweeps them): config.py's keys typed "a list of names"
LIST_VALUED = ("task", "lora.target_modules", "ia3.target_modules", "ia3.feedforward_modules", "report_to")


@dataclass
class Planned:
    name: str  # its folder under <sweep>/runs/
    setting: str  # the swept values but the seed: "train.lr=0.0001"
    seed: int
    overrides: list[str]


@dataclass
class Plan:
    folder: Path
    swept: dict[str, list[Any]]
    runs: list[Planned]
    config_files: list[str]
    cfg: DictConfig  # the first run's config
    parallel: int
    gpus: int

    def record(self) -> dict[str, Any]:
        return {"swept": self.swept, "runs": [vars(r) for r in self.runs], "config_files": self.config_files}


def as_option(value: Any) -> str:
    """A value as a key=value option reads it back."""
    if isinstance(value, str) and parse_value(value) == value:
        return value
    return json.dumps(value)


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else as_option(value)


def plan(args: list[str], config_files: list[str]) -> Plan:
    """Every run of the sweep, each config loaded and checked, before any run starts."""
    swept: dict[str, list[Any]] = {}
    fixed: list[str] = []
    own: list[str] = []  # sweep.*: how the sweep runs, not what its runs are (free to change when resuming)
    folder = None
    for (key, value), arg in zip(parse_overrides(args), args):
        if key == "output_dir":
            folder = value
            continue
        if key.startswith("sweep.") and not isinstance(value, list):
            own.append(arg)
            continue
        by_nature = key in LIST_VALUED and not (isinstance(value, list) and value and
                                                all(isinstance(v, list) for v in value))
        if not isinstance(value, list) or by_nature:
            if key in SET_BY_SWEEP:
                raise FlantuneError(f"{arg}: {FIXED[key]}. Leave {key}= out of `flantune sweep`.")
            fixed.append(arg)
            continue
        check_key(key, f"command line {arg}")
        if key in FIXED or key.startswith("sweep."):
            why = FIXED.get(key, "the sweep's own settings take one value")
            raise FlantuneError(f"{arg}: {key} can't be swept: {why}.")
        if not value:
            raise FlantuneError(f"{arg}: an empty list sweeps over nothing. Give {key} one value or several, "
                                f"e.g. {key}=[a,b].")
        swept[key] = value
    if not swept:
        raise FlantuneError("`flantune sweep` needs a key given a list to sweep over, e.g. train.lr=[1e-4,3e-4] "
                            "seed=[1,2,3].")
    base = load_config([*fixed, *own, "eval.split=validation"], config_files)
    count = 1
    for values in swept.values():
        count *= len(values)
    if count > base.sweep.max_runs:
        sizes = " x ".join(f"{len(v)} ({k})" for k, v in swept.items())
        raise FlantuneError(f"This sweep has {sizes} = {count} runs, more than sweep.max_runs={base.sweep.max_runs}. "
                            f"Sweep fewer values, or raise sweep.max_runs={count} to mean it.")
    keys = list(swept)
    runs, cfgs = [], []
    for i, combo in enumerate(itertools.product(*swept.values())):
        values = dict(zip(keys, combo))
        options = [f"{k}={as_option(v)}" for k, v in values.items()]
        cfgs.append(load_config([*fixed, *options, "eval.split=validation"], config_files))  # each checked now
        setting = ", ".join(f"{k}={_label(v)}" for k, v in values.items() if k != SEED) or "(one setting)"
        name = rundir.slug(f"{i:02d}-" + "-".join(f"{k.rpartition('.')[2]}_{_label(v)}" for k, v in values.items()))
        runs.append(Planned(name, setting, int(cfgs[-1].seed), [*fixed, *options, "eval.split=validation"]))
    gpus = _gpus() if base.sweep.parallel > 1 else 0
    if 0 < gpus < base.sweep.parallel:
        raise FlantuneError(f"sweep.parallel={base.sweep.parallel} runs one run per GPU, but this machine has {gpus}. "
                            f"Set sweep.parallel={gpus} or less.")
    if folder is None:
        digest = hashlib.sha256(json.dumps([[r.overrides for r in runs], config_files]).encode()).hexdigest()[:6]
        label = f"{'-'.join(task_names(base))}-{rundir.slug(base.model.name)}-{time.strftime('%Y%m%d')}-{digest}"
        folder = Path(rundir.ROOTS["sweep"]) / rundir.slug(label, limit=100)
    return Plan(Path(str(folder)), swept, runs, list(config_files), cfgs[0], base.sweep.parallel, gpus)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _claim(p: Plan) -> None:
    """The sweep's folder: new, or one this very sweep made (its plan recorded in sweep.json)."""
    saved = p.folder / PLAN
    if saved.is_file():
        if rundir.read_json(saved) != json.loads(json.dumps(p.record())):
            raise FlantuneError(f"{p.folder} holds another sweep (its {PLAN} plans other runs). Re-run that sweep's "
                                "own command to continue it, or give this one another output_dir.")
        return
    rundir.check_output_dir(p.folder, overwrite=False)
    rundir.mark(p.folder, "sweep")
    rundir.write_json(saved, p.record())


def sweep(args: list[str], config_files: list[str]) -> Path:
    """Plan, run what is not finished, evaluate the best setting on test, write the report; its report.html."""
    p = plan(args, config_files)
    say = console()
    with rundir.lock(p.folder):
        _claim(p)
        say.print(f"sweep: [bold]{p.folder}[/], {len(p.runs)} runs over {', '.join(p.swept)}", highlight=False)
        todo = [r for r in p.runs if not rundir.finished(p.folder / RUNS / r.name)]
        for r in p.runs:
            if r not in todo:
                say.print(f"{r.name}: finished, skipped", highlight=False)
        if p.parallel > 1:
            _run_parallel(p, todo)
        else:
            for r in todo:
                _run_here(p, r)
        return _report(p)


def _run_options(p: Plan, r: Planned) -> list[str]:
    out = p.folder / RUNS / r.name
    return [*r.overrides, f"output_dir={out}", f"resume={str(rundir.is_run_dir(out)).lower()}"]


def _run_here(p: Plan, r: Planned) -> None:
    from flantune.config import input_files
    from flantune.engine import run

    console().print(f"[bold]{r.name}[/]: {r.setting}, seed {r.seed}", highlight=False)
    options = _run_options(p, r)
    try:
        run(load_config(options, p.config_files), input_files(options, p.config_files))
    except Interrupted:  # not `run`'s advice (resume=true output_dir=<run>): the sweep resumes its runs itself
        console(stderr=True).print(f"The sweep stopped in {r.name}: run the same command again (it writes "
                                   f"{p.folder}) to continue it.", highlight=False)
        raise KeyboardInterrupt from None


def _run_parallel(p: Plan, todo: list[Planned]) -> None:
    """`flantune run` subprocesses, sweep.parallel at a time: one per GPU (CUDA_VISIBLE_DEVICES), else on CPU.
    Each writes its output to <sweep>/logs/<name>.log. A failed run lets the others end, then stops the sweep."""
    say = console()
    (p.folder / LOGS).mkdir(exist_ok=True)
    pending, running, failed = list(todo), {}, []  # running: slot -> (run, process, log file)
    configs = [part for f in p.config_files for part in ("--config", f)]
    try:
        while pending and not failed or running:
            for slot in range(p.parallel):
                if slot in running or not pending or failed:
                    continue
                r = pending.pop(0)
                env = dict(os.environ)
                if p.gpus:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot)
                log = open(p.folder / LOGS / f"{r.name}.log", "a", encoding="utf-8")  # noqa: SIM115 - closed below
                cmd = [sys.executable, "-m", "flantune", "run", *configs, *_run_options(p, r)]
                running[slot] = (r, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
                where = f"GPU {slot}" if p.gpus else f"CPU process {slot}"
                say.print(f"[bold]{r.name}[/]: {r.setting}, seed {r.seed}, started on {where}", highlight=False)
            time.sleep(0.5)
            for slot, (r, proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[slot]
                if proc.returncode:
                    failed.append(f"{r.name} (exit {proc.returncode}, {p.folder / LOGS / (r.name + '.log')})")
                say.print(f"{r.name}: {'failed' if proc.returncode else 'finished'}", highlight=False)
    finally:
        for r, proc, log in running.values():  # interrupted: end this sweep's own runs
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            log.close()
    if failed:
        raise FlantuneError(f"{len(failed)} run(s) of the sweep failed: {'; '.join(failed)}. Their logs say why; "
                            "re-running the same command resumes them and skips the finished runs.")


def _report(p: Plan) -> Path:
    """The report over every run; the best setting by validation evaluated on test first (its held-out score)."""
    from flantune.compare import system_from_dir, tasks_of
    from flantune.report.sweep import build_sweep_report, validation_summary

    systems = {r.name: system_from_dir(p.folder / RUNS / r.name, name=r.name) for r in p.runs}
    tasks = tasks_of(list(systems.values()), p.cfg)
    summary = validation_summary(tasks, [vars(r) for r in p.runs], systems)
    best = [r for r in p.runs if r.setting == summary["best"]]
    test = {r.name: system_from_dir(_evaluate_on_test(p, r), name=r.name) for r in best}
    html = build_sweep_report(tasks, summary, systems, test, p.swept, p.folder / REPORT)
    console().print(f"best setting by validation: [bold]{summary['best']}[/]; sweep report: [bold]{html}[/]",
                    highlight=False)
    return html


def _evaluate_on_test(p: Plan, r: Planned) -> Path:
    """<sweep>/test/<name>: the run's model evaluated on the test split (once: a finished one is kept)."""
    from flantune.compare import config_for, evaluate

    run, out = p.folder / RUNS / r.name, p.folder / TEST / r.name
    if not rundir.finished(out):
        console().print(f"{r.name}: evaluating on test (the best setting's held-out score)", highlight=False)
        options = [f"model={run}", "eval.split=test", f"output_dir={out}", f"overwrite={str(out.exists()).lower()}"]
        evaluate(config_for(options, [], [str(run)]))
    return out
