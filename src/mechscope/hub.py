"""Hugging Face hub ids (``org/name``) read through huggingface_hub's own cache, for models and dictionaries alike.

By default nothing is downloaded: a cached copy is used offline, and a repository (or a file or subfolder of one)
that is not in the cache ends in one line naming the cache and the ``hf download`` command that fetches it.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""An ``org/name`` repository id."""


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` has the shape of an ``org/name`` repository id (whether it is cached is another matter)."""
    return bool(HUB_ID.match(spec))


def _not_cached(error: type[Exception], what: str, fetch: str, extra: str = "") -> Exception:
    from huggingface_hub import constants

    return error(
        f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); fetch it once with "
        f"`hf download {fetch}`{extra}"
    )


def cached_snapshot(repo_id: str, error: type[Exception], *, subfolder: str | None = None, extra: str = "") -> Path:
    """The cached snapshot folder of ``repo_id`` (``/subfolder`` within it), offline; ``error`` naming the cache and
    the command that fetches it when absent. ``extra`` ends that message (another way to fetch it)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    sub = subfolder.strip("/") if subfolder else ""
    fetch = repo_id + (f" --include '{sub}/*'" if sub else "")
    what = repr(repo_id) + (f" (subfolder {sub!r})" if sub else "")
    try:
        root = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        raise _not_cached(error, what, fetch, extra) from err
    folder = root / sub if sub else root
    if not folder.is_dir():
        raise _not_cached(error, what, fetch, extra)
    return folder


def cached_file(repo_id: str, filename: str, error: type[Exception], revision: str | None = None) -> Path:
    """The cached copy of ``filename`` in ``repo_id`` (at ``revision``), offline; ``error`` as :func:`cached_snapshot`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        at = f" --revision {revision}" if revision else ""
        raise _not_cached(error, f"{repo_id}/{filename}", f"{repo_id} {filename}{at}") from err
