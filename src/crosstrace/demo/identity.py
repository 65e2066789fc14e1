"""Who calls the demo cloud: two domains, four projects, one user in each.

Ids are stable across runs (UUID5 of the names, in Keystone's 32-hex format), so
traces from several runs line up by project. The headers are the ones
keystonemiddleware's ``auth_token`` sets after validating a token.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AUTH_FILE", "IDENTITIES", "Identity", "identity_headers", "write_auth_file"]

_NAMESPACE = uuid.UUID("6d1c8c4e-3c59-4f77-9b0e-5b1de5a1f0c7")

HEADER_USER_ID = "X-User-Id"
HEADER_PROJECT_ID = "X-Project-Id"
HEADER_DOMAIN_ID = "X-Domain-Id"
HEADER_USER_DOMAIN_ID = "X-User-Domain-Id"
HEADER_PROJECT_DOMAIN_ID = "X-Project-Domain-Id"
HEADER_ROLES = "X-Roles"


def _kid(kind: str, name: str) -> str:
    return uuid.uuid5(_NAMESPACE, f"{kind}:{name}").hex


@dataclass(frozen=True, slots=True)
class Identity:
    """A user scoped to a project, as keystonemiddleware describes it."""

    user_name: str
    project_name: str
    domain_name: str
    roles: tuple[str, ...]

    @property
    def user_id(self) -> str:
        return _kid("user", self.user_name)

    @property
    def project_id(self) -> str:
        return _kid("project", self.project_name)

    @property
    def domain_id(self) -> str:
        return _kid("domain", self.domain_name)


IDENTITIES: tuple[Identity, ...] = (
    Identity("alice", "web-frontend", "retail", ("member", "reader")),
    Identity("bob", "payments", "retail", ("member", "reader")),
    Identity("carol", "genomics", "research", ("member", "reader")),
    Identity("dave", "climate-model", "research", ("admin", "member", "reader")),
)


def identity_headers(identity: Identity) -> dict[str, str]:
    """The identity headers keystonemiddleware would set for this user."""
    return {
        HEADER_USER_ID: identity.user_id,
        HEADER_PROJECT_ID: identity.project_id,
        HEADER_DOMAIN_ID: identity.domain_id,
        HEADER_USER_DOMAIN_ID: identity.domain_id,
        HEADER_PROJECT_DOMAIN_ID: identity.domain_id,
        HEADER_ROLES: ",".join(identity.roles),
    }


#: The identities file of ``crosstrace demo --auth``, in the data directory.
AUTH_FILE = "auth.toml"


def write_auth_file(data_dir: Path) -> dict[str, str]:
    """A fresh auth file: the demo's ingest and admin identities, and a reader of
    each of the demo's domains; returns name -> token."""
    from crosstrace.server.auth.identities import add_identity

    path = data_dir / AUTH_FILE
    path.unlink(missing_ok=True)
    tokens = {
        "demo-ingest": add_identity(path, "demo-ingest", ["ingest"]),
        "demo-admin": add_identity(path, "demo-admin", ["admin"]),
    }
    domains = {i.domain_name: i.domain_id for i in IDENTITIES}
    for name, domain_id in sorted(domains.items()):
        who = f"{name}-reader"
        tokens[who] = add_identity(path, who, ["reader"], domains=[domain_id])
    return tokens
