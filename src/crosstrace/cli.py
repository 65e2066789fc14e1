"""The ``crosstrace`` command line: one click group, one command per job."""

from __future__ import annotations

import click

from crosstrace import __version__

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crosstrace")
def main() -> None:
    """Global request ids, cross-service tracing and a trace backend."""
