"""Render a report dict (what build.assemble returns and report.json holds) as Markdown and as one
self-contained HTML file.

Both renderers read the same list of sections (`document`), so the two files never say different
things: a section is a title and blocks (tables, figures, example lists, paragraphs). The HTML
embeds its images as data: URIs, inlines its CSS and loads nothing else: no script, font or URL, so
it opens offline and can be mailed as it is. Every text from the data is escaped in both files (jinja2
autoescape in the HTML, HTML entities in the Markdown), since predictions are arbitrary model output.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

PER_CLASS = ("precision", "recall", "f1", "support")


# ---- the document -------------------------------------------------------------------------------

@dataclass
class Cell:
    text: str
    mark: str = ""  # "up" / "down": a significant difference (shown bold, with *)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    note: str = ""
    numeric: bool = True  # right-align every column but the first
    kind: str = "table"


@dataclass
class Figures:
    items: list[tuple[str, str]]  # (path relative to the report, caption)
    kind: str = "figures"


@dataclass
class Examples:
    title: str
    items: list[tuple[str, list[tuple[str, str]]]]  # (heading, [(field, text), ...])
    kind: str = "examples"


@dataclass
class Para:
    text: str
    kind: str = "para"


@dataclass
class Section:
    title: str
    level: int = 2
    blocks: list[Any] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def num(v: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}{unit}"


def diff_cell(d: dict[str, Any] | None) -> Cell:
    """"+3.2 [+1.0, +5.5]": the difference and its interval, marked when the interval excludes 0."""
    if d is None or d["diff"] is None:
        return Cell("n/a")
    if d["ci_low"] is None or d["ci_high"] is None:
        return Cell(f"{d['diff']:+.1f} [n/a]")
    text = f"{d['diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"
    if d["significant"]:
        return Cell(text + " *", "up" if d["diff"] > 0 else "down")
    return Cell(text)


def p_value(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def document(report: dict[str, Any]) -> list[Section]:
    ref = report["reference"]
    s = report["settings"]
    level = round(100 * s["confidence"])
    intro = Section("flantune report", 1, [Para(
        f"Every number is recomputed from the saved predictions. Scores are on a 0-100 scale (metrics of the "
        f"evaluate library keep their own). Differences are taken against the reference system '{ref}' on the "
        f"same examples, with {level}% paired bootstrap intervals ({s['n_resamples']:,} resamples of the "
        f"examples, seed {s['seed']}, percentile method). * and bold: the interval excludes 0."),
        Table("Systems", ["system", "role", "model", "method", "source"],
              [[Cell(x["name"]), Cell(x["role"]), Cell(x["model"] or "-"), Cell(x["method"] or "-"),
                Cell(x["source"] or "-")] for x in report["systems"]], numeric=False)])
    verdicts = [Para(f"{name}: {t['verdict']}") for name, t in report["tasks"].items() if t.get("verdict")]
    if verdicts:
        intro.blocks[1:1] = [Para("Verdict, per task (primary metric, fine-tuned against the reference):"), *verdicts]
    sections = [intro]
    for name, t in report["tasks"].items():
        sections.append(_task_section(name, t, ref, level))
    sections += _run_sections(report)
    if report["skipped_tasks"]:
        sections.append(Section("Skipped tasks", 2, [Para(f"{k}: {v}.") for k, v in report["skipped_tasks"].items()]))
    return sections


def _task_section(name: str, t: dict[str, Any], ref: str, level: int) -> Section:
    primary = t["primary_metric"]
    sec = Section(f"Task: {name}", 2, [Para(f"{t['kind']}, {t['n']:,} examples, primary metric: {primary}.")])
    heads = [f"{m} (primary)" if m == primary else m for m in t["metric_names"]]
    invalid = t.get("invalid") or {}
    show_invalid = any(v for v in invalid.values())
    seen = t.get("seen_in_training")  # the reference model was trained on this task: its row is marked
    rows = [[Cell(sys + (" †" if seen and sys == ref else ""))] + [Cell(num(v["metrics"].get(m))) for m in t["metric_names"]]
            + ([Cell(num(invalid.get(sys)))] if show_invalid else []) for sys, v in t["systems"].items()]
    notes = (["invalid: predictions that match no answer choice (counted as wrong)."] if show_invalid else []) + (
        [f"† {ref}: {seen['note']} (source: {'; '.join(seen['sources'])})."] if seen else [])
    sec.blocks.append(Table("Scores", ["system", *heads] + (["invalid %"] if show_invalid else []), rows,
                            " ".join(notes)))
    if t["differences"]:
        sec.blocks.append(Table(
            f"Difference to {ref} [{level}% paired bootstrap interval]", ["system", *heads],
            [[Cell(sys)] + [diff_cell(d.get(m)) for m in t["metric_names"]] for sys, d in t["differences"].items()]))
    if t.get("templates"):
        sec.blocks += _template_tables(t["templates"], ref, level)
    if t.get("mcnemar"):
        sec.blocks.append(Table(
            f"Exact McNemar test against {ref}",
            ["system", "b: reference right, system wrong", "c: reference wrong, system right", "p-value"],
            [[Cell(sys), Cell(f"{m['b']:,}"), Cell(f"{m['c']:,}"),
              Cell(p_value(m["p_value"]), ("up" if m["c"] > m["b"] else "down") if m["p_value"] < 0.05 else "")]
             for sys, m in t["mcnemar"].items()],
            "Two-sided exact binomial test of c out of b + c examples at 1/2; examples both got right or both got "
            "wrong carry no information about which system is better."))
    for sys, classes in (t.get("per_class") or {}).items():
        diffs = t["differences"].get(sys, {})
        extra = bool(diffs) and any(f"f1/{c}" in diffs for c in classes)
        sec.blocks.append(Table(
            f"Per class: {sys}",
            ["class", "precision", "recall", "F1", "support"] + ([f"F1 vs {ref}"] if extra else []),
            [[Cell(c), *(Cell(num(v[m])) for m in PER_CLASS[:3]), Cell(f"{v['support']:,.0f}")]
             + ([diff_cell(diffs.get(f"f1/{c}"))] if extra else []) for c, v in classes.items()]))
    if t.get("confusion"):
        sec.blocks.append(Figures([(c["image"], f"confusion matrix: {sys}") for sys, c in t["confusion"].items()]))
    for sys, ex in (t.get("examples") or {}).items():
        sec.blocks.append(Para(f"Examples {sys} fixed and broke: {ex['note']}."))
        if ex["score"] is None:
            continue
        for what in ("fixed", "broke"):
            shown = ex[what]
            title = f"{sys} {what} {ex['n_' + what]:,} examples" + (f" ({len(shown)} shown)" if shown else "")
            sec.blocks.append(Examples(title, [_example(e, ex["score"], ref, sys) for e in shown]))
    sec.blocks += [Para(n) for n in t["notes"]]
    return sec


def _template_tables(tt: dict[str, Any], ref: str, level: int) -> list[Any]:
    """eval.templates: the primary metric on every template with its spread, and the differences paired per
    template (flantune.report.templates)."""
    metric, systems = tt["metric"], tt["systems"]
    rows = [[Cell(t)] + [Cell(num(v["per_template"].get(t))) for v in systems.values()] for t in tt["templates"]]
    rows += [[Cell(f"{part} over templates")] + [Cell(num(v[part])) for v in systems.values()]
             for part in ("mean", "std", "min", "max")]
    note = (f"{metric} of each template; std: the sample standard deviation over templates."
            + (f" Not in this table (evaluated on one template, or with no template at all, as the baselines): "
               f"{', '.join(tt['absent'])}." if tt["absent"] else ""))
    out: list[Any] = [Table(f"Per template: {metric}", ["template", *systems], rows, note)]
    if tt["differences"]:
        diffs = tt["differences"]
        out.append(Table(
            f"{metric} difference to {ref} per template [{level}% paired bootstrap interval]", ["template", *diffs],
            [[Cell(t)] + [diff_cell(d.get(t)) for d in diffs.values()] for t in tt["templates"]],
            "Each template paired with itself: the same examples, rendered with the same template, on both sides."))
    return out


def _example(e: dict[str, Any], score: str, ref: str, sys: str) -> tuple[str, list[tuple[str, str]]]:
    heading = f"id {e['id']}: {score} {e['reference_score']:.2f} → {e['system_score']:.2f}"
    golds = e["references"]
    gold = [("target", e["target"])] if golds == [e["target"]] else [("references", " | ".join(golds))]
    return heading, [("input", e["input"]), *gold, (ref, e["reference_prediction"]), (sys, e["system_prediction"])]


def _run_sections(report: dict[str, Any]) -> list[Section]:
    out = []
    speed = report["speed"]
    if speed["systems"]:
        out.append(Section("Speed", 2, [Table(
            "Evaluation throughput and latency", ["system", "examples/s", "ms/example", "tokens/s", "seconds"],
            [[Cell(sys), Cell(num(v["examples_per_s"])), Cell(num(v["ms_per_example"], 2)),
              Cell(num(v["tokens_per_s"], 0)), Cell(num(v["seconds"]))] for sys, v in speed["systems"].items()],
            f"Throughput over all of a run's evaluation tasks, {speed['note']}")]))
    if report["training"]:
        sec = Section("Training", 2)
        for sys, v in report["training"].items():
            tr = v["train"]
            rows = [("trainable parameters", f"{v['trainable_parameters']:,}" if v["trainable_parameters"] else "n/a"),
                    ("total parameters", f"{v['total_parameters']:,}" if v["total_parameters"] else "n/a"),
                    ("trainable share", num(v["trainable_share"], 2, " %")),
                    ("wall time (whole run)", num(v["wall_time_s"], 1, " s")),
                    ("training time", num(tr["seconds"], 1, " s")),
                    ("optimizer steps", num(tr["steps"], 0)),
                    ("training examples/s", num(tr["examples_per_s"])),
                    ("training tokens/s", num(tr["tokens_per_s"], 0))]
            sec.blocks.append(Table(f"{sys}", ["", "value"], [[Cell(a), Cell(b)] for a, b in rows]))
            if v["curves"]:
                sec.blocks.append(Figures([(v["curves"], f"{sys}: training loss and validation "
                                                         f"{v['validation_metric']} by step")]))
            else:
                sec.blocks.append(Para(f"{sys}: its training log holds no loss or validation entries."))
        out.append(sec)
    return out


# ---- Markdown -------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def md_text(text: str) -> str:
    """Inline text: markdown syntax and HTML are shown literally, one line."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(_MD_SPECIAL.sub(r"\\\1", text).split())


def _pre(lines: list[str]) -> str:
    """Texts from the data, lines kept, HTML escaped as in report.html: a <pre> block, which Markdown passes on as
    HTML (so a viewer shows "<script>" as text), ends only at "</pre>", which escaped text can't hold."""
    body = html.escape("\n".join(lines), quote=False)
    return f"<pre>\n{body}\n</pre>"


def render_markdown(report: dict[str, Any]) -> str:
    return markdown(document(report))


def markdown(sections: list[Section]) -> str:
    out: list[str] = []
    for sec in sections:
        out.append(f"{'#' * sec.level} {md_text(sec.title)}")
        for b in sec.blocks:
            if b.kind == "para":
                out.append(md_text(b.text))
            elif b.kind == "table":
                lines = [f"**{md_text(b.title)}**", "", "| " + " | ".join(md_text(h) for h in b.headers) + " |",
                         "|" + "---|" * len(b.headers)]
                for row in b.rows:
                    cells = [f"**{md_text(c.text)}**" if c.mark else md_text(c.text) for c in row]
                    lines.append("| " + " | ".join(cells) + " |")
                if b.note:
                    lines += ["", f"_{md_text(b.note)}_"]
                out.append("\n".join(lines))
            elif b.kind == "figures":
                out.append("\n".join(f"![{md_text(cap)}]({path})" for path, cap in b.items))
            elif b.kind == "examples":
                out.append(f"**{md_text(b.title)}**")
                for heading, fields in b.items:
                    width = max(len(k) for k, _ in fields) + 2
                    lines = []
                    for k, v in fields:  # continuation lines indented under the value
                        first, *rest = str(v).splitlines() or [""]
                        lines.append(f"{k + ':':<{width}}{first}")
                        lines += [" " * width + r for r in rest]
                    out.append(f"{md_text(heading)}\n\n{_pre(lines)}")
    return "\n\n".join(out) + "\n"


# ---- HTML -----------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1f2328; background: #fff; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.5rem; }
nav ul { columns: 2; }
table { border-collapse: collapse; margin: .4rem 0 1.2rem; font-size: .92rem; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: right; vertical-align: top;
         white-space: nowrap; }
th:first-child, td:first-child, table.text th, table.text td { text-align: left; }
th { background: #f6f8fa; }
td.up { font-weight: 700; color: #116329; background: #dafbe1; }
td.down { font-weight: 700; color: #a40e26; background: #ffebe9; }
p.note { color: #57606a; font-size: .88rem; margin-top: -.8rem; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; } figcaption { font-size: .85rem; color: #57606a; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
details.example { border: 1px solid #d0d7de; border-radius: 4px; margin: .3rem 0; padding: .3rem .6rem; }
details.example summary { cursor: pointer; font-family: ui-monospace, monospace; font-size: .88rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem .8rem; margin: .4rem 0; }
dt { font-weight: 600; } dd { margin: 0; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: .85rem; background: #f6f8fa;
      padding: .2rem .4rem; }
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
{% for sec in sections %}
<section id="{{ sec.anchor }}">
<h{{ sec.level }}>{{ sec.title }}</h{{ sec.level }}>
{% if loop.first and sections|length > 2 %}
<nav><ul>{% for s in sections[1:] %}<li><a href="#{{ s.anchor }}">{{ s.title }}</a></li>{% endfor %}</ul></nav>
{% endif %}
{% for b in sec.blocks %}
{% if b.kind == "para" %}<p>{{ b.text }}</p>
{% elif b.kind == "table" %}
<table{% if not b.numeric %} class="text"{% endif %}>
<caption>{{ b.title }}</caption>
<thead><tr>{% for h in b.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in b.rows %}<tr>
{% for c in row %}<td{% if c.mark %} class="{{ c.mark }}"{% endif %}>{{ c.text }}</td>{% endfor %}
</tr>
{% endfor %}</tbody>
</table>
{% if b.note %}<p class="note">{{ b.note }}</p>{% endif %}
{% elif b.kind == "figures" %}
<div class="figures">
{% for path, caption in b.items %}
<figure><img src="{{ images[path] }}" alt="{{ caption }}"><figcaption>{{ caption }}</figcaption></figure>
{% endfor %}</div>
{% elif b.kind == "examples" %}
<h4>{{ b.title }}</h4>
{% for heading, fields in b.items %}
<details class="example"{% if loop.first %} open{% endif %}><summary>{{ heading }}</summary>
<dl>{% for k, v in fields %}<dt>{{ k }}</dt><dd><pre>{{ v }}</pre></dd>{% endfor %}</dl>
</details>
{% endfor %}
{% endif %}
{% endfor %}
</section>
{% endfor %}
</body>
</html>
"""


def _finalize(value: Any) -> Any:
    # Texts come from models and datasets. Escaped they are inert, but a URL written in one would still
    # put "://" into the file; "&#58;" shows the same colon while keeping the file free of any URL.
    if isinstance(value, Markup):
        return value
    return Markup(str(escape(value)).replace("://", "&#58;//"))


_ENV = jinja2.Environment(autoescape=True, finalize=_finalize, undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    """One self-contained page; `images` maps the report's relative image paths to PNG bytes."""
    return html_page(document(report), images, "flantune report")


def html_page(sections: list[Section], images: dict[str, bytes], title: str) -> str:
    uris = {path: Markup(data_uri(png)) for path, png in images.items()}
    return _ENV.from_string(_TEMPLATE).render(title=title, css=Markup(_CSS), sections=sections, images=uris)


def write_files(out_dir: Path, report: dict[str, Any], images: dict[str, bytes], markdown: str, page: str) -> Path:
    """A report's files under out_dir: images/, report.json, report.md and report.html (returned)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for rel, png in images.items():
        (out_dir / rel).write_bytes(png)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                                         encoding="utf-8")
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return html_path
