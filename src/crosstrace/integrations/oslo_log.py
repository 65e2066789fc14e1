"""oslo.log integration: trace ids on the lines of services that log through oslo.log.

oslo.log's ``ContextFormatter`` fills the request fields from oslo.context; add
crosstrace's fields (``trace_id``, ``span_id``, and the request ids when oslo has no
context) in one of two ways:

* configuration only, with ``log_config_append`` pointing to a ``logging.conf``
  whose formatter is :class:`ContextFormatter` (oslo's, plus crosstrace's fields);
* or one line after ``oslo_log.log.setup(CONF, "nova")``: :func:`install`, which
  attaches crosstrace's :class:`~crosstrace.logging.ContextFilter` to the root
  handlers oslo.log made.

Then put the fields in ``logging_context_format_string`` (:data:`CONTEXT_FORMAT`
is oslo.log's default with `` trace_id=%(trace_id)s span_id=%(span_id)s``
appended, so tools that parse oslo's prefix keep working; the exact
``nova.conf`` line is in ``docs/openstack.md``).

A ``logging.conf`` can also ship records to ``crosstrace serve`` with
:class:`crosstrace.logging.ExportHandler` (``kwargs={"service": "nova-api"}``).
"""

from __future__ import annotations

import logging

from oslo_log import formatters as _formatters

from crosstrace.logging import CONTEXT_FORMAT as _OSLO_CONTEXT_FORMAT
from crosstrace.logging import ContextFilter

__all__ = ["CONTEXT_FORMAT", "ContextFormatter", "install"]

#: oslo.log's default ``logging_context_format_string`` with the trace ids appended.
CONTEXT_FORMAT = _OSLO_CONTEXT_FORMAT + " trace_id=%(trace_id)s span_id=%(span_id)s"

_filter = ContextFilter()


class ContextFormatter(_formatters.ContextFormatter):
    """oslo.log's ``ContextFormatter`` with crosstrace's record fields added first.

    oslo's own context, when there is one, still decides the request fields;
    crosstrace adds ``trace_id``/``span_id`` and, for code that runs under a
    crosstrace context only, the request ids and identity.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Add crosstrace's fields, then format as oslo.log does."""
        _filter.filter(record)
        text: str = super().format(record)
        return text


def install(logger: logging.Logger | None = None) -> int:
    """Attach crosstrace's ``ContextFilter`` to every handler of *logger* (default:
    the root logger, where oslo.log puts its handlers) that has none; returns how
    many were added. Call it after ``oslo_log.log.setup``."""
    added = 0
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
            added += 1
    return added
