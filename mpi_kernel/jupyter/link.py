"""The link between the kernel rank and the supervisor: signed JSON lines over one TCP socket.

The supervisor listens; the kernel rank connects to it as soon as MPI is up, says where its
own ports are (`hello`), and then both keep the socket open. Its end is the liveness signal
both ways: the kernel rank aborts the job when the supervisor is gone, and the supervisor
knows the kernel rank is gone. No pids or signals cross hosts.

Each line is `<hex HMAC-SHA256 of the JSON> <JSON>`, keyed with the connection file's key,
so nobody without the key can steer the job or learn where the kernel listens. An empty
key (Jupyter's "no signing") signs nothing, as Jupyter does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import socket
from typing import Any

from ..errors import LinkError

ENV = "MPI_KERNEL_SUPERVISOR"  # JSON: LinkInfo, set by the supervisor for the launcher
MAX_LINE = 1 << 20
FOLDER_PREFIX = "mpi-kernel-"  # the kernel rank's private folder, in its temporary directory


@dataclasses.dataclass(frozen=True)
class LinkInfo:
    """What the kernel rank needs to find and trust its supervisor."""
    host: str            # the supervisor's host name
    addresses: list      # addresses to try from another host, in order
    port: int
    key: str
    signature_scheme: str = "hmac-sha256"
    stop_timeout: float = 1.0

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "LinkInfo | None":
        text = (os.environ if environ is None else environ).get(ENV)
        return cls(**json.loads(text)) if text else None


def sign(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode() if key else b"-"


def encode(key: bytes, message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return sign(key, body) + b" " + body + b"\n"


def decode(key: bytes, line: bytes) -> dict:
    signature, _, body = line.rstrip(b"\n").partition(b" ")
    if not hmac.compare_digest(signature, sign(key, body)):
        raise LinkError("a link message with a wrong signature was dropped")
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise LinkError(f"a malformed link message was dropped: {exc}") from None
    if not isinstance(message, dict) or "kind" not in message:
        raise LinkError("a link message without a kind was dropped")
    return message


class LineReader:
    """Splits what a non-blocking socket delivers into decoded messages."""

    def __init__(self, sock: socket.socket, key: bytes) -> None:
        self.sock, self.key, self._buffer = sock, key, b""

    def read(self) -> tuple[list[dict], bool]:
        """(messages now complete, whether the peer closed the link)."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return [], False
        except OSError:
            data = b""
        self._buffer += data
        if len(self._buffer) > MAX_LINE and b"\n" not in self._buffer:
            self._buffer = b""
            raise LinkError("a link message longer than 1 MiB was dropped")
        *lines, self._buffer = self._buffer.split(b"\n")
        return [decode(self.key, line) for line in lines if line], not data


def send(sock: socket.socket, key: bytes, kind: str, **fields: Any) -> None:
    sock.sendall(encode(key, {"kind": kind, **fields}))


def connect(info: LinkInfo, timeout: float = 10.0) -> tuple[socket.socket, str]:
    """Connect to the supervisor: (socket, the local address Jupyter's channels should bind).

    On the supervisor's own host both ends use loopback only; from another host the local
    address is that of the interface the route to the supervisor leaves by.
    """
    if info.host == socket.gethostname():
        sock = socket.create_connection(("127.0.0.1", info.port), timeout=timeout)
        return sock, "127.0.0.1"
    errors = []
    for address in info.addresses:
        try:
            sock = socket.create_connection((address, info.port), timeout=timeout)
        except OSError as exc:
            errors.append(f"{address}: {exc}")
            continue
        return sock, sock.getsockname()[0]
    raise ConnectionError(f"the kernel rank on {socket.gethostname()} cannot reach the Jupyter "
                          f"host's supervisor at port {info.port} ({'; '.join(errors)}). Allow TCP "
                          f"from compute nodes to the Jupyter host, or name a reachable address with "
                          f"`python -m mpi_kernel install --link-address ADDRESS`.")
