"""The run directory: what a run writes, and the rule that nothing is overwritten silently.

    config.yaml            the resolved config
    metrics.json           task -> metric -> value on the final evaluation split, plus throughput (flantune.outputs)
    predictions/<task>.jsonl
    log_history.json       the trainer's log history (losses, validation metrics)
    mixture.json           a mixture's requested rates and the examples seen per task
    model/                 save_pretrained output (full model, or the LoRA adapter) with the tokenizer
    merged/                LoRA merged into the base model (merge=true)
    base_model/            the random-init base of a LoRA run (only when it can't be downloaded again)
    checkpoints/           the trainer's checkpoints (resume=true continues from the last complete one)
    .flantune              the mark of a directory flantune made: the only kind overwrite=true replaces; it
                           records the version of the files flantune writes there (flantune.versions)

A command holds its output directory's lock (`claim`, `lock`) for its whole life, so a second command on
the same directory is refused; overwrite=true moves the old directory aside and deletes it only once the
new one is in place (`replacing`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml
from omegaconf import DictConfig, OmegaConf

from flantune import versions
from flantune.errors import FlantuneError, first_line

CONFIG, METRICS, LOG_HISTORY, MIXTURE = "config.yaml", "metrics.json", "log_history.json", "mixture.json"
PREDICTIONS, MODEL, MERGED, BASE_MODEL, CHECKPOINTS = "predictions", "model", "merged", "base_model", "checkpoints"
MARK = ".flantune"  # {"kind": "run" | "evaluation" | "report", "schema_version": N}, written when flantune made it
RUN_KEYS = {"task", "model", "method", "train", "eval"}  # top-level keys every saved flantune config has
# Keys that may differ between a run and its resumption.
RESUME_FREE = ("resume", "overwrite", "output_dir", "compare", "report_to", "data_dir", "tasks_dir", "eval",
               "sweep")


# Where each kind of command writes when output_dir isn't set.
ROOTS = {"run": "runs", "evaluation": "evals", "sweep": "sweeps"}


def schema_version(folder: Path) -> int:
    """The version of the config.yaml in `folder`: its mark's, 1 for a folder made before the version (or the mark)."""
    try:
        return int(read_json(folder / MARK).get("schema_version", 1))
    except (OSError, ValueError, AttributeError):
        return 1


def read_config(folder: Path) -> DictConfig:
    """The config.yaml of a run or evaluation directory, in the current version's keys."""
    return versions.upgrade_config(OmegaConf.load(folder / CONFIG), schema_version(folder))


def read_metrics(folder: Path) -> dict[str, Any]:
    """The metrics.json of a run, evaluation or report-system directory, in the current version's keys."""
    return versions.upgrade_metrics(read_json(folder / METRICS))


def default_output_dir(cfg: DictConfig, label: str, root: str = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{label}-{slug(cfg.model.name)}-{stamp}"


def slug(text: str, limit: int = 60, fallback: str = "model") -> str:
    """`text` as a file name: runs of other characters than letters, digits, '.', '_' and '-' become '_',
    cut to `limit` characters; `fallback` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")[:limit] or fallback


def is_run_dir(path: Path) -> bool:
    """A directory whose config.yaml is a flantune config (a run or an evaluation)."""
    try:
        saved = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and RUN_KEYS <= set(saved)


def made_by_flantune(path: Path) -> bool:
    """What overwrite=true may delete: a directory flantune marked when it made it, or a run or evaluation
    directory made before the mark."""
    return (path / MARK).is_file() or is_run_dir(path)


def mark(path: Path, kind: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARK).is_file():
        made = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if not (path / CONFIG).is_file():  # not a run made before the mark, now resumed: that one keeps version 1
            made["schema_version"] = versions.SCHEMA_VERSION
        write_json(path / MARK, made)


def check_output_dir(out: Path, *, overwrite: bool, reads: Iterable[Any] = (), instead: str = "") -> None:
    """An output directory that can be written: not a file, a path the file system takes, in a folder that can be
    written, and existing only if overwrite=true may replace it, which needs flantune to have made it, not
    through a symbolic link, and nothing the command reads (its model, data, config and mixture files, the
    working directory) to lie inside it."""
    _check_names(out)
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise FlantuneError(f"output_dir={out} can't be a directory: {folder} is a file. Choose another "
                                "output_dir.")
    if out.is_symlink() and (overwrite or not out.exists()):
        raise FlantuneError(
            f"output_dir={out} is a symbolic link (to {os.readlink(out)})"
            f"{'' if out.exists() else ', whose target does not exist'}; flantune writes and replaces directories, "
            "not links. Give the directory itself as output_dir."
        )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FlantuneError(f"The output directory {out} already exists and is not empty. {instead}Use "
                                f"overwrite=true to replace it, or another output_dir.")
        if not made_by_flantune(out):
            raise FlantuneError(
                f"overwrite=true would delete {out}, which flantune did not make (no {MARK} mark, no flantune "
                f"{CONFIG}); refusing. Choose another output_dir."
            )
        inside = out.resolve()
        for path in (Path.cwd(), *(Path(str(r)).expanduser() for r in reads if r)):
            resolved = path.resolve()
            if resolved == inside or inside in resolved.parents:
                raise FlantuneError(
                    f"overwrite=true would delete {out}, but this command reads {path}, which is inside it"
                    f"{' (the working directory)' if path == Path.cwd() else ''}; refusing. Move it out, or choose "
                    "another output_dir."
                )
    _check_writable(out, replaced=overwrite and out.exists())


def _existing_ancestor(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def _check_names(out: Path) -> None:
    """Each part of the path no longer than the file system takes (255 bytes on most)."""
    try:
        limit = os.pathconf(_existing_ancestor(out.absolute()), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in out.parts:
        if len(os.fsencode(part)) > limit:
            raise FlantuneError(
                f"output_dir={out}: the name '{part[:40]}...' is {len(os.fsencode(part))} bytes long, more than "
                f"the {limit} the file system takes for one name. Choose a shorter output_dir."
            )


def _check_writable(out: Path, replaced: bool) -> None:
    """A folder made and removed where the command will write (replacing `out` writes beside it): a read-only
    file system, /proc or a folder of another user is an error now, not after the model has loaded."""
    where = _existing_ancestor((out.parent if replaced else out).absolute())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".flantune-probe-", dir=where))
    except OSError as exc:
        raise FlantuneError(
            f"output_dir={out} can't be written: making a folder in {where} fails "
            f"({exc.strerror or first_line(exc)}). Choose an output_dir in a folder you can write."
        ) from None


def output_dir(cfg: DictConfig, label: str, kind: str = "run") -> Path:
    return Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg, label, ROOTS[kind])


def check(cfg: DictConfig, label: str, reads: Iterable[Any] = (), out: Path | None = None) -> Path:
    """The run directory, checked but not touched: an existing one is an error unless resume=true or
    overwrite=true (and overwrite only replaces a directory flantune made, holding nothing the run reads)."""
    out = out or output_dir(cfg, label)
    if cfg.resume:
        if not is_run_dir(out):
            raise FlantuneError(
                f"resume=true, but {out} is not a flantune run directory (no readable flantune {CONFIG}). Point "
                "output_dir at the run to continue."
            )
        saved = read_config(out)
        differ = _differences(OmegaConf.to_container(saved), OmegaConf.to_container(cfg))
        if differ:
            said = [f"{k} (the run: {OmegaConf.select(saved, k)}, now: {OmegaConf.select(cfg, k)})" for k in differ]
            raise FlantuneError(
                f"resume=true continues {out} with the config it started with, but these keys differ now: "
                f"{'; '.join(said)}. Resume with the run's settings (key=value on the command line), or start a new "
                "run (another output_dir)."
            )
        return out
    check_output_dir(out, overwrite=cfg.overwrite, reads=reads, instead="Use resume=true to continue that run. ")
    return out


def claim(cfg: DictConfig, out: Path, reads: Iterable[Any], held: contextlib.ExitStack, kind: str = "run") -> Path:
    """`out` checked under its lock, which `held` keeps until the command ends: a run's with `check` (it may be
    one to resume), an evaluation's with `check_output_dir`."""
    held.enter_context(lock(out))
    if kind == "run":
        return check(cfg, "", reads, out)
    check_output_dir(out, overwrite=cfg.overwrite, reads=reads)
    return out


def finished(out: Path) -> bool:
    """A run that wrote its final results (resume=true has nothing left to do)."""
    return (out / METRICS).is_file()


@contextlib.contextmanager
def lock(out: Path) -> Iterator[None]:
    """Held while a command writes `out`: a second flantune command on the same directory is refused at once,
    instead of both writing it. The lock file sits beside the directory (which overwrite=true replaces), on the
    same file system, so commands of other users, other TMPDIRs and other nodes of a shared file system see it
    too. The OS releases an flock when its process ends, however it ends; the file is removed on a clean exit
    (after a crash it stays, unlocked, and is reused). Where no lock file can be made beside `out` (its parent
    is a file, can't be written, ...) the command goes on unlocked: the output-directory checks that follow say
    what is wrong with the path."""
    import fcntl

    target = Path(os.path.abspath(out.expanduser()))
    name = f".{target.name}.flantune-lock"
    if len(name.encode()) > 255:  # the lock of a name near the file system's limit: by its hash
        name = f".{hashlib.sha256(target.name.encode()).hexdigest()[:32]}.flantune-lock"
    path = target.parent / name
    made = []
    try:
        made = [p for p in target.parents if not p.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path, fcntl, out)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW: someone put a link where the lock goes
            raise FlantuneError(f"{path}, the lock file of output_dir={out}, is a symbolic link; flantune does not "
                                "write through one. Remove it, or choose another output_dir.") from None
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # before the unlock: a waiting command then makes a new file (see _open_locked)
            os.close(fd)  # releases the flock
        for folder in made:  # folders made for the lock that nothing else used (deepest first)
            _rmdir_if_empty(folder)


def _open_locked(path: Path, fcntl, out: Path) -> int:
    """The lock file, opened (never through a symbolic link) and flocked. A file removed between our open and
    our flock by the holder that just ended is not the lock any more: open the new one."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except PermissionError:  # another user's lock file: reading is enough to flock it
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FlantuneError(
                f"Another flantune command is writing {out} ({holder}); two commands can't write one directory. Wait "
                "for it to end, or choose another output_dir."
            ) from None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}".encode(), 0)
    return fd


@contextlib.contextmanager
def replacing(out: Path, cfg: DictConfig, kind: str = "run") -> Iterator[None]:
    """The checked output directory (`check` or `check_output_dir`), made and marked for the block. An old one
    that overwrite=true replaces is moved aside and deleted only when the block ends well; if the block fails,
    what it made is removed and the old directory put back: a failed command loses nothing and leaves nothing
    half-made (a resumed run's directory is left as it is)."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # folders to remove if the block fails
    aside = None
    if cfg.overwrite and not cfg.resume and out.exists():
        aside = Path(tempfile.mkdtemp(prefix=".flantune-replaced-", dir=out.parent))
        out.rename(aside)  # onto the empty folder just made: one atomic step
        made = [out]
    mark(out, kind)
    try:
        yield
    except BaseException:
        for folder in made:  # deepest first; a folder something else wrote in stays
            shutil.rmtree(folder, ignore_errors=True) if folder == out else _rmdir_if_empty(folder)
        if aside is not None:
            aside.rename(out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)  # the new directory is in place: leftovers are only litter


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def create(out: Path, cfg: DictConfig, kind: str = "run") -> None:
    """`replacing` with nothing left to fail: call it once the command has passed its checks and loaded its model."""
    with replacing(out, cfg, kind):
        pass


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        if path.split(".")[0] in RESUME_FREE:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys.extend(_differences(va, vb, path + "."))
        elif va != vb:
            keys.append(path)
    return keys


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: trainer_state.json is written last, so a run killed while saving
    leaves a folder without it, or with it cut short; such folders are passed over, and said so."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    skipped = []
    for checkpoint in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            state = read_json(checkpoint / "trainer_state.json")
        except FileNotFoundError:
            skipped.append(f"{checkpoint.name} (no trainer_state.json)")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            skipped.append(f"{checkpoint.name} (its trainer_state.json is cut short)")
        else:
            if isinstance(state, dict):
                break
            skipped.append(f"{checkpoint.name} (its trainer_state.json is not a trainer state)")
    else:
        checkpoint = None
    if skipped:
        from flantune.console import console

        then = f"resuming from {checkpoint.name}" if checkpoint else "no complete checkpoint: training starts over"
        console(stderr=True).print(f"[bold yellow]Note:[/] skipping {', '.join(skipped)} in {folder}, as a run killed "
                                   f"while saving leaves it; {then}.", highlight=False)
    return checkpoint


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=float) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
