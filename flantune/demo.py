"""`flantune demo`: a local web page (Gradio) where a trained model predicts on what a user types, or on examples
from the task's validation split. Loading and scoring are flantune.predict's `Predictor`, so the page predicts
exactly as `flantune predict` and evaluation do; this module only lays out the page and serves it.

Everything that can fail on the user's input fails before the model loads: Gradio missing, the port taken, an
unknown task or a model that isn't there."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

from flantune import rundir
from flantune.console import console
from flantune.errors import FlantuneError, first_line

HOST = "127.0.0.1"  # local only: the page runs the model for anyone who can reach it
EXAMPLES = 8  # example inputs per task, from its validation split
EXAMPLE_SEED = 0
INSTALL_HINT = ('`flantune demo` serves its page with Gradio, which is not installed here. Install it with '
                'pip install "flantune[demo]" (or pip install gradio), then run the command again.')


GRADIO_MAJOR = 6  # the page uses Gradio 6's API (pyproject.toml's demo extra asks for it)


def require_gradio() -> None:
    """The install hint when Gradio is missing or too old, checked without importing it (seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    if importlib.util.find_spec("gradio") is None:
        raise FlantuneError(INSTALL_HINT)
    try:
        found = version("gradio")
    except PackageNotFoundError:  # importable without package metadata (a source checkout): let it try
        return
    major = found.split(".")[0]
    if major.isdigit() and int(major) < GRADIO_MAJOR:
        raise FlantuneError(f"`flantune demo` needs Gradio {GRADIO_MAJOR} or later; Gradio {found} is installed. "
                            'Upgrade it with pip install -U "flantune[demo]".')


def check_port(port: int) -> None:
    """The port is free on HOST now, before the model loads (Gradio's own error comes after)."""
    if not 0 < port < 65536:
        raise FlantuneError(f"port={port} is no TCP port: give one from 1 to 65535, e.g. port=7860.")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise FlantuneError(f"port={port} on {HOST} is taken ({exc.strerror}): stop what uses it, or give "
                                f"another port, e.g. port={port + 1}.") from exc


def run_tasks(model: str, task: str | None) -> list[str | None]:
    """The tasks to show: `task`, else each of a run's own (a tab each); [None] lets `resolve` say that a model
    folder needs task=."""
    if task:
        return [task]
    from flantune.config import task_names

    path = Path(model).expanduser()
    return task_names(rundir.read_config(path)) if rundir.is_run_dir(path) else [None]


def example_rows(resolved, data_dir: str | None, model: str) -> tuple[list[list[str]], str]:
    """Up to EXAMPLES inputs (the template's columns) from the task's validation split, read from `data_dir`,
    else from the run's own data_dir (or the hub, where it ran from the hub); and a note when there are none."""
    from flantune.data import load_rows
    from flantune.sources import resolve_data_dir

    path = Path(model).expanduser()
    if data_dir is None and rundir.is_run_dir(path):
        data_dir = rundir.read_config(path).get("data_dir")
    task = resolved.task
    try:
        rows = load_rows(task, "validation", resolve_data_dir(data_dir), max_examples=EXAMPLES, seed=EXAMPLE_SEED)
    except FlantuneError as exc:
        return [], f"{task.name}: no examples ({first_line(exc)})"
    missing = [c for c in resolved.columns if c not in rows.column_names]
    if missing:  # a preprocessing hook makes the column: the raw rows can't fill the form
        return [], f"{task.name}: no examples (the data has no column {missing[0]})"
    return [[str(row[c]) for c in resolved.columns] for row in rows], ""


def load_predictors(resolved: list) -> list:
    """A Predictor per resolved task, all on one model, loaded once."""
    from flantune.predict import Predictor

    first = Predictor.from_resolved(resolved[0])
    return [first, *(first.for_task(r) for r in resolved[1:])]


def build(predictors: list, examples: dict[str, list[list[str]]], title: str):
    """The page: per task (a tab each when there are several) a text box per input column, the task's examples,
    the prediction, the choices' probabilities as bars (classification) and the model's input as rendered."""
    import gradio as gr

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}")
        for predictor in predictors:
            context = gr.Tab(predictor.task.name) if len(predictors) > 1 else gr.Column()
            with context:
                _task_form(gr, predictor, examples.get(predictor.task.name, []))
    return page


def _task_form(gr, predictor, examples: list[list[str]]) -> None:
    task = predictor.task
    gr.Markdown(f"**{task.name}**: {task.description}")
    with gr.Row():
        with gr.Column():
            inputs = [gr.Textbox(label=c, lines=4, max_lines=20, elem_id=f"{task.name}-{c}") for c in predictor.columns]
            submit = gr.Button("Predict", variant="primary", elem_id=f"{task.name}-predict")
        with gr.Column():
            outputs = [gr.Textbox(label="prediction", elem_id=f"{task.name}-prediction", buttons=["copy"])]
            if task.is_classification:
                outputs.append(gr.Label(label="probabilities", num_top_classes=len(task.choice_texts),
                                        elem_id=f"{task.name}-probabilities"))
            with gr.Accordion("model input (the template rendered)", open=False):
                outputs.append(gr.Textbox(show_label=False, lines=4, max_lines=20, elem_id=f"{task.name}-input"))
    if examples:
        gr.Examples(examples, inputs, label=f"examples from the {task.name} validation split", cache_examples=False,
                    example_labels=[_short(" | ".join(e)) for e in examples], elem_id=f"{task.name}-examples")

    def predict(*values: str):
        try:
            (record,) = predictor.predict([dict(zip(predictor.columns, values))])
        except FlantuneError as exc:  # a row the template can't take: shown on the page, the server goes on
            raise gr.Error(str(exc)) from exc
        shown = [record["prediction"]]
        if task.is_classification:
            shown.append(record.get("probabilities") or {record["prediction"]: 1.0})  # classify=generate: no scores
        return [*shown, record["input"]]

    # One model behind every tab: one prediction at a time, whichever tab asks.
    submit.click(predict, inputs, outputs, concurrency_id="model", api_name=f"predict_{task.name}")


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def demo(model: str, task: str | None = None, *, port: int = 7860, data_dir: str | None = None,
         tasks_dir: str | None = None) -> int:
    """`flantune demo`: the page served on HOST:port until Ctrl-C."""
    require_gradio()
    check_port(port)
    from flantune.predict import resolve
    from flantune.sources import resolve_data_dir

    resolve_data_dir(data_dir)  # a data_dir given that is no folder: an error, not a page without examples
    # Each task resolved (an unknown one, or a model folder without task=, is an error) before the model loads.
    resolved = [resolve(model, name, data_dir=data_dir, tasks_dir=tasks_dir) for name in run_tasks(model, task)]
    say = console()
    examples = {}
    for r in resolved:
        examples[r.task.name], note = example_rows(r, data_dir, model)
        if note:
            say.print(note, highlight=False)
    try:
        import gradio  # noqa: F401  (installed, but an import that fails is the hint too)
    except ImportError as exc:
        raise FlantuneError(f"Gradio is installed but fails to import ({first_line(exc)}). {INSTALL_HINT}") from exc
    predictors = load_predictors(resolved)
    page = build(predictors, examples, f"flantune demo: {Path(model).name}")
    try:
        page.launch(server_name=HOST, server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                    share=False, inbrowser=False)
    except OSError as exc:  # the port was taken while the model loaded
        raise FlantuneError(f"port={port} on {HOST}: {first_line(exc)}") from exc
    say.print(f"demo: {page.local_url} (Ctrl-C stops it)", highlight=False, soft_wrap=True)
    page.block_thread()  # until Ctrl-C, which it catches and closes the server on
    return 0


__all__ = ["demo", "build", "require_gradio", "check_port", "HOST", "INSTALL_HINT"]
