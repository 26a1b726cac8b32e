"""Key pairs for the CURVE tests, and the one way a test peer becomes a CURVE client.

Shared by tests/test_curve.py (the guard over ipc://, in-process) and
tests/test_curve_e2e.py (the real agent): key pairs are made by
agent.keys.generate_keypair in <root>/keys, allowed directories hold copies of
chosen public files, and `make_client` sets the three client options on a
socket, or on a Context so that every socket made from it is a client.
"""

from __future__ import annotations

import os
import shutil

import zmq
import zmq.auth

from agent.keys import generate_keypair
from agent.settings import CurveSettings

AGENT = "agent"  # the name of the agent's own key pair


class KeyPairs:
    """Key pairs by name in <root>/keys, made on first use, and allowed dirs."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self.dir = os.path.join(self.root, "keys")
        self.pairs: dict[str, tuple[str, str]] = {}

    def pair(self, name: str) -> tuple[str, str]:
        """(public file, secret file) of `name`."""
        if name not in self.pairs:
            self.pairs[name] = generate_keypair(self.dir, name)
        return self.pairs[name]

    def public(self, name: str) -> bytes:
        """`name`'s public key, Z85."""
        return zmq.auth.load_certificate(self.pair(name)[0])[0]

    def public_file(self, name: str) -> str:
        return self.pair(name)[0]

    def secret_file(self, name: str) -> str:
        return self.pair(name)[1]

    def allowed(self, dirname: str, *names: str) -> str:
        """<root>/dirname holding (at least) these peers' public files."""
        d = os.path.join(self.root, dirname)
        os.makedirs(d, exist_ok=True)
        for name in names:
            shutil.copy(self.pair(name)[0], d)
        return d

    def server(self, dirname: str, *allowed: str) -> CurveSettings:
        """The agent's CurveSettings: its own key pair, these peers allowed."""
        return CurveSettings(self.secret_file(AGENT), self.allowed(dirname, *allowed))

    def make_client(
        self, target: zmq.Socket | zmq.Context, name: str, server_key: bytes | None = None
    ) -> None:
        """Make `target` a CURVE client with `name`'s key pair, talking to the
        agent's public key (or `server_key`). On a Context the options become
        the defaults of the sockets made from it afterwards."""
        public, secret = zmq.auth.load_certificate(self.secret_file(name))
        assert secret is not None
        target.setsockopt(zmq.CURVE_SERVERKEY, server_key or self.public(AGENT))
        target.setsockopt(zmq.CURVE_PUBLICKEY, public)
        target.setsockopt(zmq.CURVE_SECRETKEY, secret)
