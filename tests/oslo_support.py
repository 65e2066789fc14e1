"""oslo.log set up in the test process the way a service sets it up."""

from __future__ import annotations

import io
import logging


class OsloLog:
    """oslo.log's ContextFormatter on a root handler, writing into a string."""

    def __init__(self) -> None:
        from oslo_config import cfg
        from oslo_log import formatters
        from oslo_log import log as oslo_log

        self.conf = cfg.ConfigOpts()
        oslo_log.register_options(self.conf)
        self.conf([], project="keystone")
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(
            formatters.ContextFormatter(project="keystone", version="30", config=self.conf)
        )

    def lines(self) -> list[str]:
        self.handler.flush()
        return self.stream.getvalue().splitlines()
