"""The ``crosstrace`` command line: one click group, one module per command group.

- :mod:`~crosstrace.cli.serve`: ``serve``, the backend;
- :mod:`~crosstrace.cli.query`: ``traces``, ``trace``, ``request``, reading the query API;
- :mod:`~crosstrace.cli.analysis`: ``why`` and ``errors``, root cause and error groups;
- :mod:`~crosstrace.cli.logs`: ``logs import`` (and ``logs search``, a query command);
- :mod:`~crosstrace.cli.sampling`: ``sampling set`` and ``sampling show``;
- :mod:`~crosstrace.cli.show`: ``show``, one trace or request as a tree, JSON, HTML or DOT;
- :mod:`~crosstrace.cli.demo`: ``demo``;
- :mod:`~crosstrace.cli.access`: ``token``, ``policy``.

Commands import the backend only when they run, so ``crosstrace --help`` stays fast.
"""

from __future__ import annotations

import click

from crosstrace import __version__
from crosstrace.cli.access import policy, token
from crosstrace.cli.analysis import errors, why
from crosstrace.cli.demo import demo
from crosstrace.cli.logs import logs
from crosstrace.cli.query import request, trace, traces
from crosstrace.cli.sampling import sampling
from crosstrace.cli.serve import serve
from crosstrace.cli.show import show

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crosstrace")
def main() -> None:
    """Global request ids, cross-service tracing and a trace backend."""


for _command in (
    serve,
    logs,
    demo,
    traces,
    trace,
    request,
    why,
    errors,
    show,
    sampling,
    token,
    policy,
):
    main.add_command(_command)
