"""Service and host names of a log file, from where the file came from.

Log collectors (sosreport, kolla's log collection, ``rsync`` of ``/var/log`` from
each node) keep each node's files under ``<host>/var/log/<project>/<file>``. So:

* the **host** is the directory holding ``var/log`` (none when ``var/log`` is at the
  file system's root: the files of the machine itself);
* the **service** is the file's name without rotation suffixes and extensions
  (:func:`derive_service_name`), prefixed with the project directory it sits in
  under ``var/log`` unless the name already starts with it: ``neutron/server.log``
  is ``neutron-server``, ``cinder/volume.log`` is ``cinder-volume``,
  ``nova/nova-compute.log`` stays ``nova-compute``. Web servers' directories
  (``apache2``, ``httpd``, ``nginx``) hold other services' logs and add no prefix.

Outside a ``var/log`` tree only the file name counts. ``--host`` and ``--service``
override both.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FileOrigin", "derive_service_name", "origin_of", "source_name"]

_ROTATION_SUFFIX_RE = re.compile(r"(?:[.-]\d+|[.-]\d{4}-\d\d-\d\d(?:-\d+)?)$")
_NAME_EXTENSIONS = (".gz", ".txt", ".log", ".json", ".jsonl", ".service")
_NAME_PREFIXES = ("screen-", "devstack@")
#: Directories under ``var/log`` that hold other services' logs: no prefix.
_SHARED_LOG_DIRS = frozenset({"apache2", "httpd", "nginx", "containers", "kolla", "journal"})


def source_name(path: str | os.PathLike[str]) -> str:
    """The name a file's records are keyed by: its base name without ``.gz``, so the
    compressed copy of a rotated file matches the plain one."""
    name = Path(path).name
    return name[:-3] if name.endswith(".gz") and len(name) > 3 else name


def derive_service_name(file_name: str) -> str:
    """Guess the service from a log file's name.

    ``screen-c-api.txt`` -> ``c-api``, ``devstack@c-vol.service.log.txt`` ->
    ``c-vol``, ``nova-api.log.2.gz`` -> ``nova-api``,
    ``screen-c-api.2013-09-27-181531.log`` -> ``c-api``.
    """
    name = file_name.rsplit("/", 1)[-1]
    changed = True
    while changed:
        changed = False
        for ext in _NAME_EXTENSIONS:
            if name.endswith(ext) and len(name) > len(ext):
                name = name[: -len(ext)]
                changed = True
        stripped = _ROTATION_SUFFIX_RE.sub("", name)
        if stripped and stripped != name:
            name = stripped
            changed = True
    for prefix in _NAME_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
    return name or file_name


@dataclass(frozen=True, slots=True)
class FileOrigin:
    """Where a log file came from: the name its records are keyed by, its service
    and its host (``None`` when the path does not say)."""

    source: str
    service: str
    host: str | None


def origin_of(path: str | os.PathLike[str]) -> FileOrigin:
    """Service and host of the file at *path* (see the module docstring)."""
    source = source_name(path)
    service = derive_service_name(source)
    parts = Path(os.path.abspath(path)).parts
    var_log = _last_var_log(parts)
    if var_log is None:
        return FileOrigin(source, service, None)
    host = parts[var_log - 1] if var_log >= 2 else None  # parts[0] is the root
    between = parts[var_log + 2 : -1]
    if between:
        project = between[-1]
        if project not in _SHARED_LOG_DIRS and not _starts_with(service, project):
            service = f"{project}-{service}"
    return FileOrigin(source, service, host or None)


def _last_var_log(parts: tuple[str, ...]) -> int | None:
    """Index of ``var`` in the last ``var/log`` pair of directories, else ``None``."""
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] == "var" and parts[i + 1] == "log":
            return i
    return None


def _starts_with(service: str, project: str) -> bool:
    return service == project or service.startswith((project + "-", project + "_"))
