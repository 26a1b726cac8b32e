"""Protected mode: which ZeroMQ endpoints may carry plaintext (INTERFACE.md).

This module owns one rule and its wording: an endpoint that is neither
loopback nor `ipc://` needs CURVE on its socket (`[ingest.curve]`,
`[upstream.curve]`), or `insecure_plaintext = true` in that socket's table;
otherwise the config is refused (config.py raises the ConfigError, at the end
of parsing, so `check-config` and `run` both exit 2 naming the key and the
endpoint). Pure: no name is resolved, no interface is looked up.

Why: without CURVE anyone who reaches a ZeroMQ port can push events in or
subscribe to every event, and a raw ZMTP peer can grow the agent's memory
without bound (FACTS.md: 1.8 GB in 5 s past RCVHWM and MAXMSGSIZE). The
packaged config used to bind 0.0.0.0 in plaintext without saying so (issue
13); now that exposure has to be written down.

What counts as local (a decision the contract leaves open, README "Security"):
- `ipc://` paths and `@abstract` names: only processes on this host reach them
  (an abstract name has no file permissions: any local process can connect).
- tcp to an IPv4 address in 127.0.0.0/8, to ::1, or to an IPv4-mapped
  loopback address (::ffff:127.0.0.1, which libzmq binds as loopback).
- tcp to `localhost` (RFC 6761 section 6.3: resolvers answer it with
  loopback; glibc reads /etc/hosts, nss-myhostname synthesises it).
- bind only: `lo`, Linux's loopback interface (libzmq binds an interface
  name to its first address: 127.0.0.1). In `connect` it would be a host name.
- Nothing else: `*`, 0.0.0.0 and :: listen everywhere; any other address, host
  name or interface name may be reachable from another host. A name that
  resolves to loopback is not trusted to keep doing so (DNS and /etc/hosts
  change after check-config): write the address.
- Connect endpoints count as much as binds: a head-end reached over the
  network in plaintext is the same exposure, seen from the other side.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

from agent.endpoints import Endpoint, parse_endpoint
from agent.settings import CurveSettings, IngestSettings, UpstreamSettings

__all__ = ["Exposure", "exposures", "first_exposure", "is_local", "plaintext_warnings"]

# Host names that mean this host whatever DNS says (RFC 6761).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
# Linux's loopback device: only meaningful where libzmq takes interface names (bind).
_LOOPBACK_INTERFACE = "lo"


def is_local(ep: Endpoint, *, bind: bool) -> bool:
    """Only processes on this host can reach `ep` (see the module docstring)."""
    if ep.scheme == "ipc":
        return True
    host = ep.host
    if host in _LOOPBACK_NAMES or (bind and host == _LOOPBACK_INTERFACE):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a host or interface name, or "*"
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@dataclasses.dataclass(frozen=True)
class Exposure:
    """A plaintext endpoint reachable from other hosts."""

    socket: str  # "ingest" | "upstream": the table that holds insecure_plaintext
    key: str  # the config key that lists it ("ingest.bind")
    text: str  # the endpoint as written
    bind: bool

    def problem(self) -> str:
        """The ConfigError text (config.py prefixes the key)."""
        return (
            f'endpoint "{self.text}" {self._what()} (protected mode): turn CURVE on with '
            f'[{self.socket}.curve] (README "Security"), use a loopback address or '
            f"ipc://, or accept the exposure with {self.socket}.insecure_plaintext = true"
        )

    def _what(self) -> str:
        if self.socket == "ingest":
            if self.bind:
                return (
                    "listens beyond this host in plaintext: anyone who reaches the port "
                    "can push events in, and a raw ZeroMQ peer can exhaust the agent's memory"
                )
            return (
                "is reached over the network in plaintext: events are taken from a peer "
                "that is not authenticated, and anyone on the path can read or alter them"
            )
        if self.bind:
            return (
                "listens beyond this host in plaintext: anyone who reaches the port can "
                "subscribe and read every event"
            )
        return (
            "is reached over the network in plaintext: every event goes, readable by "
            "anyone on the path, to a peer that is not authenticated"
        )


def _socket_endpoints(
    ingest: IngestSettings, upstream: UpstreamSettings
) -> Iterator[tuple[str, CurveSettings, bool, tuple[tuple[str, tuple[str, ...]], ...]]]:
    """(socket, its CURVE settings, insecure_plaintext, ((config key, endpoints), ...)).
    Every endpoint key of a socket is listed here: a new one (the alert lane's
    `ingest.priority_bind` / `priority_connect`) joins its socket's tuple."""
    yield (
        "ingest",
        ingest.curve,
        ingest.insecure_plaintext,
        (
            ("ingest.bind", ingest.bind),
            ("ingest.connect", ingest.connect),
            ("ingest.priority_bind", ingest.priority_bind),
            ("ingest.priority_connect", ingest.priority_connect),
        ),
    )
    yield (
        "upstream",
        upstream.curve,
        upstream.insecure_plaintext,
        (("upstream.bind", upstream.bind), ("upstream.connect", upstream.connect)),
    )


def exposures(
    ingest: IngestSettings, upstream: UpstreamSettings, *, allowed: bool
) -> Iterator[Exposure]:
    """Every plaintext endpoint reachable from other hosts, in config order:
    those the config does not allow (`allowed=False`: the refusals) or those
    it allows with insecure_plaintext = true (`allowed=True`: the warnings).
    Endpoints are valid here (config.py parsed them first)."""
    for socket, curve, insecure, keys in _socket_endpoints(ingest, upstream):
        if curve.secret_key_file is not None or insecure != allowed:
            continue
        for key, texts in keys:
            bind = key.endswith("bind")
            for text in texts:
                if not is_local(parse_endpoint(text, bind=bind), bind=bind):
                    yield Exposure(socket, key, text, bind)


def first_exposure(ingest: IngestSettings, upstream: UpstreamSettings) -> Exposure | None:
    """The first endpoint protected mode refuses, or None."""
    return next(exposures(ingest, upstream, allowed=False), None)


def plaintext_warnings(ingest: IngestSettings, upstream: UpstreamSettings) -> list[str]:
    """What `insecure_plaintext = true` lets through (one line per socket,
    naming its exposed endpoints), and an insecure_plaintext = true that CURVE
    overrides: for check-config's stderr and run's WARNING log."""
    exposed: dict[str, list[str]] = {}
    for e in exposures(ingest, upstream, allowed=True):
        exposed.setdefault(e.socket, []).append(e.text)
    warnings = [
        f"{socket}.insecure_plaintext = true: {', '.join(texts)} carr"
        f"{'ies' if len(texts) == 1 else 'y'} events in plaintext, without authentication, "
        f'to and from other hosts; turn CURVE on with [{socket}.curve] (README "Security")'
        for socket, texts in exposed.items()
    ]
    for socket, curve, insecure, _ in _socket_endpoints(ingest, upstream):
        if insecure and curve.secret_key_file is not None:
            warnings.append(
                f"{socket}.insecure_plaintext = true is ignored: [{socket}.curve] is set, so "
                "every peer needs CURVE; remove the line"
            )
    return warnings
