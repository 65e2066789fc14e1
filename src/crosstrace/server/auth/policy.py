"""The access rules, as oslo.policy defaults that a ``policy.yaml`` overrides.

Each API surface checks one rule against the caller's credentials
(:meth:`Identity.credentials`: ``roles``, ``user_id``, ...). What a reader may
see inside a surface is its scope, applied by the store; the rules decide only
whether the surface answers at all. ``crosstrace policy defaults`` prints them.
"""

from __future__ import annotations

import logging
import os
from typing import Final

from oslo_config import cfg
from oslo_policy import policy

from crosstrace.server.auth.identities import Identity

__all__ = [
    "ADMIN",
    "AUDIT",
    "DEFAULT_RULES",
    "INGEST",
    "METRICS",
    "READ",
    "SENSITIVE",
    "Policy",
    "render_defaults",
]

log = logging.getLogger(__name__)

READ: Final = "crosstrace:telemetry:read"
SENSITIVE: Final = "crosstrace:telemetry:read_sensitive"
METRICS: Final = "crosstrace:metrics:read"
AUDIT: Final = "crosstrace:audit:read"
INGEST: Final = "crosstrace:telemetry:write"
ADMIN: Final = "crosstrace:admin"

_API = "/api/v1"
DEFAULT_RULES: Final = (
    policy.RuleDefault("admin", "role:admin", description="The crosstrace administrator."),
    policy.DocumentedRuleDefault(
        READ,
        "role:reader or rule:admin",
        "Read traces, requests, logs, services, operations, dependencies, analysis and "
        "error groups, limited to the caller's projects and domains.",
        [
            {"path": f"{_API}/traces", "method": "GET"},
            {"path": f"{_API}/traces/{{trace_id}}", "method": "GET"},
            {"path": f"{_API}/requests/{{request_id}}", "method": "GET"},
            {"path": f"{_API}/logs", "method": "GET"},
            {"path": f"{_API}/services", "method": "GET"},
            {"path": f"{_API}/dependencies", "method": "GET"},
            {"path": f"{_API}/errors", "method": "GET"},
            {"path": "/ui", "method": "GET"},
        ],
    ),
    policy.DocumentedRuleDefault(
        SENSITIVE,
        "role:sensitive or rule:admin",
        "See sensitive attribute values (SQL text, stack traces, host names, full URLs) "
        "unmasked, and search on them.",
        [{"path": f"{_API}/traces/{{trace_id}}", "method": "GET"}],
    ),
    policy.DocumentedRuleDefault(
        METRICS,
        "role:metrics or rule:admin",
        "Read the Prometheus metrics of the backend.",
        [{"path": "/metrics", "method": "GET"}],
    ),
    policy.DocumentedRuleDefault(
        AUDIT,
        "rule:admin",
        "Read the audit log of reads and administrative actions.",
        [{"path": f"{_API}/audit", "method": "GET"}],
    ),
    policy.DocumentedRuleDefault(
        INGEST,
        "role:ingest or rule:admin",
        "Send telemetry (OTLP traces and logs).",
        [{"path": "/v1/traces", "method": "POST"}, {"path": "/v1/logs", "method": "POST"}],
    ),
    policy.DocumentedRuleDefault(
        ADMIN,
        "rule:admin",
        "Administrative changes: tokens, retention, central sampling settings.",
        [{"path": f"{_API}/sampling/{{service}}", "method": "PUT"}],
    ),
)


class Policy:
    """An oslo.policy enforcer with crosstrace's defaults and an optional
    ``policy.yaml`` overriding them (re-read when it changes)."""

    def __init__(self, policy_file: str | os.PathLike[str] | None = None) -> None:
        conf = cfg.ConfigOpts()
        conf([], project="crosstrace", default_config_files=[], default_config_dirs=[])
        path = os.fspath(policy_file) if policy_file is not None else None
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"policy file {path} does not exist")
        # Without a file, point at one that cannot exist so only the defaults apply.
        self._enforcer = policy.Enforcer(
            conf, policy_file=path or os.devnull + ".crosstrace-none", use_conf=False
        )
        self._enforcer.register_defaults(DEFAULT_RULES)
        self.policy_file = path
        # Load now, so a broken policy file stops the server at start.
        self._enforcer.load_rules(force_reload=True)

    def allows(self, rule: str, identity: Identity) -> bool:
        """Whether *identity* passes *rule*."""
        creds = identity.credentials()
        return bool(self._enforcer.authorize(rule, {}, creds, do_raise=False))


def render_defaults() -> str:
    """The documented default rules as a commented ``policy.yaml``."""
    lines = [
        "# crosstrace policy defaults. Copy the rules you change into a policy.yaml",
        "# and start `crosstrace serve --policy-file policy.yaml`.",
        "# Roles: reader, sensitive, admin, ingest, metrics.",
        "",
    ]
    for rule in DEFAULT_RULES:
        lines.append(f"# {rule.description}")
        for op in getattr(rule, "operations", []) or []:
            lines.append(f"# {op['method']}  {op['path']}")
        lines.append(f'#"{rule.name}": "{rule.check_str}"')
        lines.append("")
    return "\n".join(lines)
