"""Backend settings shared by ``serve``, ``logs import`` and ``demo``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_DB", "default_data_dir", "default_db_url"]

#: Environment variable naming the store URL (``sqlite:///path`` or ``postgresql://...``).
ENV_DB = "CROSSTRACE_DB"


def default_data_dir() -> Path:
    """The user's data directory for crosstrace (e.g. ``~/.local/share/crosstrace``)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("crosstrace", appauthor=False))


def default_db_url() -> str:
    """``$CROSSTRACE_DB``, else a SQLite file in the user's data directory."""
    url = os.environ.get(ENV_DB)
    if url:
        return url
    return f"sqlite:///{default_data_dir() / 'crosstrace.sqlite3'}"
