"""The command line: `edge-agent run | check-config | status | tail | send | keygen`.

Exit statuses are part of the contract (INTERFACE.md, "Command line"):
run: 0 after a clean stop, 2 on a bad config (stderr names the key; also a
buffer.budget_bytes that cannot fit under the service's MemoryMax), 1 when
the agent cannot start for another reason (a socket cannot bind, the spill dir
is locked or too small: the message names the endpoint or the path);
check-config: 0 valid, 2 invalid; status: 0 reachable, 1 not; tail: 0 on
SIGINT/SIGTERM, 2 on a bad endpoint or class; send: 0 handed over, 1 not
within 5 s, 2 on bad input. Usage errors (argparse) are 2.

Decisions the contract leaves open (README):
- Ctrl-C (SIGINT) before the agent's loop has taken over its signals (while
  the config is read, the spill files opened, the sockets bound) or in any
  other command stops it with one line on stderr and exit 130 (128 + SIGINT,
  the shell's convention: "interrupted", not "clean stop"), never a traceback.
  Once the loop runs, SIGINT is a clean stop like SIGTERM (exit 0).
- A reader that goes away (`edge-agent status --json | head`, `tail | head`)
  ends the command quietly with the status it would have had (status: 0, the
  agent was reachable; tail: 0): no BrokenPipe traceback.
- Warnings about a valid config (`http.bind` off loopback, plaintext endpoints
  that `insecure_plaintext = true` lets through) go to stderr in check-config
  (still exit 0) and to the log at WARNING in run.
- `keygen --group G` makes the secret key 0640 to group G (and a directory it
  creates 0750 root:G): the layout for a service that runs as its own user
  while root keeps the key (`--group edge-agent`); `--owner U` gives the files
  to U instead (secret 0600).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import agent
from agent.classes import CLASS_NAMES

if TYPE_CHECKING:
    from agent.settings import Settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT

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
    tail = sub.add_parser(
        "tail", help="subscribe like a head-end and print each event as one JSON line"
    )
    tail.add_argument(
        "--upstream",
        metavar="ENDPOINT",
        help="the agent's upstream endpoint (default: from --config, else tcp://127.0.0.1:5558)",
    )
    tail.add_argument(
        "--config", metavar="PATH", help="take the upstream endpoint from this config file"
    )
    tail.add_argument(
        "--class",
        dest="classes",
        action="extend",
        nargs="+",
        default=[],
        choices=CLASS_NAMES,
        metavar="C",
        help=f"only these classes ({', '.join(CLASS_NAMES)}); repeatable; default all",
    )
    send = sub.add_parser("send", help="push test events like a collector (end-to-end check)")
    send.add_argument(
        "--ingest", required=True, metavar="ENDPOINT", help="an ingest endpoint (or the lane's)"
    )
    send.add_argument("--type", required=True, dest="type_", metavar="T", help="the event type")
    send.add_argument("--meter", required=True, metavar="M", help="meter id (digits: an integer)")
    send.add_argument("--count", type=int, default=1, metavar="N", help="events to send (1)")
    keygen = sub.add_parser("keygen", help="write a CURVE key pair (NAME.key, NAME.key_secret)")
    keygen.add_argument(
        "--dir", required=True, metavar="DIR", help="where to write (made 0700, 0750 with --group)"
    )
    keygen.add_argument("--name", required=True, metavar="NAME", help="file name without suffix")
    keygen.add_argument(
        "--owner",
        metavar="USER",
        help="give the new files (and the directory, if made here) to this user",
    )
    keygen.add_argument(
        "--group",
        metavar="GROUP",
        help="give them to this group and let it read the secret (0640): the service's "
        "group, e.g. --group edge-agent",
    )
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


def _keygen(directory: str, name: str, owner: str | None, group: str | None) -> int:
    """`keygen`: a key pair the service can read. Run as root for the packaged
    service, keygen needs --group edge-agent (or --owner edge-agent): without
    it the secret is 0600 root in a 0700 root directory, which the unit's
    user cannot read (issue 12 item 2)."""
    import zmq.auth

    from agent.keys import CurveError, generate_keypair, resolve_group, resolve_user, secret_mode

    try:
        uid = resolve_user(owner) if owner is not None else None
        gid = resolve_group(group) if group is not None else None
        public, secret = generate_keypair(directory, name, owner=uid, group=gid)
    except CurveError as e:
        print(f"edge-agent: keygen: {e}", file=sys.stderr)
        return EXIT_FAILURE
    key = zmq.auth.load_certificate(public)[0].decode("ascii")
    who = [f"owner {owner}"] if owner else []
    who += [f"group {group} may read it"] if group else []
    print(f"public key  {key}")
    print(f"public file {public}  (give it to the peers: it goes in their allowed_keys_dir)")
    print(
        f"secret file {secret}  (mode {', '.join([f'{secret_mode(gid):04o}', *who])}; "
        "stays on this box: secret_key_file)"
    )
    blocked = _unreachable(os.path.dirname(os.path.abspath(secret)), uid, gid)
    if blocked:
        print(f"edge-agent: keygen: warning: {blocked}", file=sys.stderr)
    if os.geteuid() == 0 and uid is None and gid is None:
        # The README's old recipe: a key only root can read, and a service
        # that runs as its own user (issue 12 item 2).
        print(
            "edge-agent: keygen: note: made by root without --group/--owner, so only root "
            "can read the secret; for the packaged service (user edge-agent) use "
            "--group edge-agent, or chgrp edge-agent the secret and its directory "
            "and chmod g+r / g+x them",
            file=sys.stderr,
        )
    return EXIT_OK


def _unreachable(directory: str, uid: int | None, gid: int | None) -> str | None:
    """A warning when `directory` (existing before keygen, so left as it was)
    cannot be searched by the --owner / --group the key was made for."""
    if uid is None and gid is None:
        return None
    import stat

    st = os.stat(directory)
    mode = st.st_mode
    if uid is not None and (uid == 0 or (st.st_uid == uid and mode & stat.S_IXUSR)):
        return None
    if gid is not None and st.st_gid == gid and mode & stat.S_IXGRP:
        return None
    if mode & stat.S_IXOTH:
        return None
    return (
        f"{directory} (mode {stat.S_IMODE(mode):04o}, uid {st.st_uid}, gid {st.st_gid}) "
        "cannot be searched by that owner or group: the service will not reach its key; "
        f"e.g. chgrp GROUP {directory} && chmod 750 {directory} (with --owner: chown)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Only reached before the loop installs its own SIGINT handler (or in
        # a command without one): nothing was accepted yet, files are closed
        # by the context managers the interrupt unwound through.
        print("edge-agent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        from agent import status

        return _to_stdout(lambda: status.main(args.url or status.DEFAULT_URL, args.json))
    if args.command == "keygen":
        return _keygen(args.dir, args.name, args.owner, args.group)
    if args.command == "tail":
        return _tail(args.upstream, args.config, args.classes)
    if args.command == "send":
        from agent import send

        return _to_stdout(lambda: send.main(args.ingest, args.type_, args.meter, args.count))

    settings = _load(args.config)
    if settings is None:
        return EXIT_BAD_CONFIG
    from agent.config import http_bind_warning
    from agent.settings import Settings

    assert isinstance(settings, Settings)
    from agent.protected import plaintext_warnings

    warnings = [
        http_bind_warning(settings.http),
        *plaintext_warnings(settings.ingest, settings.upstream),
    ]
    if args.command == "check-config":
        for warning in filter(None, warnings):
            print(f"edge-agent: warning: {warning}", file=sys.stderr)
        print(f"{args.config}: ok")
        return EXIT_OK

    from agent.loop import StartupError, run_agent

    setup_logging(settings.agent.log_level)
    for warning in filter(None, warnings):
        logging.getLogger("agent").warning("%s", warning)
    if not _memory_fits(settings):
        return EXIT_BAD_CONFIG
    try:
        return run_agent(settings, args.config)
    except StartupError as e:
        logging.getLogger("agent").error("cannot start: %s", e)
        return EXIT_FAILURE


def _memory_fits(settings: Settings) -> bool:
    """The budget against the cgroup's MemoryHigh/MemoryMax, before anything is
    opened (issue 12 item 5). A budget over MemoryMax is a config problem
    (exit 2: the unit's RestartPreventExitStatus=2 keeps systemd from
    restarting into the same refusal); over MemoryHigh is a WARNING. Only at
    `run`: check-config may run in another cgroup (a shell, config management)
    whose limits say nothing about the service's."""
    from agent import cgroup

    log = logging.getLogger("agent")
    try:
        warning = cgroup.check_budget(settings.buffer.budget_bytes, cgroup.read_limits())
    except cgroup.MemoryLimitError as e:
        log.error("cannot start: %s", e)
        return False
    if warning:
        log.warning("%s", warning)
    return True


def _tail(upstream: str | None, config: str | None, classes: list[str]) -> int:
    from agent import tail

    endpoint = upstream
    if endpoint is None and config is not None:
        settings = _load(config)
        if settings is None:
            return EXIT_BAD_CONFIG
        from agent.settings import Settings

        assert isinstance(settings, Settings)
        try:
            endpoint = tail.endpoint_from_settings(settings)
        except tail.TailError as e:
            print(f"edge-agent tail: {config}: {e}", file=sys.stderr)
            return EXIT_USAGE
    return _to_stdout(lambda: tail.main(endpoint or tail.DEFAULT_UPSTREAM, classes))


def _to_stdout(command: Callable[[], int]) -> int:
    """Run a command that prints to stdout; if the reader goes away (`| head`),
    end quietly with the status the command had reached."""
    status = EXIT_OK
    try:
        status = command()
        sys.stdout.flush()  # inside the try: a late EPIPE surfaces here, not at exit
    except BrokenPipeError:
        # Python would flush stdout again at exit and print "Exception
        # ignored ... BrokenPipeError": point the descriptor at /dev/null
        # (the recipe in the signal module's documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return status


if __name__ == "__main__":
    sys.exit(main())
