"""Realistic, seeded trace load for the store and ingest benchmarks.

Traces look like an OpenStack cloud's: a request enters one of the API services
and fans out over HTTP and RPC to ~8 services (CLIENT span in the caller, SERVER
or CONSUMER span in the callee, INTERNAL and DB spans under them); 5-50 spans per
trace; 3 % of traces fail (an error in a leaf, propagated to its ancestors, with
an exception event); every span has 8-12 attributes (openstack.* ids, http.*,
db.*, rpc.*, ...). The same spans come as ``SpanRecord`` lists or as OTLP
protobuf ``ExportTraceServiceRequest`` bytes, batched per service the way each
service's exporter would send them.

Two profiles:

``default``
    the load above, over 8 services, in per-service batches.
``entropy``
    more entropy per span, as a busy OpenStack cloud gives: 10 services (placement
    and barbican join), and every span also carries ``url.path`` with the UUID of
    the resource its request acts on (as OpenStack URLs do: one per trace) and 0-4
    integer attributes with random values. The request's global id and the
    service's own local id are on every span in both profiles. Batches of 512
    spans cross services (a collector or agent forwarding for several services)
    and hold the spans of many requests in flight at once, as real exporters
    send them: the spans of ``INFLIGHT_TRACES`` (64) concurrent traces are
    interleaved at random, each trace's spans in the order they end, so a trace
    is spread over ~4 batches in groups of ~7 spans.

    Why 64: the issue's load took ~184 B/span in SQLite on the code before the
    denser storage (commit 669959b); this profile without interleaving took 145.5
    there (a trace's spans together in its batches). With 32 / 48 / 64 / 96
    traces in flight the same code took 178 / 183 / 191 / 206 B/span at 100k
    spans, and 64 took 182.2 at 1M spans (96: 199.4).

    python benchmarks/loadgen.py --spans 10000   # prints a summary
    python benchmarks/loadgen.py --spans 10000 --profile entropy
"""

from __future__ import annotations

import argparse
import random
import uuid
from collections.abc import Iterator
from typing import Any

from crosstrace.server.model import STATUS_ERROR, STATUS_OK, STATUS_UNSET, SpanRecord

PROFILES = ("default", "entropy")

SERVICES = [
    "nova-api",
    "nova-conductor",
    "nova-scheduler",
    "nova-compute",
    "glance-api",
    "neutron-server",
    "cinder-api",
    "keystone",
]
ENTRY = ["nova-api", "glance-api", "neutron-server", "cinder-api"]
CALLS = {
    "nova-api": ["keystone", "nova-conductor", "glance-api", "neutron-server", "cinder-api"],
    "nova-conductor": ["nova-scheduler", "nova-compute"],
    "nova-scheduler": [],
    "nova-compute": ["glance-api", "neutron-server", "cinder-api"],
    "glance-api": ["keystone"],
    "neutron-server": ["keystone"],
    "cinder-api": ["keystone"],
    "keystone": [],
}
#: The entropy profile's two more services and who calls them.
ENTROPY_SERVICES = [*SERVICES, "placement-api", "barbican-api"]
ENTROPY_CALLS = {
    **CALLS,
    "nova-scheduler": ["placement-api"],
    "nova-compute": [*CALLS["nova-compute"], "placement-api"],
    "cinder-api": ["keystone", "barbican-api"],
    "placement-api": ["keystone"],
    "barbican-api": ["keystone"],
}
RPC = {"nova-conductor", "nova-scheduler", "nova-compute"}
ROUTES = {
    "nova-api": [
        "/v2.1/servers",
        "/v2.1/servers/{id}",
        "/v2.1/servers/{id}/action",
        "/v2.1/flavors",
    ],
    "glance-api": ["/v2/images", "/v2/images/{id}", "/v2/images/{id}/file"],
    "neutron-server": ["/v2.0/ports", "/v2.0/networks", "/v2.0/ports/{id}"],
    "cinder-api": ["/v3/{project}/volumes", "/v3/{project}/volumes/{id}"],
    "keystone": ["/v3/auth/tokens"],
    "placement-api": ["/allocations/{id}", "/resource_providers/{id}/inventories"],
    "barbican-api": ["/v1/secrets/{id}", "/v1/secrets/{id}/payload"],
}
#: Entropy profile: where each service's ``url.path`` puts the request's resource
#: UUID (RPC services too: their spans carry the path of the API request).
ENTROPY_PATHS = {
    "nova-api": "/v2.1/servers/{id}/action",
    "nova-conductor": "/v2.1/servers/{id}",
    "nova-scheduler": "/v2.1/servers/{id}",
    "nova-compute": "/v2.1/servers/{id}",
    "glance-api": "/v2/images/{id}",
    "neutron-server": "/v2.0/ports/{id}",
    "cinder-api": "/v3/{project}/volumes/{id}",
    "keystone": "/v3/auth/tokens/{id}",
    "placement-api": "/allocations/{id}",
    "barbican-api": "/v1/secrets/{id}",
}
#: Entropy profile: keys of the 0-4 random integer attributes on each span.
RANDOM_INT_KEYS = [
    "app.attempt.bytes",
    "app.items.returned",
    "app.queue.depth",
    "app.shard.key",
    "app.elapsed_us",
    "app.rows.scanned",
]
RPC_METHODS = {
    "nova-conductor": ["build_instances", "schedule_and_build_instances"],
    "nova-scheduler": ["select_destinations"],
    "nova-compute": ["build_and_run_instance", "terminate_instance", "reboot_instance"],
}
TABLES = ["instances", "ports", "volumes", "images", "quotas", "block_device_mapping"]
#: Entropy profile: requests in flight at once, whose spans are interleaved in
#: the batches (see the module docstring for how 64 was chosen).
INFLIGHT_TRACES = 64
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 1, 2, 3, 4, 5
MS = 10**6


class _Trace:
    def __init__(
        self,
        rng: random.Random,
        start_ns: int,
        projects: list[str],
        users: list[str],
        entropy: bool = False,
    ):
        self.rng = rng
        self.entropy = entropy
        self.calls = ENTROPY_CALLS if entropy else CALLS
        self.trace_id = rng.randbytes(16)
        self.spans: list[SpanRecord] = []
        self.global_id = "req-" + str(uuid.UUID(bytes=rng.randbytes(16), version=4))
        self.project = rng.choice(projects)
        self.user = rng.choice(users)
        self.local_ids: dict[str, str] = {}
        self.start_ns = start_ns
        self.resource_id = str(uuid.UUID(bytes=rng.randbytes(16), version=4)) if entropy else ""

    def local_id(self, service: str) -> str:
        rid = self.local_ids.get(service)
        if rid is None:
            rid = self.local_ids[service] = "req-" + str(
                uuid.UUID(bytes=self.rng.randbytes(16), version=4)
            )
        return rid

    def base_attrs(self, service: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "openstack.request_id": self.local_id(service),
            "openstack.global_request_id": self.global_id,
            "openstack.project_id": self.project,
            "openstack.domain_id": "default",
            "openstack.user_id": self.user,
        }
        if self.entropy:
            attrs["url.path"] = (
                ENTROPY_PATHS[service]
                .replace("{id}", self.resource_id)
                .replace("{project}", self.project)
            )
            rng = self.rng
            for key in rng.sample(RANDOM_INT_KEYS, rng.randint(0, 4)):
                attrs[key] = rng.randrange(2**31)
        return attrs


RESOURCES = {
    s: {"service.name": s, "host.name": f"ctl-{i % 3}", "process.pid": 1000 + i}
    for i, s in enumerate(ENTROPY_SERVICES)
}


def _span(
    t: _Trace,
    service: str,
    name: str,
    kind: int,
    parent: bytes | None,
    start: int,
    dur: int,
    attrs: dict[str, Any],
) -> SpanRecord:
    s = SpanRecord(
        trace_id=t.trace_id,
        span_id=t.rng.randbytes(8),
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=start + dur,
        service=service,
        status_code=STATUS_UNSET,
        attributes=attrs,
        resource=RESOURCES[service],
        scope="crosstrace",
    )
    t.spans.append(s)
    return s


def _server(t: _Trace, service: str, parent: bytes | None, start: int, budget: int) -> SpanRecord:
    """A request handled by *service*, with DB work and calls to other services."""
    rng = t.rng
    dur = rng.randint(5, 200) * MS
    attrs = t.base_attrs(service)
    if service in RPC:
        method = rng.choice(RPC_METHODS[service])
        name, kind = method, KIND_CONSUMER if parent else KIND_SERVER
        attrs.update(
            {
                "rpc.system": "oslo_messaging",
                "rpc.service": service.replace("-", "_"),
                "rpc.method": method,
                "messaging.system": "rabbitmq",
                "messaging.destination.name": service.split("-")[1],
                "server.address": f"{service}.ctl",
            }
        )
    else:
        route = rng.choice(ROUTES[service])
        method = "GET" if rng.random() < 0.6 else rng.choice(["POST", "PUT", "DELETE"])
        name, kind = f"{method} {route}", KIND_SERVER
        attrs["http.request.method"] = method
        attrs["http.route"] = route
        if not t.entropy:  # (the entropy profile's path is among the base attributes)
            attrs["url.path"] = route.replace(
                "{id}", str(uuid.UUID(bytes=rng.randbytes(16)))
            ).replace("{project}", t.project)
        attrs.update(
            {
                "http.response.status_code": 200,
                "server.address": f"{service}.ctl",
                "user_agent.original": "python-novaclient/18.4.0 keystoneauth1/5.6.0",
            }
        )
    span = _span(t, service, name, kind, parent, start, dur, attrs)
    left = budget - 1
    at = start + MS
    while left > 0:
        callees = t.calls[service]
        if callees and rng.random() < 0.45 and left >= 2:
            callee = rng.choice(callees)
            sub = min(left - 1, rng.randint(1, max(1, left // 2)))
            cattrs = t.base_attrs(service)
            if callee in RPC:
                cattrs.update(
                    {
                        "rpc.system": "oslo_messaging",
                        "rpc.method": rng.choice(RPC_METHODS[callee]),
                        "messaging.system": "rabbitmq",
                        "messaging.destination.name": callee.split("-")[1],
                        "server.address": "rabbit.ctl",
                    }
                )
                ckind, cname = KIND_PRODUCER, f"{callee.split('-')[1]} call"
            else:
                cattrs.update(
                    {
                        "http.request.method": "GET",
                        "url.full": f"http://{callee}.ctl{rng.choice(ROUTES[callee])}",
                        "server.address": f"{callee}.ctl",
                        "http.response.status_code": 200,
                        "peer.service": callee,
                    }
                )
                ckind, cname = KIND_CLIENT, f"GET {callee}"
            cdur = rng.randint(2, 80) * MS
            client = _span(t, service, cname, ckind, span.span_id, at, cdur, cattrs)
            _server(t, callee, client.span_id, at + MS // 2, sub)
            left -= sub + 1
            at += cdur
        else:
            table = rng.choice(TABLES)
            op = rng.choice(["SELECT", "UPDATE", "INSERT"])
            dattrs = t.base_attrs(service)
            dattrs.update(
                {
                    "db.system": "mysql",
                    "db.namespace": service.split("-", maxsplit=1)[0],
                    "db.operation.name": op,
                    "db.collection.name": table,
                    "db.query.text": f"{op} {table}.id, {table}.uuid FROM {table} WHERE "
                    f"{table}.project_id = %(project_id_1)s AND {table}.deleted = %(deleted_1)s",
                    "server.address": "db.ctl",
                }
            )
            for optional in rng.sample(["db.namespace", "db.collection.name"], rng.randint(0, 2)):
                del dattrs[optional]
            ddur = rng.randint(1, 8) * MS
            _span(t, service, f"{op} {table}", KIND_CLIENT, span.span_id, at, ddur, dattrs)
            left -= 1
            at += ddur
    span.end_ns = max(span.end_ns, at + MS)
    return span


def _fail(t: _Trace) -> None:
    """Make a leaf fail and the error climb to the root."""
    rng = t.rng
    by_id = {s.span_id: s for s in t.spans}
    leaf = rng.choice([s for s in t.spans if s.parent_span_id is not None] or t.spans)
    leaf.events = [
        {
            "time_ns": leaf.end_ns - 1000,
            "name": "exception",
            "attributes": {
                "exception.type": "oslo_db.exception.DBConnectionError",
                "exception.message": "(pymysql.err.OperationalError) (2013, 'Lost connection')",
                "exception.stacktrace": "Traceback (most recent call last):\n"
                + '  File "/usr/lib/python3/dist-packages/oslo_db/api.py", line 142, in wrapper\n'
                * 6,
            },
        }
    ]
    node: SpanRecord | None = leaf
    while node is not None:
        node.status_code = STATUS_ERROR
        node.status_message = "DBConnectionError"
        if "http.response.status_code" in node.attributes:
            node.attributes["http.response.status_code"] = 500
            node.attributes["error.type"] = "500"
        node = by_id.get(node.parent_span_id) if node.parent_span_id else None


def generate(
    n_spans: int,
    seed: int = 1,
    start_ns: int | None = None,
    hours: float = 24.0,
    profile: str = "default",
) -> Iterator[list[SpanRecord]]:
    """Yield traces (lists of spans) of *profile* until *n_spans* spans were
    produced, their start times spread evenly over *hours* ending at *start_ns*
    (default: now)."""
    import time

    if profile not in PROFILES:
        raise ValueError(f"unknown load profile {profile!r} (one of {', '.join(PROFILES)})")
    entropy = profile == "entropy"
    rng = random.Random(seed)
    end = start_ns if start_ns is not None else time.time_ns()
    avg = 27.5
    n_traces = max(1, int(n_spans / avg))
    step = int(hours * 3600 * 10**9 / n_traces)
    projects = [uuid.UUID(bytes=rng.randbytes(16)).hex for _ in range(50)]
    users = [uuid.UUID(bytes=rng.randbytes(16)).hex for _ in range(200)]
    produced = 0
    i = 0
    while produced < n_spans:
        t = _Trace(rng, end - (n_traces - i) * step, projects, users, entropy)
        size = min(rng.randint(5, 50), n_spans - produced)
        _server(t, rng.choice(ENTRY), None, t.start_ns, size)
        if rng.random() < 0.03:
            _fail(t)
        else:
            for s in t.spans:
                if s.kind == KIND_SERVER and s.parent_span_id is None:
                    s.status_code = STATUS_OK
        produced += len(t.spans)
        i += 1
        yield t.spans


def service_batches(
    traces: Iterator[list[SpanRecord]], batch_size: int = 512
) -> Iterator[list[SpanRecord]]:
    """Regroup spans into per-service batches, as each service's exporter sends them."""
    buffers: dict[str, list[SpanRecord]] = {}
    for spans in traces:
        for s in spans:
            buf = buffers.setdefault(s.service, [])
            buf.append(s)
            if len(buf) >= batch_size:
                yield buf
                buffers[s.service] = []
    for buf in buffers.values():
        if buf:
            yield buf


def _end(s: SpanRecord) -> int:
    return s.end_ns


def interleaved(
    traces: Iterator[list[SpanRecord]], inflight: int = INFLIGHT_TRACES, seed: int = 1
) -> Iterator[SpanRecord]:
    """The spans of *traces* as exporters handling *inflight* requests at once
    send them: each next span comes from one of the traces in flight, picked at
    random (seeded); a trace's spans come in the order they end (a span is
    exported when it ends, so children before their parents), and a trace that
    has sent its last span makes room for the next one."""
    rng = random.Random(seed)
    active: list[Iterator[SpanRecord]] = []
    source = iter(traces)
    while True:
        while len(active) < inflight:
            spans = next(source, None)
            if spans is None:
                break
            active.append(iter(sorted(spans, key=_end)))
        if not active:
            return
        k = rng.randrange(len(active))
        span = next(active[k], None)
        if span is None:
            active[k] = active[-1]
            active.pop()
            continue
        yield span


def mixed_batches(
    traces: Iterator[list[SpanRecord]],
    batch_size: int = 512,
    inflight: int = INFLIGHT_TRACES,
) -> Iterator[list[SpanRecord]]:
    """Cut the spans of *inflight* concurrent traces (:func:`interleaved`) into
    batches of *batch_size* across services (as a collector forwarding for many
    services sends them)."""
    buf: list[SpanRecord] = []
    for s in interleaved(traces, inflight):
        buf.append(s)
        if len(buf) >= batch_size:
            yield buf
            buf = []
    if buf:
        yield buf


def batches(
    traces: Iterator[list[SpanRecord]], batch_size: int = 512, profile: str = "default"
) -> Iterator[list[SpanRecord]]:
    """The batches *profile* sends: per service (default) or mixed (entropy)."""
    if profile == "entropy":
        return mixed_batches(traces, batch_size)
    return service_batches(traces, batch_size)


def services(profile: str = "default") -> list[str]:
    """The services of *profile*'s load."""
    return ENTROPY_SERVICES if profile == "entropy" else SERVICES


def _any_value(v: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    return AnyValue(string_value=str(v))


def _kvs(attrs: dict[str, Any]) -> list[Any]:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    return [KeyValue(key=k, value=_any_value(v)) for k, v in attrs.items()]


def to_otlp(spans: list[SpanRecord]) -> bytes:
    """One ``ExportTraceServiceRequest`` (protobuf bytes) holding *spans*."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    by_service: dict[str, list[SpanRecord]] = {}
    for s in spans:
        by_service.setdefault(s.service, []).append(s)
    req = ExportTraceServiceRequest()
    for service, group in by_service.items():
        rs = ResourceSpans(
            resource=Resource(attributes=_kvs(RESOURCES.get(service, group[0].resource)))
        )
        ss = ScopeSpans(scope=InstrumentationScope(name=group[0].scope))
        for s in group:
            ss.spans.append(
                Span(
                    trace_id=s.trace_id,
                    span_id=s.span_id,
                    parent_span_id=s.parent_span_id or b"",
                    name=s.name,
                    kind=s.kind,  # type: ignore[arg-type]
                    start_time_unix_nano=s.start_ns,
                    end_time_unix_nano=s.end_ns,
                    attributes=_kvs(s.attributes),
                    events=[
                        Span.Event(
                            time_unix_nano=e["time_ns"],
                            name=e["name"],
                            attributes=_kvs(e.get("attributes", {})),
                        )
                        for e in s.events
                    ],
                    status=Status(code=s.status_code, message=s.status_message),  # type: ignore[arg-type]
                )
            )
        rs.scope_spans.append(ss)
        req.resource_spans.append(rs)
    return req.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", choices=PROFILES, default="default")
    args = ap.parse_args()
    traces = list(generate(args.spans, args.seed, profile=args.profile))
    spans = [s for t in traces for s in t]
    errors = sum(any(s.status_code == STATUS_ERROR for s in t) for t in traces)
    n_attrs = [len(s.attributes) for s in spans]
    services = {s.service for s in spans}
    sent = list(batches(iter(traces), profile=args.profile))
    otlp = sum(len(to_otlp(b)) for b in sent)
    print(
        f"{len(spans)} spans, {len(traces)} traces ({errors / len(traces):.1%} errors),"
        f" {len(services)} services, attributes per span {min(n_attrs)}-{max(n_attrs)}"
        f" (mean {sum(n_attrs) / len(n_attrs):.1f}), {len(sent)} batches,"
        f" OTLP protobuf {otlp / len(spans):.0f} B/span"
    )


if __name__ == "__main__":
    main()
