"""agent/endpoints.py: endpoint syntax, canonical equality and bind clashes, pure.

The config-level wording (which key is named, "listed twice") is
tests/test_config.py's; here each function is called directly.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.endpoints import (
    IPC_PATH_MAX,
    BindClash,
    Endpoint,
    binds_clash,
    first_bind_clash,
    http_endpoint,
    parse_endpoint,
    parse_http_bind,
)

# ---------------------------------------------------------------------------
# Syntax


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://*:5557", ("tcp", "*", 5557, "")),
        ("tcp://0.0.0.0:1", ("tcp", "0.0.0.0", 1, "")),
        ("tcp://192.168.1.10:65535", ("tcp", "192.168.1.10", 65535, "")),
        ("tcp://[::1]:5557", ("tcp", "::1", 5557, "")),
        ("tcp://[::]:5557", ("tcp", "::", 5557, "")),
        ("tcp://[fe80::1%eth0]:5557", ("tcp", "fe80::1%eth0", 5557, "")),
        ("tcp://eth0:5557", ("tcp", "eth0", 5557, "")),
        ("tcp://Collector-01.Example.org:5557", ("tcp", "collector-01.example.org", 5557, "")),
        ("ipc:///run/edge-agent/ingest.sock", ("ipc", "", 0, "/run/edge-agent/ingest.sock")),
        ("ipc://@edge-agent-ingest", ("ipc", "", 0, "@edge-agent-ingest")),
        ("ipc:///" + "x" * (IPC_PATH_MAX - 1), ("ipc", "", 0, "/" + "x" * (IPC_PATH_MAX - 1))),
    ],
)
def test_valid_bind_endpoints(text: str, expected: tuple[str, str, int, str]) -> None:
    ep = parse_endpoint(text, bind=True)
    assert (ep.scheme, ep.host, ep.port, ep.path) == expected
    assert ep.text == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("tcp://host", "host:port"),
        ("tcp://:5557", "host:port"),
        ("tcp://host:0", "port"),
        ("tcp://host:65536", "port"),
        ("tcp://host:*", "port"),
        ("tcp://host:+5", "port"),
        ("tcp://::1:5557", "brackets"),
        ("tcp://[1.2.3.4]:5557", "IPv6"),
        ("tcp://[::g]:5557", "IPv6"),
        ("tcp://256.1.1.1:5557", "IPv4"),
        ("tcp://1.2.3:5557", "IPv4"),
        ("tcp://bad_host!:5557", "host name"),
        ("tcp://src;dst:5557", "host name"),
        ("tcp://" + "a" * 254 + ":1", "host name"),
        ("ipc://", "path"),
        ("ipc://relative.sock", "absolute"),
        ("ipc://@", "absolute"),
        ("ipc:///a\0b", "NUL"),
        ("ipc:///" + "x" * IPC_PATH_MAX, "107 bytes"),
        ("udp://h:5557", "tcp://"),
        ("inproc://x", "tcp://"),
        ("TCP://h:1", "tcp://"),
    ],
)
def test_invalid_endpoints_say_why(text: str, why: str) -> None:
    for bind in (True, False):
        with pytest.raises(ValueError, match=why):
            parse_endpoint(text, bind=bind)


def test_star_is_for_bind_only() -> None:
    assert parse_endpoint("tcp://*:5557", bind=True).host == "*"
    with pytest.raises(ValueError, match="only meaningful for bind"):
        parse_endpoint("tcp://*:5557", bind=False)


# ---------------------------------------------------------------------------
# Equality: the same place, however it is written


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("tcp://H:1", "tcp://h:01"),
        ("tcp://[::1]:9", "tcp://[0::1]:9"),
        ("tcp://[2001:db8::1]:9", "tcp://[2001:0DB8:0:0:0:0:0:1]:9"),
        ("ipc:///r/s", "ipc:///r/s"),
    ],
)
def test_the_same_place_written_twice_is_equal(a: str, b: str) -> None:
    assert parse_endpoint(a, bind=False) == parse_endpoint(b, bind=False)


@given(st.ip_addresses(), st.integers(1, 65535), st.integers(1, 5))
def test_addresses_are_canonical(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, width: int
) -> None:
    host = f"[{address.exploded}]" if address.version == 6 else str(address)
    # Leading zeros up to five digits, the most a port may have.
    ep = parse_endpoint(f"tcp://{host}:{port:0{width}d}", bind=False)
    assert (ep.host, ep.port) == (str(address), port)


# ---------------------------------------------------------------------------
# Bind clashes


def tcp(text: str) -> Endpoint:
    return parse_endpoint(text, bind=True)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("tcp://0.0.0.0:5557", "tcp://0.0.0.0:5557"),
        ("tcp://*:5557", "tcp://127.0.0.1:5557"),
        ("tcp://*:5557", "tcp://eth0:5557"),  # a wildcard takes every address
        ("tcp://0.0.0.0:5557", "tcp://127.0.0.1:5557"),
        ("tcp://[::]:9", "tcp://[::1]:9"),
        ("ipc:///r/s", "ipc:///r/s"),
    ],
)
def test_binds_that_the_kernel_would_refuse_clash(a: str, b: str) -> None:
    assert binds_clash(tcp(a), tcp(b)) and binds_clash(tcp(b), tcp(a))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("tcp://127.0.0.1:9", "tcp://127.0.0.2:9"),
        ("tcp://0.0.0.0:9", "tcp://[::1]:9"),  # another family
        ("tcp://[::]:9", "tcp://127.0.0.1:9"),
        ("tcp://0.0.0.0:9", "tcp://eth0:9"),  # a name: not sure, so no alarm
        ("tcp://eth0:9", "tcp://eth1:9"),
        ("tcp://localhost:9", "tcp://127.0.0.1:9"),  # names are not resolved
        ("tcp://*:9", "tcp://*:10"),
        ("ipc:///r/s", "ipc:///r/t"),
        ("ipc:///r/s", "tcp://*:9"),
    ],
)
def test_binds_that_can_coexist_do_not_clash(a: str, b: str) -> None:
    assert not binds_clash(tcp(a), tcp(b)) and not binds_clash(tcp(b), tcp(a))


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("[::1]:8080", "::1", 8080),
        ("localhost:0", "localhost", 0),
        ("gw-01.local:65535", "gw-01.local", 65535),
    ],
)
def test_http_bind(bind: str, host: str, port: int) -> None:
    assert parse_http_bind(bind) == (host, port)


@pytest.mark.parametrize(
    ("bind", "why"),
    [
        ("127.0.0.1:65536", "port"),
        ("localhost", "host:port"),
        (":80", "host:port"),
        ("*:80", "0.0.0.0"),
        ("::1:80", "brackets"),
    ],
)
def test_invalid_http_binds_say_why(bind: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_http_bind(bind)


def test_the_http_bind_clashes_like_a_tcp_endpoint() -> None:
    assert http_endpoint("::1", 9) == tcp("tcp://[::1]:9")
    assert http_endpoint("::1", 9).text == "[::1]:9"
    assert binds_clash(http_endpoint("0.0.0.0", 5558), tcp("tcp://0.0.0.0:5558"))
    assert binds_clash(tcp("tcp://*:9"), http_endpoint("::1", 9))
    # Port 0: the kernel picks a free port, nothing can clash with it.
    assert not binds_clash(http_endpoint("127.0.0.1", 0), http_endpoint("127.0.0.1", 0))


def test_first_bind_clash_names_both_sides_in_order() -> None:
    binds = [
        ("ingest.bind", tcp("tcp://127.0.0.1:9")),
        ("ingest.bind", tcp("tcp://127.0.0.2:9")),
        ("upstream.bind", tcp("tcp://*:9")),
        ("http.bind", http_endpoint("127.0.0.1", 9)),
    ]
    assert first_bind_clash(binds) == BindClash(
        "upstream.bind", binds[2][1], "ingest.bind", binds[0][1]
    )
    assert first_bind_clash(binds[:2]) is None
    assert first_bind_clash([]) is None


bind_texts = st.one_of(
    st.builds(
        "tcp://{}:{}".format,
        st.sampled_from(["*", "0.0.0.0", "127.0.0.1", "127.0.0.2", "[::]", "[::1]", "eth0"]),
        st.integers(1, 3),
    ),
    st.sampled_from(["ipc:///r/a", "ipc:///r/b", "ipc://@a"]),
)


@given(st.lists(st.tuples(st.sampled_from(["ingest.bind", "upstream.bind"]), bind_texts)))
def test_first_bind_clash_against_every_pair(given_binds: list[tuple[str, str]]) -> None:
    binds = [(key, tcp(text)) for key, text in given_binds]
    pairs = [
        (j, i) for j in range(len(binds)) for i in range(j) if binds_clash(binds[i][1], binds[j][1])
    ]
    clash = first_bind_clash(binds)
    if not pairs:
        assert clash is None
        return
    j, i = min(pairs)  # the first later bind that clashes, with its first earlier one
    assert clash == BindClash(binds[j][0], binds[j][1], binds[i][0], binds[i][1])
