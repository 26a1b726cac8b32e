"""agent/config.py: TOML -> Settings, through the public API only.

No test writes outside tmp_path, binds a port or changes shared state, so the
file runs in parallel under pytest-xdist.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.classes import CLASS_NAMES, DEFAULT_RULES, ClassRules, EventClass
from agent.config import (
    RELOADABLE,
    ConfigError,
    changed_keys,
    load_config,
    parse_config,
    parse_config_text,
)
from agent.endpoints import parse_endpoint
from agent.protected import is_local
from agent.queues import CHUNK_BYTES
from agent.settings import (
    BufferSettings,
    CurveSettings,
    HttpSettings,
    IngestSettings,
    Settings,
    SpillSettings,
    UpstreamSettings,
)
from agent.sizing import SPILL_MIN_BYTES
from agent.spill.format import DATA_OFFSET
from agent.spill.store import ring_sizes

from harness import render_toml

MiB = 1024 * 1024
GiB = 1024 * MiB
PACKAGING = Path(__file__).resolve().parent.parent / "packaging"

# Every key, in file order: the README's key table lists exactly these.
ALL_KEYS = [
    "agent.id",
    "agent.log_level",
    "ingest.bind",
    "ingest.connect",
    "ingest.priority_bind",
    "ingest.priority_connect",
    "ingest.max_frame_bytes",
    "ingest.rcvhwm",
    "ingest.rcvbuf_bytes",
    "ingest.max_peers",
    "ingest.insecure_plaintext",
    "ingest.curve.secret_key_file",
    "ingest.curve.allowed_keys_dir",
    "upstream.bind",
    "upstream.connect",
    "upstream.batch_max_events",
    "upstream.batch_max_bytes",
    "upstream.linger_ms",
    "upstream.sndhwm",
    "upstream.sndbuf_bytes",
    "upstream.insecure_plaintext",
    "upstream.curve.secret_key_file",
    "upstream.curve.allowed_keys_dir",
    "buffer.budget_bytes",
    "buffer.critical_reserve_bytes",
    "buffer.shrink_after_s",
    "spill.dir",
    "spill.max_bytes",
    "spill.flush_interval_ms",
    "spill.write_through",
    "http.bind",
    "http.allowed_hosts",
    "classes.critical",
    "classes.high",
    "classes.normal",
    "classes.low",
]


def error_of(text: str, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, **kwargs)
    return info.value


def doc_with(key: str, value: str, extra: str = "") -> str:
    """A TOML document setting the dotted `key` to the TOML text `value`."""
    table, leaf = key.rsplit(".", 1)
    return f"[{table}]\n{leaf} = {value}\n{extra}"


# ---------------------------------------------------------------------------
# Defaults and the shipped files


def test_empty_document_gives_the_contract_defaults() -> None:
    s = parse_config({})
    assert s == Settings()
    # Loopback: nothing written, nothing reachable from another host (protected mode).
    assert s.ingest.bind == ("tcp://127.0.0.1:5557",)
    assert s.ingest.max_frame_bytes == 1 * MiB
    assert s.upstream.bind == ("tcp://127.0.0.1:5558",)
    assert not s.ingest.insecure_plaintext and not s.upstream.insecure_plaintext
    assert s.buffer.budget_bytes == 512 * MiB
    assert s.spill.dir == "/var/lib/edge-agent/spill"
    assert s.spill.max_bytes == 2 * GiB
    assert s.http == HttpSettings("127.0.0.1", 8080)
    assert s.classes == ClassRules(DEFAULT_RULES)
    assert s.classes.classify("last_gasp") is EventClass.CRITICAL
    assert s.agent.log_level == "info"
    assert s.agent.id  # the host name


def test_contract_example_parses_to_the_contract_values() -> None:
    # The TOML block of INTERFACE.md, "Config file", verbatim (but for the
    # alert lane's keys). Its [*.curve] tables are what lets it bind 0.0.0.0:
    # without them protected mode refuses it (tests/test_protected.py).
    s = parse_config_text(
        """
[agent]
id = "gw-01"                        # default: the host name

[ingest]                            # the PULL socket
bind = ["tcp://0.0.0.0:5557"]       # list of endpoints; `connect = [...]` also allowed
max_frame_bytes = 1048576           # larger frames: the peer is disconnected

[ingest.curve]                      # optional: CURVE on the ingest sockets (the lane too)
secret_key_file  = "/etc/edge-agent/curve/gw-01.key_secret"  # the agent's key (ZeroMQ certificate file)
allowed_keys_dir = "/etc/edge-agent/curve/collectors"         # public *.key files of allowed peers

[upstream]                          # the PUB socket towards the head-end
bind = ["tcp://0.0.0.0:5558"]       # list of endpoints; `connect = [...]` also allowed

[upstream.curve]                    # optional: the same for the head-end side
secret_key_file  = "/etc/edge-agent/curve/gw-01.key_secret"
allowed_keys_dir = "/etc/edge-agent/curve/headend"

[buffer]
budget_bytes = 536870912            # hard ceiling for in-memory event buffers (512 MiB)

[spill]
dir = "/var/lib/edge-agent/spill"   # spill files live here
max_bytes = 2147483648              # all spill files together, preallocated

[http]
bind = "127.0.0.1:8080"             # host:port of the technician endpoint
"""  # noqa: E501
    )
    d = Settings()
    secret = "/etc/edge-agent/curve/gw-01.key_secret"
    assert s == dataclasses.replace(
        d,
        agent=dataclasses.replace(s.agent, id="gw-01"),
        ingest=dataclasses.replace(
            d.ingest,
            bind=("tcp://0.0.0.0:5557",),
            curve=CurveSettings(secret, "/etc/edge-agent/curve/collectors"),
        ),
        upstream=dataclasses.replace(
            d.upstream,
            bind=("tcp://0.0.0.0:5558",),
            curve=CurveSettings(secret, "/etc/edge-agent/curve/headend"),
        ),
    )


def test_production_config_parses_with_the_contract_values() -> None:
    s = load_config(PACKAGING / "agent.toml")
    # It writes the defaults out and changes none, except that it listens on
    # every interface in plaintext, which protected mode makes it say, and it
    # has the alert lane (INTERFACE.md: "the packaged config has one") on the
    # port next to 5557/5558.
    d = Settings()
    assert s == dataclasses.replace(
        d,
        ingest=dataclasses.replace(
            d.ingest,
            bind=s.ingest.bind,
            insecure_plaintext=True,
            priority_bind=("tcp://0.0.0.0:5559",),
        ),
        upstream=dataclasses.replace(d.upstream, bind=s.upstream.bind, insecure_plaintext=True),
    )
    assert s.ingest.bind == ("tcp://0.0.0.0:5557",) and s.upstream.bind == ("tcp://0.0.0.0:5558",)
    assert d.ingest.lane is False and s.ingest.lane is True
    assert s.spill.dir == "/var/lib/edge-agent/spill"


def test_production_config_documents_every_key_with_a_valid_example() -> None:
    # Uncomment every "# key = value" and "# [table]" line: the documented
    # examples must be valid, and together they must name every key.
    text = (PACKAGING / "agent.toml").read_text()
    uncommented = re.sub(r"(?m)^# (?=[a-z_]+ = |\[[a-z_.]+\]$)", "", text)
    s = parse_config_text(uncommented, base_dir="/etc/edge-agent")
    doc_keys = set()
    table = ""
    for line in uncommented.splitlines():
        if m := re.match(r"\[([a-z_.]+)\]", line):
            table = m.group(1)
        elif m := re.match(r"([a-z_]+) = ", line):
            doc_keys.add(f"{table}.{m.group(1)}")
    assert sorted(doc_keys) == sorted(ALL_KEYS)
    assert s.ingest.curve.secret_key_file is not None


def test_dev_config_stays_on_loopback_and_inside_the_checkout() -> None:
    s = load_config(PACKAGING / "dev.toml")
    checkout = PACKAGING.parent
    assert s.ingest.bind == ("tcp://127.0.0.1:5557",)
    assert s.ingest.priority_bind == ("tcp://127.0.0.1:5559",)
    assert s.upstream.bind == ("tcp://127.0.0.1:5558",)
    assert s.ingest.connect == s.upstream.connect == s.ingest.priority_connect == ()
    assert s.http == HttpSettings("127.0.0.1", 8080)
    assert s.spill.dir == str(checkout / "var" / "spill")
    assert s.buffer == BufferSettings()  # the default budget
    assert s.ingest.curve == s.upstream.curve == CurveSettings()


def test_dev_config_resolves_against_its_own_directory_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(PACKAGING / "dev.toml", tmp_path)
    assert load_config(rel).spill.dir == str(PACKAGING.parent / "var" / "spill")


# ---------------------------------------------------------------------------
# Every key: wrong type and out of range name the key

# (key, TOML value of a wrong type, its TOML type name, out-of-range TOML values, extra lines)
CURVE_PAIR = {
    "secret_key_file": 'allowed_keys_dir = "/k"\n',
    "allowed_keys_dir": 'secret_key_file = "/k/s"\n',
}
KEY_CASES: list[tuple[str, str, str, list[str], str]] = [
    ("agent.id", "5", "integer", ['""', '" gw"', f'"{"x" * 256}"', '"a\\u0007b"'], ""),
    ("agent.log_level", "1", "integer", ['"verbose"', '"INFO"', '""'], ""),
    ("ingest.max_frame_bytes", '"1MiB"', "string", ["63", "16777217", "-1"], ""),
    ("ingest.rcvhwm", "1.0", "float", ["0", "1000001"], ""),
    ("ingest.rcvbuf_bytes", '"64KiB"', "string", ["4095", "67108865"], ""),
    ("ingest.max_peers", "2.5", "float", ["0", "10001"], ""),
    ("upstream.batch_max_events", "true", "boolean", ["0", "65536"], ""),
    ("upstream.batch_max_bytes", "[1024]", "array", ["1023", "16777217"], ""),
    ("upstream.linger_ms", '"5ms"', "string", ["-1", "10001"], ""),
    ("upstream.sndhwm", "4.0", "float", ["0", "100001"], ""),
    ("upstream.sndbuf_bytes", "false", "boolean", ["4095", "67108865"], ""),
    ("buffer.budget_bytes", "5e8", "float", ["4194303", "68719476737"], ""),
    ("buffer.critical_reserve_bytes", '"16M"', "string", ["-1", "268435456"], ""),
    ("buffer.shrink_after_s", '"10s"', "string", ["0", "0.0", "-1", "3600.5", "nan", "inf"], ""),
    ("spill.dir", "1", "integer", ['""', '"~/spill"', '"a\\u0000b"'], ""),
    ("spill.max_bytes", "1.5", "float", ["4259839", "0"], ""),
    ("spill.flush_interval_ms", "true", "boolean", ["9", "60001"], ""),
    ("ingest.insecure_plaintext", '"true"', "string", [], ""),
    ("upstream.insecure_plaintext", "1", "integer", [], ""),
    (
        "spill.write_through",
        '"critical"',
        "string",
        ['["alerts"]', '["high", "high"]', '[""]', '["Critical"]'],
        "",
    ),
    ("http.bind", "8080", "integer", ['"127.0.0.1:65536"', '"localhost"', '"*:80"', '":80"'], ""),
    ("http.allowed_hosts", '"gw-01"', "string", ['["http://gw-01"]', '["gw-01:8080"]'], ""),
    *(
        (f"{sock}.{ends}", '"tcp://127.0.0.1:5557"', "string", ['["udp://h:1"]', '[""]'], "")
        for sock in ("ingest", "upstream")
        for ends in ("bind", "connect")
    ),
    *(
        (f"ingest.{key}", '"tcp://127.0.0.1:5559"', "string", ['["udp://h:1"]', '[""]'], "")
        for key in ("priority_bind", "priority_connect")
    ),
    *(
        (f"{sock}.curve.{key}", "1", "integer", ['""', '"~/k"'], extra)
        for sock in ("ingest", "upstream")
        for key, extra in CURVE_PAIR.items()
    ),
    *(
        (f"classes.{name}", '"fault"', "string", ['[""]', "[1]", '[" fault"]'], "")
        for name in CLASS_NAMES
    ),
]


@pytest.mark.parametrize(("key", "wrong", "type_name", "_bad", "extra"), KEY_CASES)
def test_wrong_type_names_the_key_and_what_was_given(
    key: str, wrong: str, type_name: str, _bad: list[str], extra: str
) -> None:
    err = error_of(doc_with(key, wrong, extra), base_dir="/etc")
    assert err.key == key
    assert str(err).startswith(f"{key}: ")
    assert f"got {type_name}" in err.problem or f"is {type_name}" in err.problem


@pytest.mark.parametrize(
    ("key", "value", "extra"),
    [(key, value, extra) for key, _w, _t, bad, extra in KEY_CASES for value in bad],
)
def test_out_of_range_names_the_key(key: str, value: str, extra: str) -> None:
    err = error_of(doc_with(key, value, extra), base_dir="/etc")
    assert err.key == key
    assert str(err) == f"{key}: {err.problem}"


def test_every_key_is_covered_by_the_tables_above() -> None:
    assert sorted({case[0] for case in KEY_CASES}) == sorted(ALL_KEYS)


def test_integer_error_message_matches_the_documented_form() -> None:
    err = error_of("[ingest]\nmax_frame_bytes = 10\n")
    assert str(err) == "ingest.max_frame_bytes: must be an integer between 64 and 16777216, got 10"


def test_bool_is_not_an_integer() -> None:
    err = error_of("[ingest]\nrcvhwm = true\n")
    assert err.key == "ingest.rcvhwm"
    assert "got boolean true" in str(err)


def test_bounds_are_inclusive() -> None:
    s = parse_config_text(
        """
[ingest]
max_frame_bytes = 64
rcvhwm = 1000000
[upstream]
batch_max_events = 65535
batch_max_bytes = 1024
linger_ms = 0
sndhwm = 1
sndbuf_bytes = 67108864
[buffer]
budget_bytes = 4194304
critical_reserve_bytes = 1048512
shrink_after_s = 3600
[spill]
max_bytes = 4259840
flush_interval_ms = 60000
[http]
bind = "localhost:0"
"""
    )
    assert s.ingest.max_frame_bytes == 64
    # 4 MiB - 64 - 3 MiB: the largest reserve the working-room rule leaves.
    assert s.buffer.critical_reserve_bytes == 1048512
    assert s.http == HttpSettings("localhost", 0)


def test_shrink_after_accepts_integers_as_seconds() -> None:
    s = parse_config_text("[buffer]\nshrink_after_s = 5\n")
    assert s.buffer.shrink_after_s == 5.0
    assert isinstance(s.buffer.shrink_after_s, float)
    assert parse_config_text("[buffer]\nshrink_after_s = 0.25\n").buffer.shrink_after_s == 0.25


def test_critical_reserve_error_shows_both_numbers() -> None:
    err = error_of("[buffer]\nbudget_bytes = 8388608\ncritical_reserve_bytes = 4194304\n")
    assert err.key == "buffer.critical_reserve_bytes"
    assert "4194304" in err.problem and "8388608" in err.problem


def test_a_small_budget_flags_the_default_reserve_as_such() -> None:
    # The reserve scales (1/32: 131072 at 4 MiB); the default 1 MiB frame plus
    # the working room is what no longer fits.
    err = error_of("[buffer]\nbudget_bytes = 4194304\n")
    assert err.key == "buffer.budget_bytes"
    assert "131072 (the default" in err.problem and "1048576 (the default)" in err.problem


def test_curve_needs_both_keys() -> None:
    err = error_of('[ingest.curve]\nsecret_key_file = "/k/s"\n')
    assert err.key == "ingest.curve.allowed_keys_dir"
    assert "ingest.curve.secret_key_file" in err.problem
    err = error_of('[upstream.curve]\nallowed_keys_dir = "/k"\n')
    assert err.key == "upstream.curve.secret_key_file"
    s = parse_config_text('[upstream.curve]\nsecret_key_file = "/k/s"\nallowed_keys_dir = "/k/"\n')
    assert s.upstream.curve == CurveSettings("/k/s", "/k")
    assert s.ingest.curve == CurveSettings()


# ---------------------------------------------------------------------------
# Unknown keys and tables


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ("[ingest]\nbnd = []\n", "ingest.bnd", "did you mean ingest.bind?"),
        (
            "[ingest]\nmax_frame_byte = 64\n",
            "ingest.max_frame_byte",
            "did you mean ingest.max_frame_bytes?",
        ),
        ("[ingset]\nbind = []\n", "ingset", "did you mean ingest?"),
        ('[spill]\ndirectory = "/x"\n', "spill.directory", ""),
        ("[buffer]\nmax_bytes = 5\n", "buffer.max_bytes", "did you mean spill.max_bytes?"),
        ('id = "gw"\n', "id", "did you mean agent.id?"),
        ("[classes]\nCritical = []\n", "classes.Critical", "did you mean classes.critical?"),
        ('[ingest.curv]\nsecret_key_file = "/k"\n', "ingest.curv", "did you mean ingest.curve?"),
        ("[upstream]\nzzz = 1\n", "upstream.zzz", ""),
    ],
)
def test_unknown_key_is_an_error_with_a_suggestion(text: str, key: str, suggestion: str) -> None:
    err = error_of(text)
    assert err.key == key
    assert err.problem.startswith("unknown ")
    if suggestion:
        assert err.problem.endswith(suggestion)
    else:
        assert "did you mean" not in err.problem


def test_a_table_given_as_a_value_is_an_error() -> None:
    assert error_of("agent = 1\n").key == "agent"
    err = error_of("[ingest]\ncurve = true\n")
    assert err.key == "ingest.curve" and "must be a table, got boolean" in err.problem


def test_unknown_keys_are_reported_before_bad_values() -> None:
    # The misspelt key explains why the value error would look odd.
    err = error_of("[ingest]\nmax_frame_bytes = 1\n[upstream]\nsndhwn = 5\n")
    assert err.key == "upstream.sndhwn"


# ---------------------------------------------------------------------------
# Endpoints: which keys hold them and how a problem is reported. Their syntax,
# equality and clash rules: tests/test_endpoints.py.


def test_endpoints_are_kept_as_written() -> None:
    text = '[ingest]\nbind = ["tcp://[::1]:5557", "ipc://@edge-agent-ingest"]\n'
    s = parse_config_text(text + '[upstream]\nbind = ["tcp://H:1"]\ninsecure_plaintext = true')
    assert s.ingest.bind == ("tcp://[::1]:5557", "ipc://@edge-agent-ingest")
    assert s.upstream.bind == ("tcp://H:1",)


@pytest.mark.parametrize(
    ("key", "endpoint", "why"),
    [
        ("upstream.connect", "tcp://host:0", "port"),
        ("upstream.connect", "tcp://*:5557", "bind"),
        ("ingest.bind", "ipc://relative.sock", "absolute"),
        ("ingest.connect", "udp://h:5557", "tcp://"),
    ],
)
def test_invalid_endpoints_name_the_key_and_the_endpoint(key: str, endpoint: str, why: str) -> None:
    table, name = key.split(".")
    err = error_of(f'[{table}]\n{name} = ["{endpoint}"]\n')
    assert err.key == key
    assert err.problem.startswith(f'endpoint "{endpoint}": ') and why in err.problem


def test_connect_alone_does_not_also_bind_the_default() -> None:
    s = parse_config_text(
        '[upstream]\nconnect = ["tcp://headend:5558"]\ninsecure_plaintext = true\n'
    )
    assert s.upstream.bind == ()
    assert s.upstream.connect == ("tcp://headend:5558",)
    assert s.ingest.bind == ("tcp://127.0.0.1:5557",)


def test_a_socket_needs_an_endpoint() -> None:
    err = error_of("[ingest]\nbind = []\n")
    assert err.key == "ingest.bind" and "ingest.connect" in err.problem
    assert error_of("[upstream]\nconnect = []\n").key == "upstream.connect"
    assert error_of("[upstream]\nbind = []\nconnect = []\n").key == "upstream.bind"
    s = parse_config_text('[ingest]\nbind = []\nconnect = ["ipc:///run/c.sock"]\n')
    assert s.ingest.bind == ()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[ingest]\nbind = ["tcp://*:1", "tcp://*:1"]', "ingest.bind"),
        ('[ingest]\nconnect = ["tcp://H:1", "tcp://h:01"]', "ingest.connect"),
        ('[ingest]\nbind = ["tcp://a:1"]\nconnect = ["tcp://a:1"]', "ingest.connect"),
        ('[upstream]\nconnect = ["tcp://[::1]:9", "tcp://[0::1]:9"]', "upstream.connect"),
        ('[upstream]\nconnect = ["ipc:///r/s", "ipc:///r/s"]', "upstream.connect"),
    ],
)
def test_duplicate_endpoints_are_an_error(text: str, key: str) -> None:
    err = error_of(text)
    assert err.key == key
    assert "twice" in err.problem or "also in" in err.problem


@pytest.mark.parametrize(
    ("text", "key", "earlier"),
    [
        ('[upstream]\nbind = ["tcp://127.0.0.1:5557"]', "upstream.bind", "ingest.bind"),
        ('[ingest]\nbind = ["tcp://[::]:9", "tcp://[::1]:9"]', "ingest.bind", "ingest.bind"),
        (
            '[ingest]\nbind = ["ipc:///r/s"]\n[upstream]\nbind = ["ipc:///r/s"]',
            "upstream.bind",
            "ingest.bind",
        ),
        ('[http]\nbind = "0.0.0.0:5558"', "http.bind", "upstream.bind"),
        ('[http]\nbind = "[::1]:9"\n[ingest]\nbind = ["tcp://*:9"]', "http.bind", "ingest.bind"),
    ],
)
def test_binds_that_the_kernel_would_refuse_name_both_keys(
    text: str, key: str, earlier: str
) -> None:
    err = error_of(text)
    assert err.key == key
    assert "clashes" in err.problem and f"in {earlier} " in err.problem


@pytest.mark.parametrize(
    "text",
    [
        # connecting to a port we bind is fine
        '[ingest]\nconnect = ["tcp://h:5558"]\ninsecure_plaintext = true',
        # 0: any free port
        '[http]\nbind = "127.0.0.1:0"\n'
        '[ingest]\nbind = ["tcp://*:8080"]\ninsecure_plaintext = true',
    ],
)
def test_binds_that_can_coexist_are_accepted(text: str) -> None:
    parse_config_text(text)


def test_http_bind() -> None:
    # The socket API wants an IPv6 address without its brackets.
    assert parse_config_text('[http]\nbind = "[::1]:8080"').http == HttpSettings("::1", 8080)
    err = error_of('[http]\nbind = "*:80"')
    assert err.key == "http.bind" and err.problem.startswith('"*:80": ')


# ---------------------------------------------------------------------------
# Classes


def test_a_given_class_list_replaces_its_default_and_keeps_the_others() -> None:
    rules = parse_config_text('[classes]\nhigh = ["door_open"]\n').classes
    table = rules.as_table()
    assert table[EventClass.HIGH] == ("door_open",)
    assert table[EventClass.CRITICAL] == tuple(sorted(DEFAULT_RULES[EventClass.CRITICAL]))
    assert rules.classify("tamper") is EventClass.NORMAL


def test_moving_a_default_type_takes_it_out_of_its_default_class() -> None:
    rules = parse_config_text('[classes]\nlow = ["fault"]\n').classes
    assert rules.classify("fault") is EventClass.LOW
    assert rules.classify("last_gasp") is EventClass.CRITICAL
    rules = parse_config_text('[classes]\nnormal = ["heartbeat"]\n').classes
    assert rules.classify("heartbeat") is EventClass.NORMAL
    assert rules.classify("diagnostic") is EventClass.LOW


def test_a_type_in_two_given_lists_names_both_keys() -> None:
    err = error_of('[classes]\ncritical = ["fault"]\nlow = ["x", "fault"]\n')
    assert str(err) == "classes.low: type 'fault' is also listed in classes.critical"
    err = error_of('[classes]\nlow = ["fault"]\ncritical = ["fault"]\n')  # order in the file
    assert str(err) == "classes.low: type 'fault' is also listed in classes.critical"


def test_a_type_twice_in_one_list_is_an_error() -> None:
    err = error_of('[classes]\nhigh = ["tamper", "tamper"]\n')
    assert err.key == "classes.high" and "twice" in err.problem


def test_class_match_stays_case_sensitive() -> None:
    rules = parse_config_text('[classes]\ncritical = ["Fault"]\nlow = ["fault"]\n').classes
    assert rules.classify("Fault") is EventClass.CRITICAL
    assert rules.classify("fault") is EventClass.LOW


# ---------------------------------------------------------------------------
# Paths


def test_relative_spill_dir_is_resolved_against_the_config_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.toml").write_text(
        '[spill]\ndir = "../var/spill"\n'
        '[ingest.curve]\nsecret_key_file = "keys/agent.key_secret"\nallowed_keys_dir = "keys"\n'
    )
    s = load_config(etc / "agent.toml")
    assert s.spill.dir == str(tmp_path / "var" / "spill")
    assert s.ingest.curve == CurveSettings(
        str(etc / "keys" / "agent.key_secret"), str(etc / "keys")
    )
    assert not (tmp_path / "var").exists()  # parsing creates nothing


def test_absolute_paths_are_kept_and_normalised(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[spill]\ndir = "/srv//spill/./x/../"\n')
    assert load_config(path).spill.dir == "/srv/spill"


def test_relative_path_without_a_file_needs_base_dir() -> None:
    err = error_of('[spill]\ndir = "spill"\n')
    assert err.key == "spill.dir" and "relative" in err.problem
    s = parse_config_text('[spill]\ndir = "spill"\n', base_dir="/opt/agent")
    assert s.spill.dir == "/opt/agent/spill"


def test_tilde_is_not_expanded() -> None:
    err = error_of('[spill]\ndir = "~/spill"\n', base_dir="/etc")
    assert err.key == "spill.dir" and "~" in err.problem


# ---------------------------------------------------------------------------
# The file itself


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nid = "gw"\nlog_level = info\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.key == ""
    assert str(err).startswith(f"{path}: ")
    assert "line 3" in str(err)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "" and str(info.value).startswith(f"{path}: cannot read")


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot read")


def test_non_utf8_and_oversized_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[agent]\nid = "Zähler"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)
    path = tmp_path / "huge.toml"
    path.write_bytes(b"#" * (MiB + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes('\ufeff[agent]\nid = "gw-ä"\n'.encode())
    assert load_config(path).agent.id == "gw-ä"


def test_key_errors_from_a_file_keep_the_key_and_carry_the_path(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[ingest]\nrcvhwm = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "ingest.rcvhwm"
    assert info.value.path == str(path)
    assert str(info.value).startswith("ingest.rcvhwm: ")


# ---------------------------------------------------------------------------
# changed_keys and RELOADABLE


def test_changed_keys() -> None:
    old = parse_config({"agent": {"id": "gw"}})
    assert changed_keys(old, old) == []
    new = parse_config_text(
        '[agent]\nid = "gw"\nlog_level = "debug"\n[classes]\nlow = ["fault"]\n'
        '[http]\nbind = "127.0.0.1:9090"\n[upstream.curve]\n'
        'secret_key_file = "/k/s"\nallowed_keys_dir = "/k"\n'
    )
    assert changed_keys(old, new) == [
        "agent.log_level",
        "upstream.curve.secret_key_file",
        "upstream.curve.allowed_keys_dir",
        "http.bind",
        "classes.critical",
        "classes.low",
    ]
    assert changed_keys(new, old) == changed_keys(old, new)


def test_changed_keys_knows_every_key() -> None:
    old = parse_config({})
    new = Settings(
        agent=dataclasses.replace(old.agent, id=old.agent.id + "x", log_level="error"),
        ingest=IngestSettings(
            ("tcp://*:1",),
            ("tcp://h:2",),
            64,
            1,
            CurveSettings("/a", "/b"),
            insecure_plaintext=True,
            priority_bind=("tcp://*:5",),
            priority_connect=("tcp://h:6",),
            rcvbuf_bytes=4096,
            max_peers=1,
        ),
        upstream=UpstreamSettings(
            ("tcp://*:3",),
            ("tcp://h:4",),
            1,
            1024,
            0,
            1,
            4096,
            CurveSettings("/c", "/d"),
            insecure_plaintext=True,
        ),
        buffer=BufferSettings(4 * MiB, 0, 1.0),
        spill=SpillSettings("/x", MiB, 10, ("low",)),
        http=HttpSettings("::1", 0, ("gw.example",)),
        classes=ClassRules(
            {
                EventClass.CRITICAL: ("a",),
                EventClass.HIGH: ("b",),
                EventClass.NORMAL: ("c",),
                EventClass.LOW: ("d",),
            }
        ),
    )
    assert changed_keys(old, new) == ALL_KEYS


def test_reloadable_keys() -> None:
    assert {
        "agent.log_level",
        "classes.critical",
        "classes.high",
        "classes.normal",
        "classes.low",
        "upstream.batch_max_events",
        "upstream.batch_max_bytes",
        "upstream.linger_ms",
    } == RELOADABLE
    assert set(ALL_KEYS) >= RELOADABLE


# ---------------------------------------------------------------------------
# Property: random valid values survive a trip through TOML text


# One renderer for every test (tests/harness.py); it escapes any text.
render = render_toml


BASE = "/base/etc"
names = st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


def trimmed(inner: st.SearchStrategy[str], edge: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Text of `inner` characters that starts and ends with an `edge` one (no
    leading or trailing white space by construction, so nothing is filtered)."""
    return st.one_of(
        edge,
        st.tuples(edge, st.text(inner, max_size=18), edge).map("".join),
    )


not_space = st.characters(categories=("L", "N", "P", "S"))
# Class types: anything but white space at the ends.
clean_text = trimmed(st.characters(), not_space)
# Agent ids: printable (str.isprintable) by construction.
agent_ids = trimmed(
    st.one_of(not_space, st.characters(categories=("Mn", "Mc")), st.just(" ")), not_space
)
paths = st.one_of(
    st.text(st.characters(blacklist_characters="\0"), min_size=1, max_size=20).map(
        lambda s: "/" + s
    ),
    st.text(st.characters(blacklist_characters="\0"), min_size=1, max_size=20).filter(
        lambda s: not s.startswith(("/", "~"))
    ),
)


def expect_path(path: str) -> str:
    return os.path.normpath(os.path.join(BASE, path))


@st.composite
def endpoint_lists(draw: st.DrawFn, label: str, base_port: int, bind: bool) -> list[str]:
    # Ports and ipc paths are unique per list by construction, so no two
    # endpoints are equal or clash; hosts are random.
    hosts = st.one_of(ipv4, ipv6.map(lambda a: f"[{a}]"), names)
    if bind:
        hosts = st.one_of(hosts, st.just("*"))
    forms = st.one_of(hosts, st.just("ipc"))
    chosen = draw(st.lists(forms, max_size=3))
    return [
        f"ipc:///run/{label}-{i}.sock" if h == "ipc" else f"tcp://{h}:{base_port + i}"
        for i, h in enumerate(chosen)
    ]


@st.composite
def valid_documents(draw: st.DrawFn) -> tuple[dict[str, dict[str, Any]], Settings]:
    doc: dict[str, dict[str, Any]] = {}
    expected = parse_config({})

    def maybe(table: str, key: str, strategy: st.SearchStrategy[Any]) -> Any:
        if draw(st.booleans()):
            value = draw(strategy)
            doc.setdefault(table, {})[key] = value
            return value
        return None

    def pick(table: str, key: str, strategy: st.SearchStrategy[Any], default: Any) -> Any:
        value = maybe(table, key, strategy)
        return default if value is None else value

    agent_id = maybe("agent", "id", agent_ids)
    agent = dataclasses.replace(
        expected.agent,
        id=expected.agent.id if agent_id is None else agent_id,
        log_level=pick(
            "agent", "log_level", st.sampled_from(["debug", "info", "warning", "error"]), "info"
        ),
    )

    def sockets(table: str, ports: int, default: Any) -> dict[str, Any]:
        connect = maybe(table, "connect", endpoint_lists(f"{table}-c", ports + 1000, False))
        bind = maybe(table, "bind", endpoint_lists(f"{table}-b", ports, True))
        if bind is None and connect is None:
            return {"bind": default.bind, "connect": default.connect}
        # Either was given: the default bind no longer applies.
        bind, connect = bind or [], connect or []
        if not bind and not connect:  # no endpoint at all is invalid: give one
            bind = [f"tcp://*:{ports}"]
            doc[table]["bind"] = bind
        return {"bind": tuple(bind), "connect": tuple(connect)}

    def curve(table: str) -> CurveSettings:
        if not draw(st.booleans()):
            return CurveSettings()
        secret, allowed = draw(paths), draw(paths)
        doc[f"{table}.curve"] = {"secret_key_file": secret, "allowed_keys_dir": allowed}
        return CurveSettings(expect_path(secret), expect_path(allowed))

    def plaintext(table: str, sock: Any) -> Any:
        # Protected mode: an endpoint beyond loopback/ipc without CURVE needs
        # insecure_plaintext = true; otherwise it may or may not be written.
        exposed = sock.curve.secret_key_file is None and any(
            not is_local(parse_endpoint(text, bind=bind), bind=bind)
            for texts, bind in ((sock.bind, True), (sock.connect, False))
            for text in texts
        )
        flag = maybe(table, "insecure_plaintext", st.booleans())
        if exposed and not flag:
            doc.setdefault(table, {})["insecure_plaintext"] = flag = True
        return dataclasses.replace(sock, insecure_plaintext=bool(flag))

    d = expected.ingest
    ingest = IngestSettings(
        **sockets("ingest", 10000, d),
        max_frame_bytes=pick(
            "ingest", "max_frame_bytes", st.integers(64, 16 * MiB), d.max_frame_bytes
        ),
        rcvhwm=pick("ingest", "rcvhwm", st.integers(1, 1_000_000), d.rcvhwm),
        curve=curve("ingest"),
    )
    ingest = plaintext("ingest", ingest)
    u = expected.upstream
    upstream = UpstreamSettings(
        **sockets("upstream", 12000, u),
        batch_max_events=pick(
            "upstream", "batch_max_events", st.integers(1, 65535), u.batch_max_events
        ),
        batch_max_bytes=pick(
            "upstream", "batch_max_bytes", st.integers(1024, 16 * MiB), u.batch_max_bytes
        ),
        linger_ms=pick("upstream", "linger_ms", st.integers(0, 10_000), u.linger_ms),
        sndhwm=pick("upstream", "sndhwm", st.integers(1, 100_000), u.sndhwm),
        sndbuf_bytes=pick("upstream", "sndbuf_bytes", st.integers(4096, 64 * MiB), u.sndbuf_bytes),
        curve=curve("upstream"),
    )
    upstream = plaintext("upstream", upstream)
    b = expected.buffer
    reserve = maybe("buffer", "critical_reserve_bytes", st.integers(0, 32 * GiB - 1))
    # Both rules: the reserve under half the budget, and working room left
    # besides the reserve and a max-size frame (sizing.WORKING_ROOM). Left
    # out, the reserve is 1/32 of the budget, at most 16 MiB.
    if reserve is None:
        room = ingest.max_frame_bytes + 3 * MiB
        floor = room + room // 31
        while floor - min(16 * MiB, floor // 32) < room:
            floor += 1
    else:
        floor = max(2 * reserve + 1, reserve + ingest.max_frame_bytes + 3 * MiB)
    budget = pick(
        "buffer", "budget_bytes", st.integers(max(floor, 4 * MiB), 64 * GiB), b.budget_bytes
    )
    if budget < floor:  # the default budget is too small for what was drawn
        budget = draw(st.integers(max(floor, 4 * MiB), 64 * GiB))
        doc["buffer"]["budget_bytes"] = budget
    shrink = maybe(
        "buffer",
        "shrink_after_s",
        st.one_of(
            st.integers(1, 3600),
            st.floats(0, 3600, exclude_min=True, allow_nan=False),
        ),
    )
    buffer = BufferSettings(
        budget_bytes=budget,
        critical_reserve_bytes=min(16 * MiB, budget // 32) if reserve is None else reserve,
        shrink_after_s=b.shrink_after_s if shrink is None else float(shrink),
    )
    s = expected.spill
    spill_dir = maybe("spill", "dir", paths)
    spill = SpillSettings(
        dir=s.dir if spill_dir is None else expect_path(spill_dir),
        max_bytes=pick(
            "spill",
            "max_bytes",
            # sizing.SPILL_MIN_CHUNKS chunks of 256 KiB or a max-size frame.
            st.integers(16 * max(256 * 1024, ingest.max_frame_bytes) + 65536, 2**50),
            s.max_bytes,
        ),
        flush_interval_ms=pick(
            "spill", "flush_interval_ms", st.integers(10, 60_000), s.flush_interval_ms
        ),
    )
    http = expected.http
    if draw(st.booleans()):
        host = draw(st.one_of(ipv4, ipv6, names))
        port = draw(st.one_of(st.just(0), st.integers(20000, 65535)))
        doc["http"] = {"bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
        http = HttpSettings(host, port)
    given: dict[EventClass, tuple[str, ...]] = {}
    pool = draw(st.lists(clean_text, unique=True, max_size=12))
    for cls in EventClass:
        if draw(st.booleans()):
            k = draw(st.integers(0, len(pool)))
            given[cls], pool = tuple(pool[:k]), pool[k:]
            doc.setdefault("classes", {})[cls.wire_name] = list(given[cls])
    claimed = {t for types in given.values() for t in types}
    classes = ClassRules(
        {
            c: given.get(c, tuple(t for t in DEFAULT_RULES[c] if t not in claimed))
            for c in EventClass
        }
    )
    return doc, Settings(agent, ingest, upstream, buffer, spill, http, classes)


@given(valid_documents())
def test_valid_values_round_trip_through_toml_text(
    case: tuple[dict[str, dict[str, Any]], Settings],
) -> None:
    doc, expected = case
    parsed = parse_config_text(render(doc), base_dir=BASE)
    assert parsed == expected
    # Only what was written can differ from the defaults, plus what a written
    # key changes by rule: a given class list edits the others' defaults, and
    # `connect` alone drops the default `bind`.
    written = {f"{table}.{key}" for table, keys in doc.items() for key in keys}
    implied = {f"classes.{n}" for n in CLASS_NAMES} if "classes" in doc else set()
    implied |= {f"{t}.bind" for t in ("ingest", "upstream") if f"{t}.connect" in written}
    if "buffer.budget_bytes" in written:  # the default reserve follows the budget
        implied.add("buffer.critical_reserve_bytes")
    assert set(changed_keys(parse_config({}), parsed)) <= written | implied


def test_a_budget_without_working_room_is_refused() -> None:
    err = error_of(
        "[buffer]\nbudget_bytes = 8388608\ncritical_reserve_bytes = 4194303\n"
        "[ingest]\nmax_frame_bytes = 2097152\n"
    )
    assert err.key == "buffer.budget_bytes"
    assert "ingest.max_frame_bytes" in err.problem and "8388608" in err.problem


def test_a_spill_too_small_for_two_chunks_per_ring_is_refused() -> None:
    err = error_of("[spill]\nmax_bytes = 8388608\n")  # default 1 MiB frames need 16 MiB + 64 KiB
    assert err.key == "spill.max_bytes"
    assert "16842752" in err.problem


def test_the_least_spill_is_the_checked_minimum() -> None:
    """spill.max_bytes' range starts where a config can really start: two
    chunks in the smallest ring, with frames up to one chunk."""
    small_frames = "[ingest]\nmax_frame_bytes = 262144\n"
    s = parse_config_text(small_frames + f"[spill]\nmax_bytes = {SPILL_MIN_BYTES}\n")
    assert s.spill.max_bytes == SPILL_MIN_BYTES == 4259840
    err = error_of(small_frames + f"[spill]\nmax_bytes = {SPILL_MIN_BYTES - 1}\n")
    assert str(err) == "spill.max_bytes: must be an integer >= 4259840, got 4259839"
    # The store agrees: the smallest ring of that spill holds two chunks.
    assert min(ring_sizes(SPILL_MIN_BYTES)) - DATA_OFFSET == 2 * CHUNK_BYTES


# ---------------------------------------------------------------------------
# apply_reloadable: the settings a SIGHUP leaves running


def test_apply_reloadable_takes_exactly_the_reloadable_keys() -> None:
    from agent.config import apply_reloadable

    running = parse_config_text(
        '[agent]\nid = "gw"\nlog_level = "info"\n[upstream]\nbatch_max_events = 64\n'
        'linger_ms = 5\n[ingest]\nrcvhwm = 100\n[spill]\ndir = "/s"\n'
    )
    new = parse_config_text(
        '[agent]\nid = "gw-renamed"\nlog_level = "debug"\n'
        "[upstream]\nbatch_max_events = 16\nbatch_max_bytes = 32768\nlinger_ms = 1\n"
        'sndhwm = 9\n[ingest]\nrcvhwm = 7\n[spill]\ndir = "/s"\n'
        '[classes]\ncritical = ["meltdown"]\n'
    )
    merged = apply_reloadable(running, new)
    assert set(changed_keys(running, merged)) == {
        "agent.log_level",
        "upstream.batch_max_events",
        "upstream.batch_max_bytes",
        "upstream.linger_ms",
        "classes.critical",
    }
    assert set(changed_keys(running, merged)) <= RELOADABLE
    # What needs a restart keeps running as it was, and shows up again next time.
    assert set(changed_keys(merged, new)) == {"agent.id", "ingest.rcvhwm", "upstream.sndhwm"}
    assert merged.agent.id == "gw" and merged.ingest.rcvhwm == 100
    assert merged.classes == new.classes
    assert apply_reloadable(running, running) == running


@given(valid_documents(), valid_documents())
def test_apply_reloadable_invariants(
    a: tuple[dict[str, dict[str, Any]], Settings], b: tuple[dict[str, dict[str, Any]], Settings]
) -> None:
    from agent.config import apply_reloadable

    running, new = a[1], b[1]
    merged = apply_reloadable(running, new)
    assert set(changed_keys(running, merged)) <= RELOADABLE
    assert not set(changed_keys(merged, new)) & RELOADABLE


# -- issue 12, item 1: a small budget alone starts; defaults follow the budget


@pytest.mark.parametrize("budget", [8 * MiB, 16 * MiB, 64 * MiB, 512 * MiB, 4 * GiB])
def test_any_budget_from_8_mib_up_is_valid_with_everything_else_default(budget: int) -> None:
    s = parse_config_text(f"[buffer]\nbudget_bytes = {budget}\n")
    assert s.buffer.budget_bytes == budget
    assert s.buffer.critical_reserve_bytes == min(16 * MiB, budget // 32)


def test_the_default_reserve_is_unchanged_at_the_default_budget() -> None:
    assert parse_config({}).buffer.critical_reserve_bytes == 16 * MiB
    assert BufferSettings().critical_reserve_bytes == 16 * MiB
    # Built in code as in config: the reserve follows the budget given.
    assert BufferSettings(budget_bytes=8 * MiB).critical_reserve_bytes == 256 * 1024
    assert (
        BufferSettings(budget_bytes=8 * MiB, critical_reserve_bytes=0).critical_reserve_bytes == 0
    )


@given(st.integers(8 * MiB, 64 * GiB))
def test_every_budget_from_8_mib_leaves_the_loop_its_room(budget: int) -> None:
    """What agent/loop.py's governor relies on: the non-critical classes keep
    one ingest burst (64 KiB + a max frame + a chunk per class) free below
    their limit and still have room for two chunks to drain into."""
    s = parse_config_text(f"[buffer]\nbudget_bytes = {budget}\n")
    chunk = 256 * 1024
    burst = 64 * 1024 + s.ingest.max_frame_bytes + 4 * chunk
    noncritical_limit = budget - s.buffer.critical_reserve_bytes - burst
    assert noncritical_limit >= 2 * chunk
    assert 0 < s.buffer.critical_reserve_bytes < budget / 2


def test_an_explicit_reserve_too_big_names_both_keys_and_the_smallest_budget() -> None:
    err = error_of("[buffer]\nbudget_bytes = 8388608\ncritical_reserve_bytes = 16777216\n")
    assert err.key == "buffer.critical_reserve_bytes"
    assert "buffer.budget_bytes = 8388608" in err.problem
    assert "smallest buffer.budget_bytes that works with these is 33554433" in err.problem
    parse_config_text("[buffer]\nbudget_bytes = 33554433\ncritical_reserve_bytes = 16777216\n")
    error_of("[buffer]\nbudget_bytes = 33554432\ncritical_reserve_bytes = 16777216\n")


def test_an_explicit_frame_too_big_names_both_keys_and_the_smallest_budget() -> None:
    text = "[buffer]\nbudget_bytes = 8388608\n[ingest]\nmax_frame_bytes = 8388608\n"
    err = error_of(text)
    assert err.key == "buffer.budget_bytes"
    assert "ingest.max_frame_bytes = 8388608 +" in err.problem  # not "(the default)"
    m = re.search(r"works with these is (\d+)", err.problem)
    assert m is not None
    least = int(m.group(1))
    parse_config_text(text.replace("8388608\n[", f"{least}\n["))
    error_of(text.replace("8388608\n[", f"{least - 1}\n["))


def test_4_mib_needs_a_smaller_frame_and_says_so() -> None:
    err = error_of("[buffer]\nbudget_bytes = 4194304\n")
    assert "the smallest buffer.budget_bytes that works with these is 4329604" in err.problem
    assert "or lower ingest.max_frame_bytes" in err.problem
    parse_config_text("[buffer]\nbudget_bytes = 4329604\n")
    s = parse_config_text("[buffer]\nbudget_bytes = 4194304\n[ingest]\nmax_frame_bytes = 65536\n")
    assert s.buffer.critical_reserve_bytes == 131072


@given(
    st.one_of(st.none(), st.integers(0, 64 * MiB)),
    st.integers(64, 16 * MiB),  # the max_frame_bytes ceiling
)
def test_the_smallest_budget_named_is_exactly_the_boundary(reserve: int | None, frame: int) -> None:
    from agent.sizing import smallest_budget

    least = smallest_budget(reserve, frame)
    doc: dict[str, Any] = {"ingest": {"max_frame_bytes": frame}, "buffer": {}}
    if reserve is not None:
        doc["buffer"]["critical_reserve_bytes"] = reserve
    doc["buffer"]["budget_bytes"] = least
    parse_config(doc)
    if least > 4 * MiB:
        doc["buffer"]["budget_bytes"] = least - 1
        with pytest.raises(ConfigError):
            parse_config(doc)


@given(
    st.integers(4 * MiB, 256 * MiB),
    st.one_of(st.none(), st.integers(0, 64 * MiB)),
    st.integers(64, 16 * MiB),  # the max_frame_bytes ceiling
)
def test_every_accepted_buffer_config_builds_the_loops_governor_with_room(
    budget: int, reserve: int | None, frame: int
) -> None:
    """The config check guarantees what agent/loop.py `_open_state` relies on:
    the governor accepts the numbers, and the non-critical classes keep at
    least two chunks below their limit after leaving one burst free (a drain
    takes two chunks, `_can_drain`)."""
    from agent.governor import BufferGovernor
    from agent.queues import CHUNK_BYTES

    doc: dict[str, Any] = {"buffer": {"budget_bytes": budget}, "ingest": {"max_frame_bytes": frame}}
    if reserve is not None:
        doc["buffer"]["critical_reserve_bytes"] = reserve
    try:
        s = parse_config(doc)
    except ConfigError as e:
        assert e.key in ("buffer.budget_bytes", "buffer.critical_reserve_bytes")
        return
    gov = BufferGovernor(
        s.buffer.budget_bytes,
        s.buffer.critical_reserve_bytes,
        s.buffer.shrink_after_s,
        floor_bytes=8 * CHUNK_BYTES,
        burst_bytes=64 * 1024 + frame + 4 * CHUNK_BYTES,  # loop.py: INGEST_MAX_BYTES + ...
    )
    assert gov.noncritical_limit >= 2 * CHUNK_BYTES
    assert gov.can_admit(gov.noncritical_limit)  # a full non-critical side still admits a burst


def test_a_small_spill_names_the_frame_size_and_the_fix() -> None:
    err = error_of("[spill]\nmax_bytes = 8388608\n")
    assert "ingest.max_frame_bytes = 1048576 (the default)" in err.problem
    assert "raise spill.max_bytes to 16842752 or lower ingest.max_frame_bytes" in err.problem
    parse_config_text("[spill]\nmax_bytes = 16842752\n")
    # Any budget from 8 MiB up leaves the default spill size valid.
    parse_config_text("[buffer]\nbudget_bytes = 8388608\n[spill]\nmax_bytes = 2147483648\n")


def test_http_allowed_hosts_reach_the_settings() -> None:
    s = parse_config_text('[http]\nallowed_hosts = ["gw-01.substation.example", "10.20.0.7"]\n')
    assert s.http.allowed_hosts == ("gw-01.substation.example", "10.20.0.7")
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8080)  # bind keeps its default
    err = error_of('[http]\nallowed_hosts = ["gw-01:8080"]\n')
    assert err.key == "http.allowed_hosts" and "item 0" in err.problem


# ---------------------------------------------------------------------------
# The alert lane and the ingest buffers (issue 9, issue 13 item 6)


def test_no_lane_by_default_and_a_lane_shares_the_ingest_settings() -> None:
    assert parse_config({}).ingest.lane is False
    s = parse_config_text(
        '[ingest]\npriority_bind = ["tcp://0.0.0.0:5559"]\n'
        'priority_connect = ["tcp://collector-7:6000"]\nrcvhwm = 50\nrcvbuf_bytes = 8192\n'
        "max_peers = 8\ninsecure_plaintext = true\n"
    )
    assert s.ingest.lane is True
    assert s.ingest.priority_bind == ("tcp://0.0.0.0:5559",)
    assert s.ingest.priority_connect == ("tcp://collector-7:6000",)
    assert (s.ingest.rcvhwm, s.ingest.rcvbuf_bytes, s.ingest.max_peers) == (50, 8192, 8)
    assert parse_config_text('[ingest]\npriority_connect = ["ipc:///run/l"]\n').ingest.lane


@pytest.mark.parametrize(
    ("lines", "key", "other"),
    [
        # The same port as another bind (exactly, or under a wildcard).
        ('priority_bind = ["tcp://0.0.0.0:5557"]', "ingest.priority_bind", "ingest.bind"),
        ('priority_bind = ["tcp://127.0.0.1:5558"]', "ingest.priority_bind", "upstream.bind"),
        ('priority_bind = ["tcp://*:8080"]', "http.bind", "ingest.priority_bind"),
        # The same place as another endpoint, bind or connect.
        (
            'connect = ["tcp://c:1"]\npriority_connect = ["tcp://C:01"]',
            "ingest.priority_connect",
            "ingest.connect",
        ),
        (
            'bind = ["ipc:///run/in"]\npriority_connect = ["ipc:///run/in"]',
            "ingest.priority_connect",
            "ingest.bind",
        ),
    ],
)
def test_a_lane_endpoint_that_clashes_names_both_keys(lines: str, key: str, other: str) -> None:
    http = '\n[http]\nbind = "0.0.0.0:8080"\n' if "8080" in lines else ""
    err = error_of(f"[ingest]\n{lines}\n{http}")
    assert err.key == key
    assert other in err.problem


def test_a_lane_endpoint_shared_with_upstream_connect_is_refused() -> None:
    err = error_of(
        '[ingest]\npriority_connect = ["tcp://h:7"]\n[upstream]\nconnect = ["tcp://h:7"]\n'
    )
    assert err.key == "ingest.priority_connect"
    assert "upstream.connect" in err.problem and "of its own" in err.problem


@pytest.mark.parametrize(
    ("lines", "key", "problem"),
    [
        ('priority_bind = ["tcp://h"]', "ingest.priority_bind", "host:port"),
        ('priority_bind = ["ipc://relative"]', "ingest.priority_bind", "absolute"),
        ('priority_connect = ["tcp://*:5559"]', "ingest.priority_connect", "'*'"),
        ('priority_bind = "tcp://0.0.0.0:5559"', "ingest.priority_bind", "write ["),
        (
            'priority_bind = ["tcp://0.0.0.0:5559", "tcp://0.0.0.0:5559"]',
            "ingest.priority_bind",
            "listed twice",
        ),
        (
            'priority_bind = ["ipc:///run/l"]\npriority_connect = ["ipc:///run/l"]',
            "ingest.priority_connect",
            "also in ingest.priority_bind",
        ),
    ],
)
def test_a_bad_lane_endpoint_names_the_key(lines: str, key: str, problem: str) -> None:
    err = error_of(f"[ingest]\n{lines}\n")
    assert err.key == key
    assert problem in err.problem


def test_a_lane_alone_does_not_replace_the_default_bulk_bind() -> None:
    s = parse_config_text('[ingest]\npriority_bind = ["tcp://127.0.0.1:5559"]\n')
    assert s.ingest.bind == IngestSettings().bind


@pytest.mark.parametrize("key", ["priority_bind", "priority_connect"])
def test_protected_mode_covers_the_lane(key: str) -> None:
    # The lane is an [ingest] socket: a plaintext lane beyond this host needs
    # [ingest.curve] or ingest.insecure_plaintext, like ingest.bind.
    endpoint = "tcp://0.0.0.0:5559" if key == "priority_bind" else "tcp://10.0.0.7:5559"
    err = error_of(f'[ingest]\n{key} = ["{endpoint}"]\n')
    assert err.key == f"ingest.{key}"
    assert "protected mode" in err.problem and endpoint in err.problem
    ok = parse_config_text(f'[ingest]\n{key} = ["{endpoint}"]\ninsecure_plaintext = true\n')
    assert ok.ingest.lane
    loopback = parse_config_text(f'[ingest]\n{key} = ["tcp://127.0.0.1:5559"]\n')
    assert loopback.ingest.lane


def test_lane_keys_need_a_restart() -> None:
    old = parse_config({})
    new = parse_config_text('[ingest]\npriority_bind = ["ipc:///run/lane"]\nmax_peers = 3\n')
    changed = changed_keys(old, new)
    assert changed == ["ingest.priority_bind", "ingest.max_peers"]
    assert not set(changed) & RELOADABLE


def test_write_through_names_classes_in_class_order_and_may_be_off() -> None:
    assert parse_config_text("").spill.write_through == ("critical", "high")
    s = parse_config_text('[spill]\nwrite_through = ["low", "critical"]\n')
    assert s.spill.write_through == ("critical", "low")
    assert parse_config_text("[spill]\nwrite_through = []\n").spill.write_through == ()
