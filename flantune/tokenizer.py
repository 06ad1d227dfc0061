"""Loading a tokenizer: by path or hub id, or the FLAN-T5 tokenizer shipped with flantune, once per process."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from flantune.errors import FlantuneError, first_line
from flantune.hub import hub_unreachable, is_local_path


def bundled_tokenizer_dir() -> Path:
    return Path(str(resources.files("flantune") / "assets" / "t5-tokenizer"))


def tokenizer_target(name_or_path: str | None) -> str:
    """The folder or hub id a tokenizer is read from: None (or "flan-t5") is the one shipped with flantune."""
    return str(bundled_tokenizer_dir()) if name_or_path in (None, "", "flan-t5") else str(name_or_path)


def load_tokenizer(name_or_path: str | None):
    """A tokenizer by path or hub id; None gives the FLAN-T5 tokenizer shipped with flantune."""
    target = tokenizer_target(name_or_path)
    looks_local = is_local_path(target)
    if looks_local and not Path(target).expanduser().is_dir():
        raise FlantuneError(f"Tokenizer folder '{target}' does not exist. Give tokenizer=PATH of a folder with "
                            "tokenizer files, a hub id, or leave it out for the FLAN-T5 tokenizer shipped with flantune.")
    if looks_local and not any(Path(target).expanduser().iterdir()):
        raise FlantuneError(f"Tokenizer folder '{target}' is empty. Give a folder with tokenizer files (a "
                            "save_pretrained output), a hub id, or leave it out for the FLAN-T5 tokenizer shipped with "
                            "flantune.")
    if not looks_local:
        hub_unreachable()  # asked once: an unreachable hub is then read from the cache, not retried
    try:
        return _from_pretrained(str(Path(target).expanduser()) if looks_local else target)
    except (OSError, ValueError) as exc:  # ValueError: a folder without a tokenizer that transformers can build
        raise FlantuneError(
            f"Could not load tokenizer '{target}' ({first_line(exc)}). Offline, give tokenizer=PATH of a "
            "local folder, or leave it out for the FLAN-T5 tokenizer shipped with flantune."
        ) from exc


@lru_cache(maxsize=8)
def _from_pretrained(target: str):
    """A run reads its tokenizer three times (its vocabulary against the model's, the choices' lengths, the data):
    loaded once per process. Nothing in flantune changes a tokenizer after loading it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target)
