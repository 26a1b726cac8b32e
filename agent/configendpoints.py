"""The endpoint keys of the config file: which endpoints each socket gets, and
the rules between them. Part of reading the config (agent/config.py).

This module owns the rules that relate endpoint keys to each other: a socket
has at least one endpoint, none is listed twice, no two binds clash across
ingest, upstream and http, and the alert lane is a place of its own. The
syntax of one endpoint and when two are the same place are agent/endpoints.py's;
here an endpoint's `ValueError` becomes a `ConfigError` naming the key. Pure:
no socket is opened, no name is resolved.

Promises:
- `socket_endpoints` gives the default bind (loopback) only when neither
  `bind` nor `connect` is given: `connect` alone does not open a port.
- `lane_endpoints` is optional: no endpoint, no lane.
- Every error names the key at fault, and the other key when two clash.
"""

from __future__ import annotations

from agent.configtable import ConfigError, Table, show
from agent.endpoints import Endpoint, first_bind_clash, http_endpoint, parse_endpoint
from agent.settings import HttpSettings, IngestSettings, UpstreamSettings

__all__ = [
    "check_bind_clashes",
    "check_lane_endpoints",
    "lane_endpoints",
    "socket_endpoints",
]


def socket_endpoints(
    t: Table, default_bind: tuple[str, ...], default_connect: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`bind` / `connect` of a socket's table ([ingest], [upstream]) ->
    (binds, connects): each endpoint valid, at least one in all, none twice."""
    connect = _endpoints(t, "connect", bind=False) if t.has("connect") else default_connect
    if t.has("bind"):
        bind = _endpoints(t, "bind", bind=True)
    else:
        # The default bind (loopback) applies only when no endpoint is given at
        # all: `connect` alone must not also open a listening port.
        bind = () if t.has("connect") else default_bind
    _check_socket_endpoints(t, bind, connect)
    return bind, connect


def lane_endpoints(t: Table) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`priority_bind` / `priority_connect`: optional (no endpoint, no lane),
    otherwise the same syntax and the same "listed twice" rule as bind/connect."""
    bind = _endpoints(t, "priority_bind", bind=True) if t.has("priority_bind") else ()
    connect = _endpoints(t, "priority_connect", bind=False) if t.has("priority_connect") else ()
    seen: dict[Endpoint, str] = {}
    for name, texts in (("priority_bind", bind), ("priority_connect", connect)):
        for text in texts:
            ep = parse_endpoint(text, bind=name == "priority_bind")
            if ep in seen:
                where = "listed twice" if seen[ep] == name else f"also in {t.key(seen[ep])}"
                t.fail(name, f"endpoint {show(text)} is {where}")
            seen[ep] = name
    return bind, connect


def _endpoints(table: Table, name: str, *, bind: bool) -> tuple[str, ...]:
    texts = table.string_list(name)
    for text in texts:
        try:
            parse_endpoint(text, bind=bind)
        except ValueError as e:
            table.fail(name, f"endpoint {show(text)}: {e}")
    return texts


def _check_socket_endpoints(table: Table, bind: tuple[str, ...], connect: tuple[str, ...]) -> None:
    if not bind and not connect:
        key = "connect" if table.has("connect") and not table.has("bind") else "bind"
        table.fail(
            key,
            f"no endpoint: give at least one in {table.key('bind')} or {table.key('connect')}",
        )
    seen: dict[Endpoint, str] = {}
    for name, texts in (("bind", bind), ("connect", connect)):
        for text in texts:
            ep = parse_endpoint(text, bind=name == "bind")
            if ep in seen:
                where = "listed twice" if seen[ep] == name else f"also in {table.key(seen[ep])}"
                table.fail(name, f"endpoint {show(text)} is {where}")
            seen[ep] = name


def check_bind_clashes(
    ingest: IngestSettings, upstream: UpstreamSettings, http: HttpSettings
) -> None:
    binds: list[tuple[str, Endpoint]] = []
    for key, texts in (
        ("ingest.bind", ingest.bind),
        ("upstream.bind", upstream.bind),
        ("ingest.priority_bind", ingest.priority_bind),
    ):
        binds += [(key, parse_endpoint(text, bind=True)) for text in texts]
    binds.append(("http.bind", http_endpoint(http.host, http.port)))
    clash = first_bind_clash(binds)
    if clash is not None:
        ep, earlier = clash.endpoint, clash.earlier
        what = "the same path" if ep.scheme == "ipc" else f"port {ep.port}"
        raise ConfigError(
            clash.key,
            f"{show(ep.text)} clashes with {show(earlier.text)} in {clash.earlier_key} "
            f"({what}): the second bind would fail",
        )


def check_lane_endpoints(ingest: IngestSettings, upstream: UpstreamSettings) -> None:
    """A lane endpoint must be a place of its own: the same endpoint as any
    other ZeroMQ endpoint of the agent (bind or connect) would make the agent
    talk to itself, or share a collector's PUSH round-robin between the lane
    and the bulk socket, which makes the lane meaningless. Bind clashes under a
    wildcard are `check_bind_clashes`'s.
    Protected mode covers the lane's endpoints under [ingest]'s CURVE and
    insecure_plaintext (agent/protected.py)."""
    others: dict[Endpoint, str] = {}
    for key, texts, bind in (
        ("ingest.bind", ingest.bind, True),
        ("ingest.connect", ingest.connect, False),
        ("upstream.bind", upstream.bind, True),
        ("upstream.connect", upstream.connect, False),
    ):
        for text in texts:
            others.setdefault(parse_endpoint(text, bind=bind), key)
    for key, texts, bind in (
        ("ingest.priority_bind", ingest.priority_bind, True),
        ("ingest.priority_connect", ingest.priority_connect, False),
    ):
        for text in texts:
            ep = parse_endpoint(text, bind=bind)
            if ep in others:
                raise ConfigError(
                    key,
                    f"{show(text)} is also in {others[ep]}: the alert lane needs an "
                    "endpoint of its own",
                )
