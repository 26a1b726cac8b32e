"""Protected mode (INTERFACE.md; agent/protected.py, checked by config.py): a
plaintext endpoint beyond loopback/ipc needs `insecure_plaintext = true` in
its socket's table, or CURVE; otherwise check-config and run exit 2 naming it."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import _TABLES, ConfigError, parse_config_text
from agent.endpoints import parse_endpoint
from agent.protected import first_exposure, is_local, plaintext_warnings
from agent.settings import IngestSettings, UpstreamSettings

from harness import render_toml

CURVE = '[{0}.curve]\nsecret_key_file = "/k/gw.key_secret"\nallowed_keys_dir = "/k/peers"\n'


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_config_text(text)
    return e.value


@pytest.mark.parametrize(
    ("endpoint", "bind", "local"),
    [
        ("ipc:///run/edge-agent/ingest.sock", True, True),
        ("ipc://@edge-agent", False, True),
        ("tcp://127.0.0.1:5557", True, True),
        ("tcp://127.3.2.1:5557", False, True),  # all of 127.0.0.0/8
        ("tcp://[::1]:5557", True, True),
        ("tcp://[::ffff:127.0.0.1]:5557", True, True),  # libzmq binds it as 127.0.0.1
        ("tcp://localhost:5557", True, True),
        ("tcp://LocalHost:5557", False, True),
        ("tcp://localhost.:5557", False, True),
        ("tcp://lo:5557", True, True),  # Linux's loopback interface, bind only
        ("tcp://lo:5557", False, False),  # in connect, a host name
        ("tcp://*:5557", True, False),
        ("tcp://0.0.0.0:5557", True, False),
        ("tcp://[::]:5557", True, False),
        ("tcp://128.0.0.1:5557", False, False),
        ("tcp://10.0.0.1:5557", True, False),
        ("tcp://[::2]:5557", False, False),
        ("tcp://[::ffff:10.0.0.1]:5557", False, False),
        ("tcp://eth0:5557", True, False),
        ("tcp://headend.example:5558", False, False),
        ("tcp://localhost.example:5558", False, False),  # not resolved: not trusted
        ("tcp://gw-localhost:5558", False, False),
    ],
)
def test_what_counts_as_local(endpoint: str, bind: bool, local: bool) -> None:
    assert is_local(parse_endpoint(endpoint, bind=bind), bind=bind) is local


@given(st.ip_addresses(v=4))
def test_an_ipv4_endpoint_is_accepted_in_plaintext_exactly_when_it_is_loopback(
    address: ipaddress.IPv4Address,
) -> None:
    text = f'[ingest]\nbind = ["tcp://{address}:5557"]\n'
    model = address in ipaddress.ip_network("127.0.0.0/8")
    try:
        parse_config_text(text)
    except ConfigError as e:
        assert not model
        assert e.key == "ingest.bind" and f'endpoint "tcp://{address}:5557"' in e.problem
    else:
        assert model


@pytest.mark.parametrize(
    ("table", "key", "endpoint", "what"),
    [
        ("ingest", "bind", "tcp://0.0.0.0:5557", "anyone who reaches the port can push events"),
        ("ingest", "connect", "tcp://collector-hub:5557", "events are taken from a peer"),
        ("upstream", "bind", "tcp://*:5558", "subscribe and read every event"),
        ("upstream", "connect", "tcp://10.1.1.1:5558", "every event goes, readable by anyone"),
    ],
)
def test_plaintext_beyond_loopback_is_refused_naming_the_endpoint(
    table: str, key: str, endpoint: str, what: str
) -> None:
    err = error_of(f'[{table}]\n{key} = ["ipc:///run/a.sock", "{endpoint}"]\n')
    assert err.key == f"{table}.{key}"
    assert err.problem.startswith(f'endpoint "{endpoint}" ')
    assert what in err.problem and "(protected mode)" in err.problem
    # The way out is named: CURVE, loopback/ipc, or the opt-out in this table.
    assert f"[{table}.curve]" in err.problem
    assert f"{table}.insecure_plaintext = true" in err.problem


@pytest.mark.parametrize("table", ["ingest", "upstream"])
def test_the_opt_out_or_curve_lets_it_through_for_that_table_only(table: str) -> None:
    other = "upstream" if table == "ingest" else "ingest"
    exposed = f'[{table}]\nbind = ["tcp://0.0.0.0:7001"]\n'
    parse_config_text(exposed + "insecure_plaintext = true\n")
    parse_config_text(exposed + CURVE.format(table))
    # One table's opt-out does not cover the other's endpoints.
    err = error_of(
        exposed
        + "insecure_plaintext = true\n"
        + f'[{other}]\nbind = ["tcp://0.0.0.0:7002"]\ninsecure_plaintext = false\n'
    )
    assert err.key == f"{other}.bind"


def test_the_contract_example_without_its_curve_tables_is_refused() -> None:
    err = error_of(
        '[ingest]\nbind = ["tcp://0.0.0.0:5557"]\n[upstream]\nbind = ["tcp://0.0.0.0:5558"]'
    )
    assert err.key == "ingest.bind" and '"tcp://0.0.0.0:5557"' in err.problem


def test_nothing_written_means_loopback_only_and_no_warning() -> None:
    s = parse_config_text("")
    assert first_exposure(s.ingest, s.upstream) is None
    assert plaintext_warnings(s.ingest, s.upstream) == []


def test_every_endpoint_key_of_a_socket_is_checked() -> None:
    # A new endpoint key (the alert lane's priority_bind / priority_connect)
    # must join the check: agent/protected.py `_socket_endpoints`.
    for table in ("ingest", "upstream"):
        keys = [k for k in _TABLES[table] if k.endswith(("bind", "connect"))]
        assert {"bind", "connect"} <= set(keys)
        for i, key in enumerate(keys):
            err = error_of(f'[{table}]\n{key} = ["tcp://192.0.2.1:{7100 + i}"]\n')
            assert err.key == f"{table}.{key}", err


def test_warnings_name_what_the_opt_out_exposes() -> None:
    ingest = IngestSettings(
        bind=("tcp://0.0.0.0:5557", "tcp://127.0.0.1:5560"),
        connect=("tcp://hub:5557",),
        insecure_plaintext=True,
    )
    upstream = UpstreamSettings(bind=("ipc:///run/x",), insecure_plaintext=True)
    assert plaintext_warnings(ingest, upstream) == [
        "ingest.insecure_plaintext = true: tcp://0.0.0.0:5557, tcp://hub:5557 carry events in "
        "plaintext, without authentication, to and from other hosts; turn CURVE on with "
        '[ingest.curve] (README "Security")'
    ]
    s = parse_config_text(
        '[upstream]\nbind = ["tcp://*:7003"]\ninsecure_plaintext = true\n'
        + CURVE.format("upstream")
    )
    assert plaintext_warnings(s.ingest, s.upstream) == [
        "upstream.insecure_plaintext = true is ignored: [upstream.curve] is set, so every peer "
        "needs CURVE; remove the line"
    ]


def _edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=30
    )


def test_check_config_and_run_exit_2_naming_the_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    doc = {
        "ingest": {"bind": ["tcp://0.0.0.0:5557"]},
        "spill": {"dir": str(tmp_path / "spill")},
    }
    path.write_text(render_toml(doc))
    for command in ("check-config", "run"):
        r = _edge_agent(command, "--config", str(path))
        assert r.returncode == 2, (command, r.stderr)
        assert 'ingest.bind: endpoint "tcp://0.0.0.0:5557" listens beyond this host' in r.stderr
    assert not (tmp_path / "spill").exists()  # run opened nothing
    # The opt-out: accepted, with a warning on stderr.
    doc["ingest"]["insecure_plaintext"] = True
    path.write_text(render_toml(doc))
    r = _edge_agent("check-config", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("edge-agent: warning: ingest.insecure_plaintext = true: ")


def test_the_shipped_configs_follow_protected_mode() -> None:
    packaging = Path(__file__).resolve().parent.parent / "packaging"
    text = (packaging / "agent.toml").read_text()
    # The packaged file listens on every interface, so it says so, loudly.
    assert text.count("\ninsecure_plaintext = true\n") == 2
    assert text.count("!!! PLAINTEXT ON THE NETWORK !!!") == 2
    r = _edge_agent("check-config", "--config", str(packaging / "agent.toml"))
    assert r.returncode == 0 and r.stderr.count("insecure_plaintext = true: ") == 2
    # dev.toml stays on loopback: no opt-out needed, nothing to warn about.
    r = _edge_agent("check-config", "--config", str(packaging / "dev.toml"))
    assert r.returncode == 0 and r.stderr == ""
