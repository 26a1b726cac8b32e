"""Endpoint text -> a canonical `Endpoint`, and which binds would clash.

This module owns the syntax of the endpoints an operator writes in the config
file (`[ingest] bind/connect`, `[upstream] bind/connect`, `[http] bind`) and the
rules for when two of them are the same, or cannot both be bound. config.py
owns which keys hold endpoints and the wording of the `ConfigError` that names
the key; here a problem is a `ValueError` whose message is the problem alone.
Pure: no socket is opened and no name is resolved.

Promises:
- ZeroMQ endpoints are `tcp://host:port` or `ipc:///absolute/path` (or
  `ipc://@name`, the Linux abstract namespace). An ipc path is passed to
  ZeroMQ as written and must be absolute: a relative socket path would depend
  on the working directory, which is `/` under systemd.
- `parse_endpoint` returns an `Endpoint` whose equality is "the same place":
  host names lower-cased, IPv6 addresses compressed, `tcp://H:01` equal to
  `tcp://h:1`. The text as written rides along for messages only.
- `binds_clash` says only what is sure (no false alarms): the same tcp port on
  the same address or under a wildcard of its family, the same ipc path. Names
  are not resolved, so `localhost` against `127.0.0.1` is not detected.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable

__all__ = [
    "BindClash",
    "Endpoint",
    "binds_clash",
    "canonical_host",
    "first_bind_clash",
    "http_endpoint",
    "parse_endpoint",
    "parse_http_bind",
    "split_port",
]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """An endpoint reduced to what decides equality and bind clashes."""

    scheme: str  # "tcp" | "ipc"
    host: str  # canonical: lower-case name, compressed IPv6 without brackets, "*"
    port: int  # 0 for ipc
    path: str  # "" for tcp
    text: str = dataclasses.field(compare=False)  # as written, for messages only


_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_PORT = re.compile(r"[0-9]{1,5}")
# sockaddr_un.sun_path is 108 bytes on Linux including the terminating NUL;
# libzmq refuses longer paths with ENAMETOOLONG at bind/connect time.
IPC_PATH_MAX = 107
# A host name is at most 253 characters (RFC 1035).
_HOST_NAME_MAX = 253


def canonical_host(host: str, *, allow_star: bool) -> str:
    """Canonical form of the host part of `host:port`, or ValueError(problem)."""
    if host == "*":
        if not allow_star:
            raise ValueError("'*' is only meaningful for bind; name the host to connect to")
        return "*"
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ValueError(f"{host} is not a valid IPv6 address") from None
    if ":" in host:
        raise ValueError("an IPv6 address must be in brackets, e.g. [::1]")
    if _DOTTED_NUMBERS.fullmatch(host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv4 address") from None
    # Host names and, for ZeroMQ binds, interface names (eth0, br-lan; "_" is
    # legal there).
    if len(host) <= _HOST_NAME_MAX and _NAME.fullmatch(host):
        return host.lower()
    raise ValueError(
        f"{host!r} is not an IPv4 address, an [IPv6] address or a host name"
        + (" or *" if allow_star else "")
    )


def split_port(text: str, lo: int) -> tuple[str, int]:
    """`host:port` -> (host as written, port in lo..65535), or ValueError(problem)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port")
    if not _PORT.fullmatch(port) or not lo <= int(port) <= 65535:
        raise ValueError(f"port must be an integer between {lo} and 65535, got {port!r}")
    return host, int(port)


def parse_endpoint(text: str, *, bind: bool) -> Endpoint:
    """A ZeroMQ endpoint as written in `bind` (`bind=True`) or `connect`, or
    ValueError(problem). Port 0 (ZeroMQ's "any free port") is refused: the
    agent's peers need to know where to connect."""
    if text.startswith("tcp://"):
        host, port = split_port(text[len("tcp://") :], 1)
        return Endpoint("tcp", canonical_host(host, allow_star=bind), port, "", text)
    if text.startswith("ipc://"):
        path = text[len("ipc://") :]
        if not path:
            raise ValueError("ipc:// needs a path")
        if "\0" in path:
            raise ValueError("an ipc path must not contain a NUL character")
        if not (path.startswith("/") or (path.startswith("@") and len(path) > 1)):
            raise ValueError("an ipc path must be absolute (ipc:///run/...) or @abstract")
        if len(path.encode()) > IPC_PATH_MAX:
            raise ValueError(
                f"an ipc path is at most {IPC_PATH_MAX} bytes (sun_path), "
                f"this one is {len(path.encode())}"
            )
        return Endpoint("ipc", "", 0, path, text)
    raise ValueError("must be tcp://host:port or ipc:///absolute/path")


def parse_http_bind(text: str) -> tuple[str, int]:
    """`[http] bind` (`host:port`, port 0 = any free port) -> (host, port), the
    host as the socket API wants it (an IPv6 address without brackets), or
    ValueError(problem)."""
    host, port = split_port(text, 0)
    if host == "*":  # a ZeroMQ habit; the HTTP server wants an address
        raise ValueError("'*' is not a host here: use 0.0.0.0 (every IPv4 interface)")
    canonical_host(host, allow_star=False)
    return (host[1:-1] if host.startswith("[") else host), port


def http_endpoint(host: str, port: int) -> Endpoint:
    """The HTTP server's bind (as `parse_http_bind` returns it) as a tcp
    Endpoint, to check it against the ZeroMQ binds."""
    bracketed = f"[{host}]" if ":" in host else host
    return Endpoint(
        "tcp", canonical_host(bracketed, allow_star=False), port, "", f"{bracketed}:{port}"
    )


def binds_clash(a: Endpoint, b: Endpoint) -> bool:
    """Would the kernel refuse the second bind? Only sure cases: no false alarms."""
    if a.scheme != b.scheme:
        return False
    if a.scheme == "ipc":
        return a.path == b.path
    if a.port != b.port or a.port == 0:  # 0: the kernel picks a free port
        return False
    hosts = {a.host, b.host}
    if len(hosts) == 1 or "*" in hosts:
        return True
    # Linux refuses a specific address under a listening wildcard of its family.
    for wildcard, family in (
        ("0.0.0.0", ipaddress.IPv4Address),
        ("::", ipaddress.IPv6Address),
    ):
        if wildcard in hosts:
            (other,) = hosts - {wildcard}
            try:
                family(other)
            except ValueError:
                return False
            return True
    return False


@dataclasses.dataclass(frozen=True)
class BindClash:
    """`endpoint` (from config key `key`) cannot be bound beside `earlier`."""

    key: str
    endpoint: Endpoint
    earlier_key: str
    earlier: Endpoint


def first_bind_clash(binds: Iterable[tuple[str, Endpoint]]) -> BindClash | None:
    """The first bind, in the order given, that clashes with an earlier one;
    each bind is (the config key that lists it, its Endpoint)."""
    seen: list[tuple[str, Endpoint]] = []
    for key, ep in binds:
        for earlier_key, earlier in seen:
            if binds_clash(earlier, ep):
                return BindClash(key, ep, earlier_key, earlier)
        seen.append((key, ep))
    return None
