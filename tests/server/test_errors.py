"""The backend's errors share one root, :class:`crosstrace.server.errors.ServerError`,
and each carries the HTTP status an answer about it has."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import crosstrace.server
from crosstrace.server.errors import BadRequest, PayloadTooLarge, ServerError, Unavailable

#: Exception classes of the backend outside the root, each with why or whose.
#: Control flow only: an error the backend answers derives from ServerError.
OUTSIDE_THE_ROOT = {
    # Control flow: the client went away, so no answer is sent at all.
    "crosstrace.server.ingest.http._Disconnected",
    # Control flow: the web UI answers it with a redirect to /login, not an error.
    "crosstrace.server.web.session.LoginRequired",
    # Control flow: ingest redacts the request and scans it again.
    "crosstrace.server.batch.scan.SecretKeySeen",
}


def _backend_exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    package = crosstrace.server
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


CLASSES = _backend_exception_classes()


@pytest.mark.parametrize("name", sorted(CLASSES.keys() - OUTSIDE_THE_ROOT))
def test_backend_error_derives_from_the_root(name: str) -> None:
    """Every exception class the backend defines derives from ServerError."""
    cls = CLASSES[name]
    assert issubclass(cls, ServerError), f"{name} does not derive from ServerError"
    assert 400 <= cls.status_code <= 599


def test_outside_list_names_real_classes() -> None:
    """Every entry of the list still names a class (remove it once it is gone)."""
    assert sorted(OUTSIDE_THE_ROOT - CLASSES.keys()) == []


def test_statuses_of_the_kinds() -> None:
    """Each kind of error answers with its own status."""
    assert (ServerError.status_code, BadRequest.status_code) == (500, 400)
    assert (PayloadTooLarge.status_code, Unavailable.status_code) == (413, 503)


def test_existing_errors_keep_their_builtin_kinds() -> None:
    """Code that catches ValueError or RuntimeError still catches them."""
    from crosstrace.server.app import StartupError
    from crosstrace.server.batch.values import BatchDecodeError, Rejected
    from crosstrace.server.ingest.decode import OtlpDecodeError
    from crosstrace.server.settings import SettingsError
    from crosstrace.server.store.migrations import SchemaVersionError

    assert issubclass(OtlpDecodeError, ValueError)
    assert OtlpDecodeError.status_code == 400
    assert issubclass(BatchDecodeError, ValueError)
    assert issubclass(Rejected, BadRequest)
    assert issubclass(SettingsError, ValueError)
    assert SettingsError.status_code == 400
    assert issubclass(StartupError, RuntimeError)
    assert issubclass(SchemaVersionError, RuntimeError)
    assert SchemaVersionError.status_code == 503
