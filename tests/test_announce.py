"""agent/announce.py: the start-up lines, the stop line, the SIGHUP decision."""

from __future__ import annotations

import dataclasses
import logging

from agent.announce import endpoint_list, plan_reload, startup_lines, stopped_line
from agent.config import RELOADABLE, parse_config_text


def test_endpoint_list_names_binds_then_connects() -> None:
    assert endpoint_list(["tcp://0.0.0.0:5557"], []) == "bind tcp://0.0.0.0:5557"
    assert endpoint_list(["ipc:///a", "ipc:///b"], ["tcp://h:1"]) == (
        "bind ipc:///a, ipc:///b connect tcp://h:1"
    )
    assert endpoint_list([], []) == "none"


def test_startup_lines_name_everything_a_technician_looks_for() -> None:
    s = parse_config_text(
        '[ingest]\nbind = ["tcp://127.0.0.1:5557"]\npriority_bind = ["tcp://127.0.0.1:5559"]\n'
        '[upstream]\nconnect = ["tcp://127.0.0.1:7000"]\n[spill]\ndir = "/var/spill"\n'
    )
    where, endpoints = startup_lines(
        s,
        "/etc/edge-agent/agent.toml",
        ingest_path="compiled",
        core="compiled ingest core (agent/_speedups)",
        readers=["compiled", "compiled"],
        http_address=("::1", 8080),
    )
    assert where == (
        "config /etc/edge-agent/agent.toml; spill dir /var/spill; ingest path compiled "
        "(compiled ingest core (agent/_speedups); burst reader compiled/compiled)"
    )
    assert endpoints == (
        "endpoints: ingest bind tcp://127.0.0.1:5557; lane bind tcp://127.0.0.1:5559; "
        "upstream connect tcp://127.0.0.1:7000; "
        "http http://[::1]:8080/api/v1/gateway/backpressure"
    )
    _, no_lane = startup_lines(
        parse_config_text(""),
        None,
        ingest_path="python",
        core="python",
        readers=["python"],
        http_address=("127.0.0.1", 0),
    )
    assert "lane off" in no_lane


def test_the_stop_line_is_an_error_only_when_something_was_lost() -> None:
    assert stopped_line(10, 5, 0) == (
        logging.INFO,
        "stopped: 10 delivered, 5 events parked on disk, nothing lost",
    )
    level, text = stopped_line(10, 5, 3)
    assert level == logging.ERROR and "3 LOST (spill full)" in text


def test_a_reload_applies_the_reloadable_keys_and_lists_the_rest() -> None:
    running = parse_config_text('[agent]\nlog_level = "info"\n[ingest]\nrcvhwm = 100\n')
    new = parse_config_text(
        '[agent]\nlog_level = "debug"\n[ingest]\nrcvhwm = 7\n[classes]\nlow = ["fault"]\n'
    )
    plan = plan_reload(running, new)
    assert set(plan.applied) <= RELOADABLE
    assert "agent.log_level" in plan.applied and "classes.low" in plan.applied
    assert plan.restart == ("ingest.rcvhwm",)
    assert plan.settings.agent.log_level == "debug"
    assert plan.settings.ingest.rcvhwm == 100  # not applied: keeps running as it is
    assert plan_reload(plan.settings, new).applied == ()  # nothing left to apply
    assert dataclasses.replace(plan.settings) == plan.settings


def test_recovery_and_eviction_lines() -> None:
    from agent.announce import eviction_lines, recovery_line

    assert recovery_line(5000, 2) == (
        "spill recovery: 5000 events pending on disk, 2 corrupt records skipped"
    )
    assert eviction_lines([0, 0, 12, 3]) == [
        "memory and spill both full: evicted 12 oldest normal events",
        "memory and spill both full: evicted 3 oldest low events",
    ]
    assert eviction_lines([0, 0, 0, 0]) == []


def test_the_pause_line_warns_and_the_resume_informs() -> None:
    from agent.announce import paused_line

    level, text = paused_line(True, 1000, 2000)
    assert level == logging.WARNING and "1000 bytes in use, budget 2000" in text
    assert paused_line(False, 0, 2000) == (logging.INFO, "ingest resumed")
