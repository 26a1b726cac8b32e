"""The command line: `edge-agent run | check-config | status`.

Exit statuses are part of the contract (INTERFACE.md, "Command line"):
run: 0 after a clean stop, 2 on a bad config (stderr names the key), 1 when
the agent cannot start for another reason (a socket cannot bind, the spill dir
is locked or too small: the message names the endpoint or the path);
check-config: 0 valid, 2 invalid; status: 0 reachable, 1 not.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import agent

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent",
        description="Substation gateway agent: meter events in over ZeroMQ, "
        "out to the head-end by priority, never dropped silently.",
    )
    p.add_argument("--version", action="version", version=f"edge-agent {agent.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent in the foreground until SIGTERM/SIGINT")
    run.add_argument("--config", required=True, metavar="PATH", help="the TOML config file")
    check = sub.add_parser("check-config", help="validate a config file and exit (0 valid, 2 not)")
    check.add_argument("--config", required=True, metavar="PATH")
    status = sub.add_parser("status", help="show what a running agent is doing")
    status.add_argument("--url", default=None, help="the agent's HTTP base URL")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    keygen = sub.add_parser("keygen", help="write a CURVE key pair (NAME.key, NAME.key_secret)")
    keygen.add_argument("--dir", required=True, metavar="DIR", help="where to write (made 0700)")
    keygen.add_argument("--name", required=True, metavar="NAME", help="file name without suffix")
    return p


def setup_logging(level: str) -> None:
    """Log to stderr, one line per record. Under systemd (JOURNAL_STREAM set)
    the timestamp is left to journald and the level goes in a <N> prefix it
    understands (sd-daemon(3)), so `journalctl -p warning` works."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))


class _JournalFormatter(logging.Formatter):
    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}

    def format(self, record: logging.LogRecord) -> str:
        prio = self._PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def _load(path: str) -> object:
    from agent.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        print(f"edge-agent: config error: {e}", file=sys.stderr)
        return None


def _keygen(directory: str, name: str) -> int:
    import zmq.auth

    from agent.keys import CurveError, generate_keypair

    try:
        public, secret = generate_keypair(directory, name)
    except CurveError as e:
        print(f"edge-agent: keygen: {e}", file=sys.stderr)
        return EXIT_FAILURE
    key = zmq.auth.load_certificate(public)[0].decode("ascii")
    print(f"public key  {key}")
    print(f"public file {public}  (give it to the peers: it goes in their allowed_keys_dir)")
    print(f"secret file {secret}  (mode 0600, stays on this box: secret_key_file)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        from agent import status

        return status.main(args.url or status.DEFAULT_URL, args.json)
    if args.command == "keygen":
        return _keygen(args.dir, args.name)

    settings = _load(args.config)
    if settings is None:
        return EXIT_BAD_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: ok")
        return EXIT_OK

    from agent.loop import StartupError, run_agent
    from agent.settings import Settings

    assert isinstance(settings, Settings)
    setup_logging(settings.agent.log_level)
    try:
        return run_agent(settings, args.config)
    except StartupError as e:
        logging.getLogger("agent").error("cannot start: %s", e)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
