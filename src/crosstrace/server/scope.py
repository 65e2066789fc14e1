"""What one caller may read: every trace and log, or those owned by some projects
or by the projects of some domains.

A :class:`Scope` is handed to every store read (trace search, a trace by id,
request views, logs, services, operations, dependencies, error groups, analysis);
the store turns it into a condition of its SQL (:meth:`Scope.sql`), so data out
of scope is never fetched, counted or paged over. A trace is owned by the
project and project domain of its root SERVER span; data without an owner is
visible only to a cloud-wide scope.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Scope"]


@dataclass(frozen=True, slots=True)
class Scope:
    """Cloud-wide (``everything``), or the union of *projects* and *domains*.

    An empty non-cloud-wide scope sees nothing.
    """

    projects: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    everything: bool = False

    ALL: ClassVar[Scope]
    NOTHING: ClassVar[Scope]

    @classmethod
    def of(cls, projects: Iterable[str] = (), domains: Iterable[str] = ()) -> Scope:
        """The scope of these projects and domains; both empty means cloud-wide."""
        p = frozenset(projects)
        d = frozenset(domains)
        return cls(p, d, everything=not p and not d)

    @property
    def is_empty(self) -> bool:
        """Whether nothing at all is visible."""
        return not self.everything and not self.projects and not self.domains

    def allows(self, project_id: str | None, domain_id: str | None) -> bool:
        """Whether data owned by *project_id* in *domain_id* is visible."""
        if self.everything:
            return True
        return (project_id is not None and project_id in self.projects) or (
            domain_id is not None and domain_id in self.domains
        )

    def sql(self, project_col: str, domain_col: str) -> tuple[str | None, list[Any]]:
        """A SQL condition (``?`` placeholders) and its parameters that hold for
        visible rows; ``None`` when every row is visible. ``"1 = 0"`` when none is."""
        if self.everything:
            return None, []
        parts: list[str] = []
        params: list[Any] = []
        for column, values in ((project_col, self.projects), (domain_col, self.domains)):
            if values:
                ordered = sorted(values)
                parts.append(f"{column} IN ({', '.join('?' * len(ordered))})")
                params.extend(ordered)
        if not parts:
            return "1 = 0", []
        return "(" + " OR ".join(parts) + ")", params

    def describe(self) -> str:
        """Short text for logs and the audit trail."""
        if self.everything:
            return "cloud"
        parts = [f"project:{p}" for p in sorted(self.projects)]
        parts += [f"domain:{d}" for d in sorted(self.domains)]
        return ",".join(parts) or "none"


Scope.ALL = Scope(everything=True)
Scope.NOTHING = Scope()
