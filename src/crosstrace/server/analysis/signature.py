"""Error signatures: what makes two failures "the same error".

A signature is the root cause's service, operation and exception type, and its
message with the parts that differ from one occurrence to the next replaced by
placeholders: URLs, request ids, UUIDs, long hex ids, IP addresses and host
ports, file paths and numbers. The group id is a short hash of the signature, so
the same error gets the same group id in every process and on every day.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from crosstrace.server.analysis.result import Candidate

__all__ = ["GROUP_ID_RE", "Signature", "normalise_message", "signature_of"]

#: Longest normalised message kept in a signature.
MAX_MESSAGE: Final = 300
GROUP_ID_RE: Final = re.compile(r"[0-9a-f]{16}", re.ASCII)

_RULES: Final = [
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I), "<url>"),
    (
        re.compile(r"\breq-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I),
        "<req>",
    ),
    (
        re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I),
        "<uuid>",
    ),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\[[0-9a-f:]*:[0-9a-f:]+\](?::\d+)?", re.I), "<ip>"),
    (re.compile(r"(?<![\w<])(?:[A-Za-z]:)?(?:[/\\][\w.@%+~-]+){2,}[/\\]?"), "<path>"),
    (re.compile(r"(?<![\w<])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
]


def normalise_message(message: str) -> str:
    """The message with ids, UUIDs, numbers, hosts and paths replaced."""
    text = message.strip()
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    text = text.strip()
    return text[:MAX_MESSAGE]


@dataclass(frozen=True, slots=True)
class Signature:
    """Service, operation, exception type and normalised message of a root cause."""

    service: str
    operation: str
    exception_type: str
    message: str

    @property
    def group_id(self) -> str:
        """16 hex digits, stable for equal signatures."""
        key = "\x00".join((self.service, self.operation, self.exception_type, self.message))
        return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "operation": self.operation,
            "exception_type": self.exception_type,
            "message": self.message,
        }


def signature_of(candidate: Candidate) -> Signature:
    """The signature of a root-cause candidate."""
    message = candidate.message
    if not message and candidate.log is not None:
        message = candidate.log.body.split("\n", 1)[0]
    return Signature(
        candidate.service,
        candidate.name,
        candidate.exception_type,
        normalise_message(message),
    )
