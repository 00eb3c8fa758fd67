"""vptcli's cache folder (mapped backbone weights, fetched files): one low module, no vptcli imports."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "VPTCLI_CACHE_DIR"


def cache_dir() -> Path:
    """vptcli's cache folder: ``$VPTCLI_CACHE_DIR`` if set, else ``platformdirs.user_cache_dir("vptcli")``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("vptcli"))
