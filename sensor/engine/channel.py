"""Workers to writer: one Unix-socket connection per sending process.

A shared multiprocessing queue serialises its senders with one lock and its readers
with another, and a process killed while holding either (a worker in the middle of a
shipment, the writer waiting for one) stops every shipment after it for good. Here
each sender has its own connection to the writer's listening socket, an abstract one
(no file, nothing to clean up) that accepts only peers running as the writer's own
user or root. A sender that dies tears at most its own last message, which the writer
sees as end-of-file and counts; a writer that dies is replaced by one listening at the
same address, and every sender reconnects and resends what it had not delivered whole
(what had reached the dead writer but was not yet stored, about one flush interval, is
lost with it).

Messages are pickles behind a 4-byte big-endian length.
"""
from __future__ import annotations

import collections
import os
import pickle
import select
import socket
import struct
import threading
import time
from typing import Any

from sensor.limits import DEFAULT_LIMITS

RECONNECT_WAIT_S = 0.2
"""Pause between attempts to reach the writer (it may be starting, or restarting)."""
MAX_MESSAGE_BYTES = 1 << 30
"""A length header above this is not a shipment: the connection is dropped and counted."""
_HEADER = struct.Struct("!I")
_PEERCRED = struct.Struct("3i")          # pid, uid, gid


def new_address() -> str:
    """An abstract socket address unique to this sensor."""
    return f"\0dnssensor-{os.getpid()}-{os.urandom(6).hex()}"


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None at end-of-file before the first; OSError at end-of-file within."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise OSError("end of file in the middle of a message")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class Inbox:
    """The writer's end: accepts senders and hands over what they shipped."""

    def __init__(self, address: str) -> None:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(address)
        self._listener.listen(64)
        self._conns: list[socket.socket] = []
        self.torn = 0             # shipments cut off by a sender's death, or not shipments at all
        self.refused = 0          # peers running as another user
        self.last_refused: tuple[int, int] | None = None    # (pid, uid) of the latest
        self.idle = False         # the last receive() saw nothing at all: no data, peer or goodbye

    def receive(self, timeout_s: float) -> list[Any]:
        """What arrived within timeout_s (at least one shipment, or none at all)."""
        ready, _, _ = select.select([self._listener] + self._conns, [], [], timeout_s)
        self.idle = not ready
        out = []
        for sock in ready:
            if sock is self._listener:
                self._accept()
                continue
            try:
                header = _read_exactly(sock, _HEADER.size)
                if header is not None:
                    (size,) = _HEADER.unpack(header)
                    if size > MAX_MESSAGE_BYTES:
                        raise OSError(f"a message of {size} bytes")
                    out.append(pickle.loads(_read_exactly(sock, size) or b""))
                    continue
            except (OSError, pickle.UnpicklingError, EOFError):
                self.torn += 1
            sock.close()                      # the sender is gone
            self._conns.remove(sock)
        return out

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid not in (0, os.getuid()):
            self.refused += 1
            self.last_refused = (pid, uid)
            sock.close()
            return
        self._conns.append(sock)

    def close(self) -> None:
        for sock in [self._listener] + self._conns:
            sock.close()
        self._conns.clear()


class Outbox:
    """A sender's end: shipments wait in a backlog bounded by count and by size while a
    thread delivers them, so capture never blocks on the writer. A shipment is pickled as
    it is put, so the backlog holds bytes whose size is known (and far smaller than the
    objects they were)."""

    def __init__(self, address: str, max_backlog: int,
                 max_backlog_bytes: int = DEFAULT_LIMITS.writer_queue_mib << 20) -> None:
        self._address = address
        self._max = max_backlog
        self._max_bytes = max_backlog_bytes
        self._bytes = 0
        self._backlog: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._give_up_at = 0.0
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._deliver, name="outbox", daemon=True)
        self._thread.start()

    def _full(self) -> bool:
        return len(self._backlog) >= self._max or self._bytes >= self._max_bytes

    @property
    def backlog_bytes(self) -> int:
        return self._bytes

    def put(self, item: Any, wait_s: float = 0.0) -> bool:
        """Queue one shipment; False when the backlog stays full for wait_s (keep it and
        merge it into the next). Full is max_backlog shipments or max_backlog_bytes: a
        shipment is taken while the backlog is below its size budget, so the last one
        may take it past by its own size."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._full():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        # Pickled outside the lock, so delivery goes on meanwhile; only the capture
        # loop puts, so the room found above is still there.
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        with self._cond:
            self._backlog.append(data)
            self._bytes += len(data)
            self._cond.notify_all()
        return True

    def _deliver(self) -> None:
        while True:
            with self._cond:
                while not self._backlog and not self._closing:
                    self._cond.wait()
                if not self._backlog:
                    return
                data = self._backlog[0]
            while True:
                try:
                    if self._sock is None:
                        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        self._sock.connect(self._address)
                    self._sock.sendall(_HEADER.pack(len(data)) + data)
                    break
                except OSError:       # no writer (yet, or any more): try again, the whole message
                    if self._sock is not None:
                        self._sock.close()
                        self._sock = None
                    with self._cond:
                        if self._closing and self._give_up_at < time.monotonic():
                            return
                    time.sleep(RECONNECT_WAIT_S)
            with self._cond:
                self._bytes -= len(self._backlog.popleft())
                self._cond.notify_all()

    def close(self, timeout_s: float) -> int:
        """Deliver what is queued within timeout_s; returns the shipments left undelivered."""
        with self._cond:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()
        with self._cond:
            return len(self._backlog)
