"""Relay Jupyter's channels from the ports Jupyter knows to the kernel rank's ports.

The front sockets bind the connection file's addresses on the Jupyter host, so every
frontend (JupyterLab, console, nbclient) connects as to any kernel. The back sockets
connect to the kernel rank wherever the launcher put it. Messages pass unchanged (they
stay signed with the connection key); the relay reads only the headers it needs:

- shell ROUTER <-> DEALER, control ROUTER <-> DEALER, stdin ROUTER <-> DEALER: the broker
  pattern. The kernel sees the relay's identity in front of the frontend's, and routes
  its replies back through both. Shell and stdin use one identity, because the kernel
  sends input requests to the identity of the shell request.
- iopub XPUB <-> XSUB: subscriptions go up, so the kernel's iopub welcome reaches each
  new frontend; messages come down.
- heartbeat: answered here (a C-level echo thread), since the supervisor is what Jupyter
  sees as the kernel: it is alive for as long as it owns a job or is starting one.

Execute requests in flight are remembered (idents and header) so that a job that dies
under them can still get its cell an error reply.
"""
from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from jupyter_client.session import Session

DELIMITER = b"<IDS|MSG>"
IDENTITY = b"mpi-kernel-relay"
ROUTED = ("shell", "control", "stdin")
WELCOME_WAIT = 3.0


def split(frames: list[bytes]) -> tuple[list[bytes], dict, dict]:
    """(idents, header, parent header) of a wire message; the rest stays undecoded."""
    i = frames.index(DELIMITER)
    return frames[:i], json.loads(frames[i + 2]), json.loads(frames[i + 3])


def endpoint(transport: str, ip: str, port: int) -> str:
    """A zmq address as Jupyter writes them: tcp://IP:PORT, or ipc://PATH-PORT."""
    return f"ipc://{ip}-{port}" if transport == "ipc" else f"{transport}://{ip}:{port}"


def mentions(frames: list[bytes], *names: bytes) -> bool:
    """Whether the header frame contains one of `names` (a cheap test before decoding it)."""
    try:
        header = frames[frames.index(DELIMITER) + 2]
    except (ValueError, IndexError):
        return False
    return any(name in header for name in names)


class Heartbeat(threading.Thread):
    """Echo heartbeats on the connection file's hb port, in C (zmq.device)."""

    def __init__(self, address: str) -> None:
        super().__init__(name="mpi-kernel-heartbeat", daemon=True)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.bind(address)

    def run(self) -> None:
        try:
            zmq.device(zmq.QUEUE, self.socket, self.socket)
        except zmq.ZMQError:  # the context is being terminated: we are exiting
            self.socket.close(linger=0)

    def stop(self) -> None:
        self.context.term()


class Relay:
    """The five channels between Jupyter and the kernel rank."""

    def __init__(self, context: zmq.Context, connection: dict, session: "Session") -> None:
        self.context, self.connection, self.session = context, connection, session
        self.front: dict[str, zmq.Socket] = {}
        self.back: dict[str, zmq.Socket] = {}
        self.executing: dict[str, tuple[list[bytes], dict]] = {}  # msg_id -> (idents, header)
        self.counts: dict[str, int] = {}  # msg_id -> execution count, from the kernel's execute_input
        self.held: list[list[bytes]] = []  # control messages that came while detached
        self.subscribed = False  # the back iopub's subscription has reached the kernel
        self.failure: dict | None = None  # standing in for a kernel that cannot start (stand_in)
        self.attached_at = 0.0
        kinds = {"shell": zmq.ROUTER, "control": zmq.ROUTER, "stdin": zmq.ROUTER, "iopub": zmq.XPUB}
        for channel, kind in kinds.items():
            sock = context.socket(kind)
            sock.linger = 1000
            if channel in ("shell", "stdin", "control"):
                sock.router_handover = 1  # a frontend reconnecting with its identity takes over
            if channel == "iopub":
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # each frontend's subscription goes up
            sock.bind(self.address(channel))
            self.front[channel] = sock
        self.heartbeat = Heartbeat(self.address("hb"))
        self.heartbeat.start()

    def address(self, channel: str) -> str:
        """Where the frontends connect: the connection file's address."""
        c = self.connection
        return endpoint(c.get("transport", "tcp"), c["ip"], c[f"{channel}_port"])

    # -- the kernel rank's end ------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self.back)

    def attach(self, transport: str, ip: str, ports: dict[str, int],
               curve_serverkey: str | None = None) -> None:
        """Connect the back sockets to the kernel rank's ports (as CurveZMQ clients when it
        gave a public key); pass on held control messages."""
        keys = zmq.curve_keypair() if curve_serverkey else None
        for channel in (*ROUTED, "iopub"):
            sock = self.context.socket(zmq.XSUB if channel == "iopub" else zmq.DEALER)
            sock.linger = 0
            if channel != "iopub":
                sock.setsockopt(zmq.IDENTITY, IDENTITY)
            if keys:
                sock.curve_serverkey = curve_serverkey.encode()
                sock.curve_publickey, sock.curve_secretkey = keys
            sock.connect(endpoint(transport, ip, ports[channel]))
            self.back[channel] = sock
        self.back["iopub"].send(b"\x01")  # everything: frontends that subscribed earlier get it too
        # Until the kernel answers that subscription (its iopub welcome, JEP 65), what it
        # publishes would be lost: frontend requests wait in the front sockets till then,
        # or for WELCOME_WAIT s (ipykernel < 7 sends no welcome).
        self.subscribed = False
        self.attached_at = time.monotonic()
        for frames in self.held:
            self.back["control"].send_multipart(frames)
        self.held = []

    def detach(self) -> None:
        for sock in self.back.values():
            sock.close()
        self.back = {}

    def sockets(self) -> list[zmq.Socket]:
        """What the supervisor's loop should poll now."""
        if not self.attached:
            return [self.front["control"], self.front["iopub"], *([self.front["shell"]] if self.failure else [])]
        if not self.subscribed and time.monotonic() < self.attached_at + WELCOME_WAIT:
            return [self.front["iopub"], *self.back.values()]
        return [*self.front.values(), *self.back.values()]

    # -- moving messages ------------------------------------------------------------------
    def forward(self, sock: zmq.Socket) -> list[tuple[str, Any]]:
        """Move every waiting message on `sock`; return what the supervisor must know:
        ("shutdown", (idents, header, restart)) for a shutdown request."""
        events: list[tuple[str, Any]] = []
        channel, front = self._channel_of(sock)
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return events
            if channel == "iopub":
                if front:
                    if self.attached:  # a subscription; while detached the next attach subscribes
                        self.back["iopub"].send_multipart(frames)
                else:
                    self.subscribed = True  # the welcome, or anything: the subscription is in
                    self.front["iopub"].send_multipart(frames)
                    self._note_count(frames)
                continue
            if front:
                events.extend(self._from_frontend(channel, frames))
            else:
                self._from_kernel(channel, frames)

    def _channel_of(self, sock: zmq.Socket) -> tuple[str, bool]:
        for channel, s in self.front.items():
            if s is sock:
                return channel, True
        for channel, s in self.back.items():
            if s is sock:
                return channel, False
        raise KeyError("not a relay socket")

    # Each message is passed on first and looked at after, and only headers that name one of
    # the few types the relay needs are decoded: this is the path every cell's messages take.
    def _from_frontend(self, channel: str, frames: list[bytes]) -> list[tuple[str, Any]]:
        if self.attached:
            self.back[channel].send_multipart(frames)
        elif self.failure is not None and mentions(frames, b"kernel_info_request", b"execute_request"):
            self._answer_failed(channel, frames)
            return []
        events = []
        if channel in ("shell", "control") and mentions(frames, b"execute_request", b"shutdown_request"):
            idents, header, _ = split(frames)
            if header.get("msg_type") == "execute_request":
                self.executing[header["msg_id"]] = (idents, header)
            elif header.get("msg_type") == "shutdown_request":
                content = self.session.unpack(frames[frames.index(DELIMITER) + 5])
                events.append(("shutdown", (idents, header, bool(content.get("restart")))))
        if not self.attached and channel == "control" and not events:
            self.held.append(frames)
        return events

    def _from_kernel(self, channel: str, frames: list[bytes]) -> None:
        self.front[channel].send_multipart(frames)
        if channel == "shell" and mentions(frames, b"execute_reply"):
            _, header, parent = split(frames)
            if header.get("msg_type") == "execute_reply":
                self.executing.pop(parent.get("msg_id"), None)
                self.counts.pop(parent.get("msg_id"), None)

    def _note_count(self, frames: list[bytes]) -> None:
        """Keep the execution count of cells in flight, for an error reply if the job dies."""
        if not self.executing or not mentions(frames, b"execute_input"):
            return
        _, header, parent = split(frames)
        if header.get("msg_type") == "execute_input" and parent.get("msg_id") in self.executing:
            content = self.session.unpack(frames[frames.index(DELIMITER) + 5])
            self.counts[parent["msg_id"]] = content.get("execution_count")

    # -- messages of the supervisor's own ---------------------------------------------------
    def fail_executing(self, ename: str, evalue: str, traceback: list[str]) -> int:
        """End every cell in flight with an error; return how many there were."""
        content = {"ename": ename, "evalue": evalue, "traceback": traceback}
        for msg_id, (idents, header) in self.executing.items():
            self.session.send(self.front["iopub"], "error", content, parent=header)
            self.session.send(self.front["shell"], "execute_reply",
                              {"status": "error", "execution_count": self.counts.get(msg_id), **content},
                              parent=header, ident=idents)
            self.publish_status("idle", header)
        count = len(self.executing)
        self.executing, self.counts = {}, {}
        return count

    def stand_in(self, ename: str, evalue: str, traceback: list[str]) -> None:
        """Answer as the kernel from now on, with this error for every cell: the job cannot
        start until the kernelspec is fixed, and a kernel that died would leave the reason in
        the server's log only (and Jupyter would start it again, in vain)."""
        self.failure = {"ename": ename, "evalue": evalue, "traceback": traceback}
        self.publish_status("idle")

    def _answer_failed(self, channel: str, frames: list[bytes]) -> None:
        idents, header, _ = split(frames)
        if header.get("msg_type") == "kernel_info_request":
            self.session.send(self.front[channel], "kernel_info_reply", {
                "status": "ok", "protocol_version": "5.3", "implementation": "mpi_kernel",
                "implementation_version": "", "banner": self.failure["evalue"],
                "language_info": {"name": "python"}}, parent=header, ident=idents)
            return
        if header.get("msg_type") != "execute_request":
            return
        self.publish_status("busy", header)
        self.session.send(self.front["iopub"], "error", self.failure, parent=header)
        self.session.send(self.front[channel], "execute_reply",
                          {"status": "error", "execution_count": None, **self.failure},
                          parent=header, ident=idents)
        self.publish_status("idle", header)

    def publish_status(self, state: str, parent: dict | None = None) -> None:
        self.session.send(self.front["iopub"], "status", {"execution_state": state}, parent=parent)

    def reply_shutdown(self, idents: list[bytes], header: dict, restart: bool) -> None:
        self.session.send(self.front["control"], "shutdown_reply", {"status": "ok", "restart": restart},
                          parent=header, ident=idents)

    def close(self) -> None:
        self.detach()
        for sock in self.front.values():
            sock.close(linger=500)
        self.heartbeat.stop()
