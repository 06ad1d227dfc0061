"""Where a name points: a path on this machine or a Hugging Face hub id, and whether the hub answers.

Models, tokenizers and datasets all ask these two questions before loading anything."""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from flantune.errors import first_line

# flantune's default output folders: runs/NAME is a run directory, never a hub id.
OUTPUT_ROOTS = ("runs", "evals", "reports", "sweeps")


def is_local_path(path: str) -> bool:
    """A path on this machine, not a hub id ORG/NAME: it exists here, is written as a path (./, ../, /, ~), starts in
    flantune's output folders (runs/...), or is no valid hub id (more than one
    '/', a space, ...: huggingface_hub's own rule). Such a value that doesn't exist is a mistyped path, said at once
    rather than after retrying the hub."""
    if not path:
        return False
    if path.startswith((".", "/", "~")) or Path(path).expanduser().exists():
        return True
    first, sep, _ = path.partition("/")
    if sep and first in OUTPUT_ROOTS:  # not any folder here: google/flan-t5-base stays a hub id beside ./google/
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return True
    return False


@lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the Hugging Face hub can't be reached, or None where it answers (or where HF_HUB_OFFLINE is set: then
    the local cache is all there is). Asked once per process, with huggingface_hub's own session, endpoint and
    timeout; an unreachable hub switches huggingface_hub (and datasets) to offline mode, so that every later load
    reads the cache at once instead of retrying each file for half a minute."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - httpx's connection, timeout and proxy errors alike
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"  # for datasets, if it is imported later
        if "datasets.config" in sys.modules:
            sys.modules["datasets.config"].HF_HUB_OFFLINE = True
        return f"at {constants.ENDPOINT} can't be reached ({first_line(exc)})"
    return None
