"""Shared by the browser tests: the demo server's handle and the vendored axe-core."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crosstrace.demo.backend import Backend

CHROMIUM = "/usr/bin/chromium"
#: axe-core, vendored (see src/crosstrace/server/web/static/vendor/README.md).
AXE = Path(__file__).parent / "vendor" / "axe.min.js"


@dataclass
class DemoServer:
    url: str
    data_dir: Path
    ground_truth: dict[str, Any]
    backend: Backend
    #: What ``crosstrace demo`` printed.
    output: str

    def boots(self) -> list[dict[str, Any]]:
        return [*self.ground_truth["faults"], *self.ground_truth["requests_without_fault"]]

    def faulty(self, kind: str) -> dict[str, Any]:
        found = [b for b in self.ground_truth["faults"] if b["fault"] == kind and b["trace_ids"]]
        if not found:
            pytest.fail(f"the demo run injected no {kind} fault")
        return found[0]
