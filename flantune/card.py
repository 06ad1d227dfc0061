"""model/README.md: the Hugging Face model card of a run, built with huggingface_hub's ModelCard from what the run
directory records (config.yaml, metrics.json, mixture.json, predictions/, and a comparative report once there is
one). `flantune run` writes it before metrics.json; `flantune compare` and `run compare=true` write it again with
the report's intervals; `flantune push` uploads it with the hub id in place of the local folder (`for_hub`)."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from flantune import rundir
from flantune.hub import is_local_path
from flantune.methods import method_of
from flantune.task import Task

CARD = "README.md"
PIPELINE_TAG = "text2text-generation"
HUB_TASK_TYPES = {"classification": "text-classification", "extractive_qa": "question-answering"}  # else text2text
LOCATION = re.compile(r"^model_id = .*$", re.M)  # the snippet's one line that names where the model is


def card_metrics(scores: dict[str, float]) -> dict[str, float]:
    """The metrics of a task the card's model-index holds: every one of metrics.json but the per-class breakdown
    (precision/negative, ...) and the loss, which measure no quality a reader compares models by."""
    return {k: v for k, v in scores.items() if "/" not in k and k != "loss" and isinstance(v, (int, float))}


def write_card(run: Path, tasks: list[Task] | None = None, metrics: dict[str, Any] | None = None, *,
               report: Path | None = None, system: str | None = None) -> list[Path]:
    """Write the card of the run's model/ (and merged/, where a LoRA run wrote it); returns the files. `metrics`
    is metrics.json's dict, given before the file is written; `report` a report directory whose report.json holds
    this run as the system named `system` (its intervals go into the card); `tasks` default to the run's."""
    from flantune.prelude import resolve_tasks

    folders = [f for f in (rundir.MODEL, rundir.MERGED) if (run / f).is_dir()]  # none: an evaluation directory
    if not folders:
        return []
    cfg = rundir.read_config(run)
    tasks = tasks if tasks is not None else resolve_tasks(cfg)
    metrics = metrics if metrics is not None else rundir.read_metrics(run)
    gains = _gains(report, system, metrics) if report is not None else {}
    for folder in folders:  # LoRA's model/ is an adapter (peft); merged/ a plain model
        library = "peft" if method_of(cfg).adapter and folder == rundir.MODEL else "transformers"
        build_card(run, run / folder, cfg, tasks, metrics, library, gains).save(run / folder / CARD)
    return [run / f / CARD for f in folders]


def for_hub(card_file: Path, run: Path, repo_id: str) -> str:
    """The card's text as it goes to the hub: its snippet and predict command name the repo, not this folder."""
    text = card_file.read_text(encoding="utf-8")
    text = LOCATION.sub(f"model_id = {json.dumps(repo_id)}", text)
    return text.replace(f"model={run.resolve()}", f"model={repo_id}")


def build_card(run: Path, folder: Path, cfg: DictConfig, tasks: list[Task], metrics: dict[str, Any], library: str,
               gains: dict[str, dict[str, dict]]):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base = _hub_id(cfg)
    name = f"{run.resolve().name}"
    results = [
        EvalResult(task_type=HUB_TASK_TYPES.get(t.kind, PIPELINE_TAG), task_name=t.kind.replace("_", " "),
                   dataset_type=t.source.hub or t.name, dataset_name=t.name, dataset_config=t.source.config,
                   dataset_split=t.splits[metrics["split"]], dataset_revision=t.source.revision,
                   metric_type=key, metric_value=value, metric_name=f"{t.name} {key}")
        for t in tasks for key, value in card_metrics(metrics["tasks"].get(t.name, {})).items()
    ]
    data = ModelCardData(
        model_name=name, base_model=base, library_name=library, pipeline_tag=PIPELINE_TAG,
        datasets=sorted({t.source.hub for t in tasks if t.source.hub}) or None, language=["en"],
        license=_license(cfg), tags=["flantune", *(t.name for t in tasks)], eval_results=results or None,
    )
    body = "\n\n".join([
        _title(cfg, tasks, metrics, base, library),
        _training(cfg, tasks, metrics, run),
        _evaluation(run, tasks, metrics, gains),
        _usage(run, folder, cfg, tasks, library),
        "## Limitations\n\n" + "\n".join(f"- {line}" for line in limitations(cfg, tasks, metrics, run, folder)),
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


# ---- front matter -----------------------------------------------------------------------------------------------


def _hub_id(cfg: DictConfig) -> str | None:
    """The base model's hub id, where it has one (not a random-init model, not a local folder)."""
    path = cfg.model.path
    return str(path) if path and not cfg.model.random_init and not is_local_path(str(path)) else None


def _license(cfg: DictConfig) -> str | None:
    """The license in the base model's own card, where the base is a local folder that has one."""
    from huggingface_hub import ModelCard

    path = cfg.model.path
    readme = Path(str(path)).expanduser() / CARD if path else None
    if readme is None or not readme.is_file():
        return None
    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.license
    except (ValueError, OSError):
        return None


# ---- body ----------------------------------------------------------------------------------------------------


def _title(cfg: DictConfig, tasks: list[Task], metrics: dict, base: str | None, library: str) -> str:
    method = method_of(cfg)
    how = (f"a {method.label} adapter{_method_settings(cfg)}" if library == "peft"
           else f"a {method.label} adapter merged into its base" if method.adapter else method.label)
    on = ", ".join(f"`{t.name}` ({t.description.rstrip('.')})" for t in tasks)
    license_note = "" if _license(cfg) else (
        "\n\nNo license is set: flantune found none in the base model's folder. Set `license:` above to the base "
        f"model's{f' ({base})' if base else ''} and the training data's terms before you share this model.")
    return (f"# {metrics['model']['label']} fine-tuned with flantune\n\n"
            f"{metrics['model']['label']} trained with {how} on "
            f"{on}, with flantune.{license_note}")


def _training(cfg: DictConfig, tasks: list[Task], metrics: dict, run: Path) -> str:
    train, step, mixture = metrics.get("train") or {}, metrics.get("step") or {}, metrics.get("mixture") or {}
    seen = mixture.get("examples_seen") or {tasks[0].name: train.get("examples")}
    rates = mixture.get("requested_rates") or {}
    rows = ["| task | data | train split | templates (evaluated with the first) | mixing rate | examples seen |",
            "|---|---|---|---|---:|---:|"]
    for t in tasks:
        templates = [t.evaluation_template.name, *(x.name for x in t.templates if x.name != t.evaluation_template.name)]
        rate = f"{rates[t.name]:.3f}" if t.name in rates else "1"
        rows.append(f"| {t.name} | {t.source.hub or t.source.mirror} | `{t.splits['train']}` | "
                    f"{', '.join(templates)} | {rate} | {_count(seen.get(t.name))} |")
    tc = cfg.train
    device = train.get("device") or "not recorded"
    settings = [
        f"steps: {_count(train.get('steps'))} of {step.get('global_batch', '?')} {step.get('unit', 'examples')} "
        f"({step.get('batch', '?')} a process x {step.get('grad_accum', '?')} accumulated x "
        f"{step.get('processes', '?')} processes)",
        f"optimizer: {tc.optim}, learning rate {tc.lr}, {tc.lr_scheduler} schedule, warmup {tc.warmup_ratio}, "
        f"weight decay {tc.weight_decay}, gradient clipping {tc.max_grad_norm}",
        f"method: {cfg.method}{_method_settings(cfg)}",
        f"precision: {metrics.get('precision')}",
        f"hardware: {step.get('processes', 1)} x {device}",
        f"wall time: {_seconds(metrics.get('wall_time_s'))} (training {_seconds(train.get('seconds'))})",
        f"seed: {cfg.seed}" + (f"; at most {cfg.data.max_train_examples:,} training examples a task"
                               if cfg.data.max_train_examples else ""),
    ]
    return ("## Training\n\n" + "\n".join(rows) + "\n\n" + "\n".join(f"- {s}" for s in settings)
            + "\n\nThe run's own record: `config.yaml`, `metrics.json` and `log_history.json` in "
            f"{run.resolve().name}.")


def _evaluation(run: Path, tasks: list[Task], metrics: dict, gains: dict[str, dict[str, dict]]) -> str:
    split = metrics["split"]
    head = ["| task | split | examples | metric | score |", "|---|---|---:|---|---:|"]
    if gains:
        head = [head[0][:-1] + "| base model | gain | 95% interval of the gain |", head[1] + "---:|---:|---|"]
    rows = []
    for t in tasks:
        scores = card_metrics(metrics["tasks"].get(t.name, {}))
        n = len(_rows(run, t)) or None
        for key, value in scores.items():
            row = f"| {t.name} | `{t.splits[split]}` | {_count(n)} | {key} | {value:.2f} |"
            gain = gains.get(t.name, {}).get(key)
            if gains:
                row += (f" {gain['reference']:.2f} | {gain['diff']:+.2f} | "
                        f"[{gain['ci_low']:+.2f}, {gain['ci_high']:+.2f}]"
                        f"{' (significant)' if gain['significant'] else ''} |" if gain else " | | |")
            rows.append(row)
    note = ("Scores are on a 0-100 scale, on the final evaluation split, the best checkpoint by the validation "
            "split's primary metric.")
    if gains:
        note += (" The gain is this model's score minus the base model's on the same examples, with a paired "
                 "bootstrap 95% interval (flantune compare's report).")
    return "## Evaluation\n\n" + "\n".join(head + rows) + "\n\n" + note


def _usage(run: Path, folder: Path, cfg: DictConfig, tasks: list[Task], library: str) -> str:
    task = min(tasks, key=lambda t: len(_shortest_input(run, t) or "x" * 10**6))
    prompt = _shortest_input(run, task) or "..."
    load = ("from peft import AutoPeftModelForSeq2SeqLM\nfrom transformers import AutoTokenizer\n\n"
            f"model_id = {json.dumps(str(folder.resolve()))}\n"
            "model = AutoPeftModelForSeq2SeqLM.from_pretrained(model_id)  # the adapter on its base model\n"
            if library == "peft" else
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n"
            f"model_id = {json.dumps(str(folder.resolve()))}\n"
            "model = AutoModelForSeq2SeqLM.from_pretrained(model_id)\n")
    snippet = (f"{load}tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
               f"prompt = {json.dumps(prompt, ensure_ascii=False)}  # {task.name}'s template, as flantune renders it\n"
               "inputs = tokenizer(prompt, return_tensors=\"pt\")\n"
               f"output = model.generate(**inputs, max_new_tokens={task.max_new_tokens or 64})\n"
               "print(tokenizer.decode(output[0], skip_special_tokens=True))")
    names = ", ".join(f"`{t.name}`" for t in tasks)
    return ("## How to use\n\nWith transformers" + (" and peft" if library == "peft" else "")
            + f", given a prompt as the task's template writes it (`flantune show task={task.name}` prints "
            f"some):\n\n```python\n{snippet}\n```\n\n"
            "With flantune, which renders the task's template, rank-scores a classification task's choices and "
            "uses the task's generation settings as its evaluation did (`input=FILE`: `.jsonl`, `.csv` or "
            "`.parquet` rows with the columns the template reads, or a `.txt` file of one example a line):\n\n"
            f"```bash\nflantune predict model={run.resolve()} task={task.name} input=examples.jsonl\n```\n\n"
            f"Its tasks: {names}.")


def limitations(cfg: DictConfig, tasks: list[Task], metrics: dict, run: Path, folder: Path) -> list[str]:
    """What flantune knows this model can't do, or what its scores don't say, one line each."""
    lines = []
    if cfg.model.random_init:
        lines.append(f"**Random initialisation.** {metrics['model']['label']} started from random weights, not a "
                     "pre-trained model: it was trained only here, and its scores say the pipeline works, not how "
                     "well a pre-trained FLAN-T5 does.")
    for task, (share, what) in _unspellable(run, folder, tasks).items():
        lines.append(f"**{task}: characters its vocabulary lacks.** {share:.0f}% of its gold answers hold {what}, "
                     "which the tokenizer turns into `<unk>`: the model can't write them. A multilingual model "
                     "(mT5, umT5) can.")
    model = metrics.get("model") or {}
    names = (model.get("name"), model.get("path"), model.get("label"))  # as the report's base row is matched
    for task in tasks:
        if splits := task.seen_by(*names):
            sources = "; ".join(s.source for s in task.seen_in_training if set(s.splits) & set(splits))
            lines.append(f"**{task.name}: the base model was trained on it** ({', '.join(splits)} split"
                         f"{'s' if len(splits) > 1 else ''}; {sources}). Its scores before fine-tuning "
                         "are not zero-shot.")
    for task, overlap in (metrics.get("allowed_overlap") or {}).items():
        lines.append(f"**{task}: trained on evaluated rows** (data.allow_overlap=true): {overlap}.")
    if cfg.data.max_eval_examples:
        lines.append(f"Evaluated on a seeded subset of at most {cfg.data.max_eval_examples:,} examples a task, "
                     "not the whole split.")
    return lines or ["None that flantune knows of; the scores above hold for the tasks' own data only."]


# ---- helpers ---------------------------------------------------------------------------------------------------


def _method_settings(cfg: DictConfig) -> str:
    """The settings of the run's method that say what was trained, in parentheses ("" for full fine-tuning)."""
    method = method_of(cfg)
    if method.targets == "lora":
        bits = f", over a {cfg.qlora.bits}-bit base" if method.quantized else ""
        return (f" (r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout={cfg.lora.dropout}, on "
                f"{', '.join(cfg.lora.target_modules)}{bits})")
    if method.targets:
        return f" (on {', '.join(cfg[method.targets].target_modules or ['peft default modules'])})"
    if method.prompt:
        return f" ({cfg.prompt_tuning.num_virtual_tokens} virtual tokens)"
    return ""


def _gains(report: Path, system: str | None, metrics: dict) -> dict[str, dict[str, dict]]:
    """task -> metric -> the report's difference (base, gain, interval) for this run, where the report scored the
    run as metrics.json does (the same split and rows)."""
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, dict]] = {}
    for task, section in data.get("tasks", {}).items():
        diffs = section.get("differences", {}).get(system) or {}
        saved = card_metrics(metrics["tasks"].get(task, {}))
        same = {k: d for k, d in diffs.items() if k in saved and d.get("system") is not None
                and abs(d["system"] - saved[k]) <= 1e-6}
        if same:
            out[task] = same
    return out


def _rows(run: Path, task: Task) -> list[dict]:
    path = run / rundir.PREDICTIONS / f"{task.name}.jsonl"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _shortest_input(run: Path, task: Task) -> str | None:
    rows = _rows(run, task)
    return min((r["input"] for r in rows), key=len) if rows else None


def _unspellable(run: Path, folder: Path, tasks: list[Task]) -> dict[str, tuple[float, str]]:
    """task -> (the share of its gold answers with characters the model's tokenizer maps to <unk>, which ones)."""
    from transformers import AutoTokenizer

    tokenizer_dir = folder if (folder / "tokenizer_config.json").is_file() else None
    if tokenizer_dir is None:
        return {}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    unk = tokenizer.unk_token_id
    out = {}
    for task in tasks:
        answers = [" ".join(r.get("references") or [r["target"]]) for r in _rows(run, task)]
        chars = sorted({c for a in answers for c in a if not c.isspace()})
        lacking = {c for c, ids in zip(chars, tokenizer(chars, add_special_tokens=False).input_ids) if unk in ids}
        hit = sum(any(c in lacking for c in a) for a in answers)
        if hit:
            out[task.name] = (100 * hit / len(answers), _describe(lacking))
    return out


def _describe(chars: set[str]) -> str:
    """Letters and their marks by script (Devanagari letters), other characters themselves."""
    def lettered(c: str) -> bool:
        return unicodedata.category(c)[0] in "LM"

    scripts = sorted({unicodedata.name(c, "?").split()[0].title() for c in chars if lettered(c)})
    others = sorted(c for c in chars if not lettered(c))
    parts = [f"{', '.join(scripts)} letters"] if scripts else []
    if others:
        parts.append("the characters " + " ".join(f"`{c}`" for c in others[:10]))
    return " and ".join(parts)


def _count(n) -> str:
    return f"{int(n):,}" if isinstance(n, (int, float)) else "?"


def _seconds(s) -> str:
    if not isinstance(s, (int, float)):
        return "?"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"
