"""`flantune push`: a run's model/ (its weights or adapter, tokenizer and card) and its report, uploaded to a Hugging
Face hub repository in one commit with huggingface_hub. The token is huggingface_hub's own (HF_TOKEN or `hf auth
login`), checked with the hub before anything is uploaded, and never printed or written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flantune import rundir
from flantune.card import CARD, for_hub
from flantune.console import console
from flantune.errors import FlantuneError, first_line
from flantune.hub import is_local_path

REPORT = "report"  # where `run compare=true` writes the run's report (flantune.compare.compare_after_run)
REPORT_FILES = ("report.md", "report.html", "report.json", "images")  # what a reader opens; not its saved systems


@dataclass(frozen=True)
class Upload:
    path_in_repo: str
    source: Path
    content: bytes | None = None  # set: uploaded in place of the file (the card, with the repo's id)


def plan(run: Path, repo_id: str) -> list[Upload]:
    """What goes where: model/'s files at the repo's root (its card naming the repo), the report under report/."""
    model = run / rundir.MODEL
    if not (run / rundir.METRICS).is_file() or not model.is_dir():
        raise FlantuneError(f"{run} is no finished flantune run: it has no {rundir.METRICS} and {rundir.MODEL}/. "
                            "Give the directory `flantune run` printed, once the run has finished.")
    uploads = []
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        rel = path.relative_to(model).as_posix()
        content = for_hub(path, run, repo_id).encode("utf-8") if rel == CARD else None
        uploads.append(Upload(rel, path, content))
    report = run / REPORT
    for name in REPORT_FILES:
        top = report / name
        for path in sorted([top] if top.is_file() else top.rglob("*") if top.is_dir() else []):
            if path.is_file():
                uploads.append(Upload(f"{REPORT}/{path.relative_to(report).as_posix()}", path))
    return uploads


def push(run: Path, repo_id: str, *, private: bool = False, dry_run: bool = False) -> str | None:
    """Upload the run (dry_run: list what would go where, without the network); returns the commit's URL."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise FlantuneError(f"repo_id={repo_id} is no hub repository id ({first_line(exc)}). Give ORG/NAME, e.g. "
                            "repo_id=my-org/flan-t5-imdb.") from exc
    uploads = plan(run, repo_id)
    api = None if dry_run else _api()  # no token or no hub: said before anything goes
    say = console()
    where = f"https://huggingface.co/{repo_id}"
    say.print(f"{'would upload' if dry_run else 'uploading'} {len(uploads)} files "
              f"({_size(sum(u.source.stat().st_size for u in uploads))}) to {where} "
              f"({'private' if private else 'public'}):", highlight=False)
    for u in uploads:
        say.print(f"  {u.source.relative_to(run)} -> {u.path_in_repo}", highlight=False)
    _warn_local_base(run)
    if api is None:
        return None
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(u.path_in_repo, u.content if u.content is not None else str(u.source))
                  for u in uploads]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=f"flantune push {run.resolve().name}")
    except Exception as exc:  # noqa: BLE001 - the hub's HTTP errors and the network's alike
        raise FlantuneError(f"Uploading to {where} failed: {first_line(exc).rstrip('.')}. Check that your token "
                            f"may write to {repo_id.split('/')[0]}, then push again (the upload is one commit: nothing "
                            "was half-written).") from exc
    say.print(f"pushed: [bold]{info.commit_url}[/]")
    return info.commit_url


def _api():
    """An HfApi with the user's token, checked against the hub: no token, or no hub, is an error here."""
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise FlantuneError("No Hugging Face token: log in with `hf auth login` or set HF_TOKEN to a token that "
                            "may write to the repository, then push again (dry_run=true lists the files "
                            "without one).")
    api = HfApi(token=token)
    try:
        api.whoami()
    except Exception as exc:  # noqa: BLE001 - offline mode, a refused connection, a rejected token
        raise FlantuneError("The Hugging Face hub did not accept the token, or can't be reached: "
                            f"{first_line(exc).rstrip('.')}. Nothing was uploaded. Check the network (and that "
                            "HF_HUB_OFFLINE is unset) and the token, then push again.") from None
    return api


def _warn_local_base(run: Path) -> None:
    """A LoRA adapter whose base is a folder here can't be loaded from the hub without that base."""
    import json

    config = run / rundir.MODEL / "adapter_config.json"
    if not config.is_file():
        return
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    if is_local_path(base):
        console().print(f"note: the adapter's base model is a folder on this machine ({base}): whoever loads it "
                        "from the hub needs that base too. A run with merge=true has merged/, a plain model.",
                        highlight=False)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB"
