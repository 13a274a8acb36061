"""Logging under the `mpi_kernel` logger, with the guide's origin in every record.

Each record made in this process gets an `origin` attribute (host:MPIClient,
host:MPIServer-N). On servers a handler forwards records to the client, which
re-emits them into its own logging tree, so one log shows the whole job.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

logger = logging.getLogger("mpi_kernel")
FORMAT = "%(asctime)s %(levelname)-7s %(origin)s %(message)s"
_origin = "?"


def install_origin(origin: str) -> None:
    """Make every LogRecord created in this process carry `origin` (idempotent)."""
    global _origin
    first = _origin == "?"
    _origin = origin
    if not first:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.origin = _origin
        return record

    logging.setLogRecordFactory(factory)


class ForwardHandler(logging.Handler):
    """Server side: send each record to the client as a plain dict."""

    def __init__(self, send: Callable[[dict], None]) -> None:
        super().__init__()
        self._send = send
        self._busy = threading.local()  # a failing send must not log into itself

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._send({"name": record.name, "levelno": record.levelno,
                        "levelname": record.levelname, "msg": message, "created": record.created,
                        "origin": getattr(record, "origin", _origin), "process": record.process,
                        "threadName": record.threadName})
        except Exception:  # the client may be gone during shutdown
            pass
        finally:
            self._busy.on = False


def install_forwarding(send: Callable[[dict], None], level: int) -> None:
    """Server side: forward `mpi_kernel` records at `level` and above to the client.

    Root-logger records at WARNING and above (user code's warnings) are forwarded
    too, so they reach the client instead of mpiexec's log.
    """
    handler = ForwardHandler(send)
    logger.setLevel(level)
    logger.propagate = False
    logger.addHandler(handler)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)


def reemit(record: dict) -> None:
    """Client side: hand a forwarded record to the local logging tree.

    Records of other loggers (user code's warnings) go through `mpi_kernel.remote`,
    so the client's mpi_kernel handlers show them with their origin too.
    """
    rec = logging.makeLogRecord(record)
    name = rec.name if rec.name.startswith("mpi_kernel") else "mpi_kernel.remote"
    logging.getLogger(name).handle(rec)


def configure_console(level: int | str = logging.WARNING) -> None:
    """Script mode: print `mpi_kernel` records with their origin to stderr."""
    if any(getattr(h, "_mpi_kernel_console", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._mpi_kernel_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
