"""Service and host names from where a log file came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosstrace.server.logs.names import origin_of


@pytest.mark.parametrize(
    ("path", "service", "host"),
    [
        ("ctl1/var/log/neutron/server.log", "neutron-server", "ctl1"),
        ("cmp2/var/log/nova/nova-compute.log", "nova-compute", "cmp2"),
        ("cmp2/var/log/nova/nova-compute.log.1.gz", "nova-compute", "cmp2"),
        ("sos/ctl1/var/log/cinder/volume.log", "cinder-volume", "ctl1"),
        ("ctl1/var/log/kolla/nova/nova-api.log", "nova-api", "ctl1"),
        ("ctl1/var/log/apache2/keystone.log", "keystone", "ctl1"),
        ("ctl1/var/log/messages", "messages", "ctl1"),
        ("logs/screen-c-api.txt", "c-api", None),
        ("neutron/server.log", "server", None),
    ],
)
def test_origin_from_a_collected_tree(
    tmp_path: Path, path: str, service: str, host: str | None
) -> None:
    """`<host>/var/log/<project>/<file>` names host and service; other paths the file only."""
    origin = origin_of(tmp_path / path)
    assert (origin.service, origin.host) == (service, host)


def test_origin_of_the_machines_own_var_log() -> None:
    """/var/log at the root names no host: the files are this machine's."""
    origin = origin_of("/var/log/nova/nova-conductor.log")
    assert (origin.service, origin.host) == ("nova-conductor", None)
    assert origin.source == "nova-conductor.log"


def test_origin_of_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path relative to the working directory is named as its absolute path would be."""
    (tmp_path / "cmp1" / "var" / "log" / "nova").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cmp1" / "var" / "log" / "nova")
    origin = origin_of("nova-compute.log")
    assert (origin.service, origin.host) == ("nova-compute", "cmp1")
