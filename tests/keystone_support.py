"""A real Keystone (from PyPI, on SQLite) for tests, and a small admin client.

:func:`start_keystone` writes a ``keystone.conf`` into a directory and starts
this file as a child process, which:

1. runs ``keystone-manage db_sync``, ``fernet_setup``, ``credential_setup`` and
   ``bootstrap`` (admin user, ``admin`` project, ``reader``/``member``/``admin``
   roles) in-process, in one interpreter (a few seconds in all);
2. loads ``keystone.wsgi.api:application`` with the configuration from
   ``OS_KEYSTONE_CONFIG_FILES`` and a trimmed ``sys.argv`` (oslo.config would
   otherwise parse the parent's arguments), optionally behind a PasteDeploy
   pipeline (``paste_ini``, whose app is ``keystone_support:app_factory``);
3. serves it on a loopback ephemeral port, prints ``READY <port>``, and exits
   when its standard input closes (so it never outlives the test run).

Keystone runs in its own process because it takes over global state (oslo.config's
``CONF``, the root logger via oslo.log, its provider registry) that must not leak
into the test process. With ``trace=True`` the child also calls
:func:`crosstrace.configure` (settings from the ``CROSSTRACE_*`` variables in
``env``), so its spans and exported logs go where the test says.

:class:`Keystone` is the test side: the URL, the admin credentials, and helpers
that create domains, projects and users with roles and fetch scoped tokens
through Keystone's v3 API.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"
ADMIN_PROJECT = "admin"
DEFAULT_DOMAIN = "default"
# Seconds the child may take to set up the database and start serving.
START_TIMEOUT = 60.0

_HERE = Path(__file__).resolve().parent


def keystone_importable() -> str | None:
    """``None`` when keystone is installed here, else the reason it is not.

    Only looked up, not imported: importing keystone takes over global state
    (oslo.config, logging), which belongs in the child process.
    """
    import importlib.util

    for name in ("keystone", "keystonemiddleware", "keystoneauth1", "paste.deploy"):
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:
            found = False
        if not found:
            return f"keystone cannot be imported: {name} is not installed"
    return None


def write_config(
    workdir: Path, extra: dict[str, dict[str, str]] | None = None, log_file: bool = True
) -> Path:
    """Write ``keystone.conf`` for a SQLite Keystone into *workdir*; return its path.

    *extra* adds or overrides options per section. Keystone's own log (oslo.log's
    default line format) goes to ``workdir/keystone.log`` unless *log_file* is false.
    """
    (workdir / "fernet").mkdir(parents=True, exist_ok=True)
    (workdir / "credential").mkdir(exist_ok=True)
    sections: dict[str, dict[str, str]] = {
        "DEFAULT": {"debug": "false"},
        "database": {"connection": f"sqlite:///{workdir / 'keystone.db'}"},
        "cache": {"enabled": "true", "backend": "dogpile.cache.memory"},
        "resource": {"admin_project_name": ADMIN_PROJECT},
        # The fewest bcrypt rounds allowed: user creation stays fast.
        "identity": {"password_hash_algorithm": "bcrypt", "password_hash_rounds": "4"},
        "fernet_tokens": {"key_repository": str(workdir / "fernet")},
        "fernet_receipts": {"key_repository": str(workdir / "fernet")},
        "credential": {"key_repository": str(workdir / "credential")},
        "oslo_policy": {"enforce_new_defaults": "true", "enforce_scope": "true"},
    }
    if log_file:
        sections["DEFAULT"]["log_file"] = str(workdir / "keystone.log")
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
        lines.append("")
    path = workdir / "keystone.conf"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class KeystoneProcess:
    """A running Keystone child process: its URL, log file, and how to stop it."""

    def __init__(self, proc: subprocess.Popen[str], port: int, workdir: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.log_path = workdir / "keystone.log"

    def log_lines(self) -> list[str]:
        """Keystone's oslo.log lines so far."""
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the child's standard input (it exits) and wait; kill if it hangs."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_keystone(
    workdir: Path,
    *,
    extra_config: dict[str, dict[str, str]] | None = None,
    paste_ini: Path | None = None,
    trace: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> KeystoneProcess:
    """Set up and start Keystone in a child process; returns once it serves."""
    conf = write_config(workdir, extra_config)
    args = [sys.executable, str(Path(__file__)), str(conf), "--password", ADMIN_PASSWORD]
    if paste_ini is not None:
        args += ["--paste-ini", str(paste_ini)]
    if trace:
        args.append("--trace")
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_HERE), child_env.get("PYTHONPATH", "")) if p
    )
    errors = workdir / "keystone.stderr"
    with errors.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=child_env,
            cwd=workdir,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY "):
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        if proc.stdin is not None:
            proc.stdin.close()
        tail = errors.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"keystone did not start (got {line!r}); stderr:\n{tail}")
    return KeystoneProcess(proc, int(line.split()[1]), workdir)


@dataclasses.dataclass(frozen=True)
class User:
    """A user made by :meth:`Keystone.make_user`, with a project-scoped token."""

    id: str
    name: str
    password: str
    domain_id: str
    project_id: str
    roles: tuple[str, ...]
    token: str


class Keystone:
    """Admin client for a running Keystone (v3 API, through ``requests``)."""

    def __init__(self, url: str, process: KeystoneProcess | None = None) -> None:
        import requests

        self.url = url.rstrip("/")
        self.process = process
        self.http = requests.Session()
        self._admin_token: str | None = None
        self._roles: dict[str, str] = {}

    # -- tokens ----------------------------------------------------------------
    def password_token(
        self,
        user: str,
        password: str,
        *,
        user_domain: str = DEFAULT_DOMAIN,
        project_id: str | None = None,
        project_name: str | None = None,
        project_domain: str = DEFAULT_DOMAIN,
        system: bool = False,
    ) -> str:
        """A token for *user*, scoped to a project (by id or name), the system, or nothing."""
        auth: dict[str, Any] = {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"id": user_domain}, "password": password}
                },
            }
        }
        if project_id is not None:
            auth["scope"] = {"project": {"id": project_id}}
        elif project_name is not None:
            auth["scope"] = {"project": {"name": project_name, "domain": {"id": project_domain}}}
        elif system:
            auth["scope"] = {"system": {"all": True}}
        resp = self.http.post(f"{self.url}/v3/auth/tokens", json={"auth": auth}, timeout=30)
        resp.raise_for_status()
        return str(resp.headers["X-Subject-Token"])

    def admin_token(self) -> str:
        """The bootstrap admin's token, scoped to the ``admin`` project (cached)."""
        if self._admin_token is None:
            self._admin_token = self.password_token(
                ADMIN_USER, ADMIN_PASSWORD, project_name=ADMIN_PROJECT
            )
        return self._admin_token

    def validate(self, token: str) -> dict[str, Any]:
        """``GET /v3/auth/tokens`` for *token* (as the admin): the token body."""
        resp = self.http.get(
            f"{self.url}/v3/auth/tokens",
            headers={"X-Auth-Token": self.admin_token(), "X-Subject-Token": token},
            timeout=30,
        )
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()["token"]
        return body

    # -- admin calls -------------------------------------------------------------
    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.http.request(
            method,
            f"{self.url}/v3{path}",
            json=body,
            headers={"X-Auth-Token": self.admin_token()},
            timeout=30,
        )
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def role_id(self, name: str) -> str:
        """The id of the role called *name* (``reader``, ``member``, ``admin``...)."""
        if not self._roles:
            for role in self._admin("GET", "/roles")["roles"]:
                self._roles[role["name"]] = role["id"]
        return self._roles[name]

    def create_domain(self, name: str | None = None) -> str:
        """A new enabled domain; returns its id."""
        name = name or "dom-" + uuid.uuid4().hex[:8]
        return str(self._admin("POST", "/domains", {"domain": {"name": name}})["domain"]["id"])

    def create_project(self, domain_id: str, name: str | None = None) -> str:
        """A new project in *domain_id*; returns its id."""
        name = name or "proj-" + uuid.uuid4().hex[:8]
        body = {"project": {"name": name, "domain_id": domain_id}}
        return str(self._admin("POST", "/projects", body)["project"]["id"])

    def create_user(self, domain_id: str, name: str, password: str) -> str:
        """A new user in *domain_id*; returns its id."""
        body = {"user": {"name": name, "domain_id": domain_id, "password": password}}
        return str(self._admin("POST", "/users", body)["user"]["id"])

    def grant(self, role: str, user_id: str, project_id: str) -> None:
        """Give *user_id* the role *role* on *project_id*."""
        self._admin("PUT", f"/projects/{project_id}/users/{user_id}/roles/{self.role_id(role)}")

    def register_identity_endpoint(self, region: str = "RegionOne") -> None:
        """Put this Keystone in its own catalog (``identity``, public/internal/admin),
        as ``keystone-manage bootstrap --bootstrap-public-url`` would; clients that
        discover Keystone through the catalog (keystonemiddleware) need it."""
        services = self._admin("GET", "/services?type=identity")["services"]
        if services:
            return
        body = {"service": {"type": "identity", "name": "keystone"}}
        service_id = self._admin("POST", "/services", body)["service"]["id"]
        self._admin("POST", "/regions", {"region": {"id": region}})
        for interface in ("public", "internal", "admin"):
            endpoint = {
                "service_id": service_id,
                "interface": interface,
                "url": f"{self.url}/v3",
                "region_id": region,
            }
            self._admin("POST", "/endpoints", {"endpoint": endpoint})

    def make_user(
        self,
        domain_id: str,
        project_id: str,
        roles: tuple[str, ...] = ("reader",),
        name: str | None = None,
    ) -> User:
        """A user of *domain_id* with *roles* on *project_id*, and a token scoped to it."""
        name = name or "user-" + uuid.uuid4().hex[:8]
        password = uuid.uuid4().hex
        user_id = self.create_user(domain_id, name, password)
        for role in roles:
            self.grant(role, user_id, project_id)
        token = self.password_token(name, password, user_domain=domain_id, project_id=project_id)
        return User(user_id, name, password, domain_id, project_id, tuple(roles), token)


# -- the child process -------------------------------------------------------------


def app_factory(global_conf: dict[str, Any], **local_conf: Any) -> Any:
    """PasteDeploy ``paste.app_factory`` for Keystone's WSGI application."""
    from keystone.wsgi.api import application

    return application


def _setup(conf: str, password: str) -> None:
    """keystone-manage's four set-up commands, in this interpreter."""
    from keystone.cmd import cli
    from keystone.common import provider_api

    owner = ["--keystone-user", str(os.getuid()), "--keystone-group", str(os.getgid())]
    commands = (
        ["db_sync"],
        ["fernet_setup", *owner],
        ["credential_setup", *owner],
        ["bootstrap", "--bootstrap-password", password],
    )
    for command in commands:
        cli.main(argv=["keystone-manage", "--config-file", conf, *command])
        cli.CONF.reset()
    # Let the WSGI application parse its own options and register its managers.
    cli.CONF.unregister_opt(cli.command_opt)
    cli.CONF.clear()
    provider_api.ProviderAPIs._clear_registry_instances()


def _serve(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("conf")
    parser.add_argument("--password", required=True)
    parser.add_argument("--paste-ini")
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args(argv)
    _setup(args.conf, args.password)
    os.environ["OS_KEYSTONE_CONFIG_FILES"] = args.conf
    sys.argv = sys.argv[:1]
    if args.trace:
        import crosstrace

        crosstrace.configure()
    app: Any
    if args.paste_ini:
        from paste.deploy import loadapp

        app = loadapp(f"config:{args.paste_ini}")
    else:
        from keystone.wsgi.api import application as app

    from crosstrace.demo.servers import serve_wsgi

    server = serve_wsgi(app, "keystone")
    print(f"READY {server.port}", flush=True)
    sys.stdin.read()  # until the parent closes it (or dies)
    server.stop()
    import crosstrace

    crosstrace.force_flush(5.0)  # whoever configured tracing (--trace, or the paste filter)
    logging.shutdown()
    # Keystone's and oslo's exit hooks only slow the test run down.
    os._exit(0)


if __name__ == "__main__":
    _serve(sys.argv[1:])
