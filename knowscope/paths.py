"""Where knowscope keeps its files: the cache of converted weights, key statistics, locks.

The bottom of the package (no knowscope imports): ``models``, ``results`` and everything above
find the cache here.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where knowscope keeps converted weights, key statistics and other reusable artefacts.

    ``$KNOWSCOPE_CACHE`` if set, else the user cache directory (``~/.cache/knowscope`` on Linux).
    """
    from platformdirs import user_cache_dir

    env = os.environ.get("KNOWSCOPE_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        path = Path(user_cache_dir("knowscope"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file that serialises writers of ``target`` (kept in the cache, not beside the target)."""
    import hashlib

    key = hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:24]
    folder = cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.lock"
