"""Backend settings: ``crosstrace serve``'s flags, environment and config file,
and the store URL and data directory that ``serve``, ``logs import`` and ``demo`` share.

Every setting can come from three places; the first that sets it wins:

1. a command-line flag (``--port 4318``),
2. an environment variable (``CROSSTRACE_PORT=4318``),
3. the ``[serve]`` table of a TOML config file (``--config FILE`` or
   ``$CROSSTRACE_CONFIG``; ``port = 4318``),

then the built-in default. All three sources go through the same parsers, so a bad
value is reported the same way wherever it came from, naming its source.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from crosstrace.config import parse_duration
from crosstrace.server.auth import TokenSet, is_loopback
from crosstrace.server.errors import BadRequest

__all__ = [
    "DEFAULT_EXCHANGE",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_QUEUE",
    "DEFAULT_ROUTING_KEY",
    "ENV_CONFIG",
    "ENV_DB",
    "SETTINGS",
    "Settings",
    "SettingsError",
    "default_data_dir",
    "default_db_url",
    "parse_duration_ns",
    "parse_size",
    "resolve",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 4318
DEFAULT_EXCHANGE: Final = "crosstrace"
DEFAULT_QUEUE: Final = "crosstrace.otlp"
DEFAULT_ROUTING_KEY: Final = "otlp"
#: Environment variable naming the config file.
ENV_CONFIG: Final = "CROSSTRACE_CONFIG"
#: Table of the config file that holds these settings.
CONFIG_TABLE: Final = "serve"
#: Environment variable naming the store URL (``sqlite:///path`` or ``postgresql://...``).
ENV_DB: Final = "CROSSTRACE_DB"

_DAY_NS: Final = 86400 * 1_000_000_000
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE | re.ASCII)
_OFF: Final = frozenset({"0", "off", "none", "no", ""})


class SettingsError(BadRequest, ValueError):
    """A setting has a bad value; ``name`` is the flag it belongs to."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


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


def parse_duration_ns(text: str) -> int:
    """``250ms``, ``2s``, ``15m``, ``1h``, ``7d`` -> nanoseconds (a unit is required;
    :func:`crosstrace.config.parse_duration` reads it). Raises ``ValueError``."""
    ns = parse_duration(text, unit_required=True) * 1e9
    if not 0 <= ns < 2**63:
        raise ValueError(f"{text!r} is out of range")
    return round(ns)


def parse_size(text: str) -> int:
    """``10GB``, ``512MiB``, ``1048576`` -> bytes. Raises ``ValueError``."""
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a size like 512MB, 10GB or 1GiB")
    number, unit = match.groups()
    value = float(number) * _SIZE_UNITS[(unit or "").lower()]
    if not value < 2**63:
        raise ValueError(f"{text!r} is out of range")
    return int(value)


def _optional(parser: Callable[[str], int]) -> Callable[[str], int | None]:
    def parse(text: str) -> int | None:
        if text.strip().lower() in _OFF:
            return None
        return parser(text)

    return parse


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return port


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} must be at least 1")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def default_decode_workers() -> int:
    """One decode worker per core beyond the first (none on one core)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _optional_text(text: str) -> str | None:
    return text.strip() or None


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _lines(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.splitlines() if t.strip())


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str  # attribute of Settings, flag spelled with dashes
    env: str
    parse: Callable[[str], Any]
    default: Callable[[], Any]


#: Every setting: attribute name, environment variable, parser, default.
SETTINGS: Final[tuple[_Spec, ...]] = (
    _Spec("host", "CROSSTRACE_HOST", _text, lambda: DEFAULT_HOST),
    _Spec("port", "CROSSTRACE_PORT", _port, lambda: DEFAULT_PORT),
    _Spec("db", ENV_DB, _text, default_db_url),
    _Spec("consume", "CROSSTRACE_CONSUME", _optional_text, lambda: None),
    _Spec("no_http", "CROSSTRACE_NO_HTTP", _bool, lambda: False),
    _Spec("retention", "CROSSTRACE_RETENTION", _optional(parse_duration_ns), lambda: 7 * _DAY_NS),
    _Spec("max_db_size", "CROSSTRACE_MAX_DB_SIZE", _optional(parse_size), lambda: None),
    _Spec("ingest_tokens", "CROSSTRACE_INGEST_TOKEN", _tokens, tuple),
    _Spec("api_tokens", "CROSSTRACE_API_TOKEN", _tokens, tuple),
    _Spec("no_auth", "CROSSTRACE_NO_AUTH", _bool, lambda: False),
    _Spec("amqp_exchange", "CROSSTRACE_AMQP_EXCHANGE", _text, lambda: DEFAULT_EXCHANGE),
    _Spec("amqp_queue", "CROSSTRACE_AMQP_QUEUE", _text, lambda: DEFAULT_QUEUE),
    _Spec("amqp_routing_key", "CROSSTRACE_AMQP_ROUTING_KEY", _text, lambda: DEFAULT_ROUTING_KEY),
    _Spec("prefetch", "CROSSTRACE_PREFETCH", _positive_int, lambda: 32),
    _Spec("decode_workers", "CROSSTRACE_DECODE_WORKERS", _count, default_decode_workers),
    _Spec("max_body_size", "CROSSTRACE_MAX_BODY_SIZE", parse_size, lambda: 16 * 1024**2),
    _Spec(
        "max_decompressed_size",
        "CROSSTRACE_MAX_DECOMPRESSED_SIZE",
        parse_size,
        lambda: 64 * 1024**2,
    ),
    _Spec("auth_file", "CROSSTRACE_AUTH_FILE", _optional_text, lambda: None),
    _Spec("policy_file", "CROSSTRACE_POLICY_FILE", _optional_text, lambda: None),
    _Spec("allowed_hosts", "CROSSTRACE_ALLOWED_HOSTS", _names, tuple),
    _Spec("tls_cert", "CROSSTRACE_TLS_CERT", _optional_text, lambda: None),
    _Spec("tls_key", "CROSSTRACE_TLS_KEY", _optional_text, lambda: None),
    _Spec("max_concurrent_ingest", "CROSSTRACE_MAX_CONCURRENT_INGEST", _positive_int, lambda: 64),
    _Spec("max_json_memory", "CROSSTRACE_MAX_JSON_MEMORY", parse_size, lambda: 512 * 1024**2),
    _Spec("sensitive_attributes", "CROSSTRACE_SENSITIVE_ATTRIBUTES", _names, tuple),
    _Spec("redact_keys", "CROSSTRACE_REDACT_KEYS", _names, tuple),
    _Spec("redact_patterns", "CROSSTRACE_REDACT_PATTERNS", _lines, tuple),
    _Spec("keystone_url", "CROSSTRACE_KEYSTONE_URL", _optional_text, lambda: None),
    _Spec("keystone_user", "CROSSTRACE_KEYSTONE_USER", _text, lambda: "crosstrace"),
    # The password only from the environment or the config file, never a flag.
    _Spec("keystone_password", "CROSSTRACE_KEYSTONE_PASSWORD", _optional_text, lambda: None),
    _Spec("keystone_project", "CROSSTRACE_KEYSTONE_PROJECT", _text, lambda: "service"),
    _Spec("keystone_system_scope", "CROSSTRACE_KEYSTONE_SYSTEM_SCOPE", _bool, lambda: False),
    _Spec("keystone_user_domain", "CROSSTRACE_KEYSTONE_USER_DOMAIN", _text, lambda: "default"),
    _Spec(
        "keystone_project_domain", "CROSSTRACE_KEYSTONE_PROJECT_DOMAIN", _text, lambda: "default"
    ),
    _Spec(
        "keystone_cache_ttl",
        "CROSSTRACE_KEYSTONE_CACHE_TTL",
        parse_duration_ns,
        lambda: 30_000_000_000,
    ),
)
_BY_NAME: Final = {spec.name: spec for spec in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved settings of one ``serve`` process."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db: str = ""
    consume: str | None = None
    no_http: bool = False
    retention: int | None = 7 * _DAY_NS  # ns; None keeps data forever
    max_db_size: int | None = None  # bytes
    ingest_tokens: tuple[str, ...] = ()
    api_tokens: tuple[str, ...] = ()
    no_auth: bool = False
    amqp_exchange: str = DEFAULT_EXCHANGE
    amqp_queue: str = DEFAULT_QUEUE
    amqp_routing_key: str = DEFAULT_ROUTING_KEY
    prefetch: int = 32
    decode_workers: int = 0
    max_body_size: int = 16 * 1024**2
    max_decompressed_size: int = 64 * 1024**2
    auth_file: str | None = None
    policy_file: str | None = None
    #: Host names answered besides the loopback ones and the bound address ("*": any).
    allowed_hosts: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    max_concurrent_ingest: int = 64
    max_json_memory: int = 512 * 1024**2
    #: Attribute keys masked for identities without ``sensitive``, beyond the defaults.
    sensitive_attributes: tuple[str, ...] = ()
    redact_keys: tuple[str, ...] = ()
    redact_patterns: tuple[str, ...] = ()
    #: Keystone validating X-Auth-Token (``None``: Keystone tokens not accepted).
    keystone_url: str | None = None
    keystone_user: str = "crosstrace"
    keystone_password: str | None = field(default=None, repr=False)
    keystone_project: str = "service"
    keystone_system_scope: bool = False
    keystone_user_domain: str = "default"
    keystone_project_domain: str = "default"
    keystone_cache_ttl: int = 30_000_000_000  # ns
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def ingest_tokenset(self) -> TokenSet:
        return TokenSet(() if self.no_auth else self.ingest_tokens)

    @property
    def api_tokenset(self) -> TokenSet:
        return TokenSet(() if self.no_auth else self.api_tokens)

    @property
    def host_allow_list(self) -> frozenset[str] | None:
        """Host names the server answers to (``None``: any): the loopback names,
        the bound address and ``--allowed-hosts``."""
        if "*" in self.allowed_hosts:
            return None
        names = {"localhost", "127.0.0.1", "::1", "[::1]"}
        if self.host not in ("0.0.0.0", "::", "[::]"):  # noqa: S104 (names, not binds)
            names.add(self.host.lower())
        names.update(h.lower() for h in self.allowed_hosts)
        return frozenset(names)

    def argv_token_warning(self) -> str | None:
        """A warning when tokens were given on the command line, where every
        local user can read them (``ps``)."""
        flags = [
            "--" + name.removesuffix("s").replace("_", "-")
            for name in ("ingest_tokens", "api_tokens")
            if self.sources.get(name, "").startswith("--")
        ]
        if not flags:
            return None
        return (
            f"warning: {' and '.join(flags)} on the command line can be read by other local "
            "users; use CROSSTRACE_INGEST_TOKEN / CROSSTRACE_API_TOKEN, the config file, "
            "or --auth-file"
        )

    def describe_auth(self) -> str:
        if self.no_auth:
            return "off (--no-auth, loopback only)"
        parts = [f"identities from {self.auth_file}"] if self.auth_file else []
        if self.keystone_url:
            parts.append(f"Keystone tokens from {self.keystone_url}")
        identities = bool(parts)
        for what, tokens in (("ingest", self.ingest_tokens), ("api", self.api_tokens)):
            if tokens:
                parts.append(f"{what}: {len(tokens)} token(s)")
            elif not identities:
                parts.append(f"{what}: open")
        return ", ".join(parts)


def _file_values(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError("config", f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("config", f"config file {path} is not valid TOML: {exc}") from None
    table = doc.get(CONFIG_TABLE, {})
    if not isinstance(table, dict):
        raise SettingsError("config", f"[{CONFIG_TABLE}] in {path} must be a table")
    unknown = sorted(set(table) - set(_BY_NAME))
    if unknown:
        raise SettingsError(
            "config", f"unknown setting(s) in [{CONFIG_TABLE}] of {path}: {', '.join(unknown)}"
        )
    return table


def _as_text(name: str, value: Any, where: str) -> str:
    """A config-file value in the string form the parsers take."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and name == "redact_patterns":
        if not all(isinstance(v, str) and "\n" not in v for v in value):
            raise SettingsError(name, f"{name} in {where} must be a list of strings")
        return "\n".join(value)
    if isinstance(value, list) and name in (
        "ingest_tokens",
        "api_tokens",
        "allowed_hosts",
        "sensitive_attributes",
        "redact_keys",
    ):
        if not all(isinstance(v, str) and "," not in v for v in value):
            raise SettingsError(name, f"{name} in {where} must be a list of strings")
        return ",".join(value)
    raise SettingsError(name, f"{name} in {where} has an unsupported type")


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge *flags* (``None`` = not given) over *env* over the *config* file.

    Flag values may already be parsed (ints, bools, tuples) or strings.
    Raises :class:`SettingsError` for a bad value or an unsafe combination.
    """
    env = os.environ if env is None else env
    config_path = config or env.get(ENV_CONFIG) or None
    file_values = _file_values(Path(config_path)) if config_path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        flag = flags.get(spec.name)
        if isinstance(flag, tuple | list) and not flag:
            flag = None
        try:
            if flag is not None:
                source = "--" + spec.name.replace("_", "-")
                if isinstance(flag, str):
                    value = spec.parse(flag)
                elif isinstance(flag, list | tuple):
                    value = spec.parse(",".join(flag))
                else:
                    value = flag
            elif spec.env in env:
                source = f"${spec.env}"
                value = spec.parse(env[spec.env])
            elif spec.name in file_values:
                source = f"{config_path} [{CONFIG_TABLE}] {spec.name}"
                value = spec.parse(_as_text(spec.name, file_values[spec.name], str(config_path)))
            else:
                source = "default"
                value = spec.default()
        except ValueError as exc:
            if isinstance(exc, SettingsError):
                raise
            raise SettingsError(spec.name, f"bad value from {source}: {exc}") from None
        values[spec.name] = value
        sources[spec.name] = source
    settings = Settings(**values, sources=sources)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    """Refuse combinations that would expose data or do nothing."""
    try:
        TokenSet(settings.ingest_tokens)
        TokenSet(settings.api_tokens)
    except ValueError as exc:
        raise SettingsError("ingest_tokens", f"bad token: {exc}") from None
    if settings.no_http and not settings.consume:
        raise SettingsError("no_http", "--no-http needs --consume (there would be nothing to do)")
    if settings.no_auth and (settings.ingest_tokens or settings.api_tokens or settings.auth_file):
        raise SettingsError("no_auth", "--no-auth conflicts with configured tokens")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SettingsError("tls_cert", "--tls-cert and --tls-key go together")
    for name in ("tls_cert", "tls_key", "policy_file", "auth_file"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise SettingsError(name, f"{path} is not a readable file")
    for pattern in settings.redact_patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SettingsError("redact_patterns", f"bad pattern {pattern!r}: {exc}") from None
    if settings.keystone_url and not settings.keystone_password:
        raise SettingsError(
            "keystone_url",
            "--keystone-url needs the service user's password in CROSSTRACE_KEYSTONE_PASSWORD "
            "(or keystone_password in the config file)",
        )
    if settings.no_http or is_loopback(settings.host) or settings.auth_file:
        return
    if settings.no_auth:
        raise SettingsError(
            "no_auth",
            f"refusing to serve on non-loopback address {settings.host} with --no-auth; "
            "configure --ingest-token and --api-token",
        )
    missing = [
        flag
        for flag, tokens in (
            ("--ingest-token", settings.ingest_tokens),
            ("--api-token", settings.api_tokens),
        )
        if not tokens
    ]
    if missing:
        raise SettingsError(
            "host",
            f"refusing to serve on non-loopback address {settings.host} without tokens: "
            f"configure {' and '.join(missing)} (or the CROSSTRACE_INGEST_TOKEN / "
            "CROSSTRACE_API_TOKEN environment variables, or the config file)",
        )
