"""Workers to writer: one Unix-socket connection per sending process.

A shared multiprocessing queue serialises its senders with one lock and its readers
with another, and a process killed while holding either (a worker in the middle of a
shipment, the writer waiting for one) stops every shipment after it for good. Here
each sender has its own connection to the writer's listening socket, an abstract one
(no file, nothing to clean up) that accepts only peers running as the writer's own
user or root. A sender that dies tears at most its own last message, which the writer
sees as end-of-file and counts once the sender is gone; a writer that dies is replaced
by one listening at the same address, and every sender reconnects and resends what it
had not delivered whole (what had reached the dead writer but was not yet stored, about
one flush interval, is lost with it). A sender that stops while the writer lags hands
back what it could not deliver, and keep() writes it into a file beside the database
that the next writer reads first (kept_files(), read_kept()); a message it cut off on
the way is then not counted as lost.

Messages are pickles behind a 4-byte big-endian length, on the socket and in those files.
"""
from __future__ import annotations

import collections
import glob
import os
import pickle
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from sensor.limits import DEFAULT_LIMITS

RECONNECT_WAIT_S = 0.2
"""Pause between attempts to reach the writer (it may be starting, or restarting)."""
MAX_MESSAGE_BYTES = 1 << 30
"""A length header above this is not a shipment: the connection is dropped and counted."""
KEPT_PREFIX, KEPT_SUFFIX = "shipments-", ".kept"
"""Names of the files that hold shipments a stopping sender could not deliver."""
SET_ASIDE_SUFFIX = ".bad"
"""Added to the name of a kept file the writer could not read or merge."""
ABANDON_WAIT_S = 2.0
"""How long a closing sender waits for its delivery thread to let go of a shipment it
was still writing when the sender gave up on the writer."""
_HEADER = struct.Struct("!I")
_PEERCRED = struct.Struct("3i")          # pid, uid, gid


def new_address() -> str:
    """An abstract socket address unique to this sensor."""
    return f"\0dnssensor-{os.getpid()}-{os.urandom(6).hex()}"


class _CutOff(Exception):
    """A connection that ended in the middle of a message."""


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None at end-of-file before the first; _CutOff at end-of-file within,
    OSError when the connection breaks."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise _CutOff()
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class Inbox:
    """The writer's end: accepts senders and hands over what they shipped."""

    def __init__(self, address: str, kept_folder: str | None = None) -> None:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(address)
        self._listener.listen(64)
        self._conns: list[socket.socket] = []
        self._pids: dict[socket.socket, int] = {}
        self._kept_folder = kept_folder
        self._torn = 0
        self.cut_off: list[int] = []
        """Senders (pids) whose connection ended in the middle of a message, not yet judged:
        while one lives it may still keep that shipment on disk (it gave up on a writer that
        lagged); once it is gone without a kept file, the shipment is lost (see `torn`)."""
        self.refused = 0          # peers running as another user
        self.last_refused: tuple[int, int] | None = None    # (pid, uid) of the latest
        self.idle = False         # the last receive() saw nothing at all: no data, peer or goodbye

    @property
    def torn(self) -> int:
        """Shipments lost on the way: not shipments at all, or cut off by a sender that is
        gone and kept no file of them."""
        waiting = []
        for pid in self.cut_off:
            if _alive(pid):
                waiting.append(pid)
            elif self._kept_folder is None or not kept_by(self._kept_folder, pid):
                self._torn += 1
        self.cut_off = waiting
        return self._torn

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
                        raise ValueError(f"a message of {size} bytes")
                    data = _read_exactly(sock, size) if size else b""
                    if data is None:
                        raise _CutOff()
                    out.append(pickle.loads(data))
                    continue
            except (_CutOff, OSError):
                self.cut_off.append(self._pids[sock])
            except Exception:                 # not a shipment: too large, or no pickle of one
                self._torn += 1
            sock.close()                      # the sender is gone
            self._conns.remove(sock)
            del self._pids[sock]
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
        self._pids[sock] = pid

    def close(self) -> None:
        for sock in [self._listener] + self._conns:
            sock.close()
        self._conns.clear()
        self._pids.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


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
        self._abandoned = False       # given up on the writer: start no new send
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
                if not self._backlog or self._abandoned:
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
                        if self._abandoned or self._closing and self._give_up_at < time.monotonic():
                            return
                    time.sleep(RECONNECT_WAIT_S)
            with self._cond:
                self._bytes -= len(self._backlog.popleft())
                self._cond.notify_all()

    def close(self, timeout_s: float) -> list[bytes]:
        """Deliver what is queued within timeout_s; returns the shipments left undelivered,
        pickled, oldest first. One the writer was still reading when time ran out is among
        them: the writer drops its cut-off copy, and counts it lost unless this process
        keeps the shipment (keep()) before it exits."""
        with self._cond:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():           # stuck writing to a writer that does not read
            with self._cond:
                self._abandoned = True
            sock = self._sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)     # wakes the blocked send (close would not)
                except OSError:
                    pass
            self._thread.join(ABANDON_WAIT_S)
        if self._sock is not None:
            self._sock.close()
        with self._cond:
            return list(self._backlog)


def keep(folder: str, sender: str, shipments: list[bytes]) -> str:
    """Write pickled shipments into a new file in folder (made whole or not at all) for the
    next writer; returns its path. OSError when the disk refuses."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in sender)
    path = os.path.join(folder, f"{KEPT_PREFIX}{safe}-{os.getpid()}-{time.time_ns()}{KEPT_SUFFIX}")
    part = path + ".part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for data in shipments:
                f.write(_HEADER.pack(len(data)))
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(part, path)
    except BaseException:
        try:
            os.unlink(part)
        except OSError:
            pass
        raise
    return path


def kept_files(folder: str) -> list[tuple[str, int]]:
    """The files keep() wrote into folder with their sizes, oldest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(folder), f"{KEPT_PREFIX}*{KEPT_SUFFIX}")):
        try:
            st = os.stat(path)
        except OSError:               # stored and removed meanwhile
            continue
        found.append((st.st_mtime_ns, path, st.st_size))
    return [(path, size) for _, path, size in sorted(found)]


def set_aside(path: str) -> str:
    """Rename a kept file that cannot be stored, so no writer meets it again; its new name."""
    os.rename(path, path + SET_ASIDE_SUFFIX)
    return path + SET_ASIDE_SUFFIX


def set_aside_files(folder: str) -> list[str]:
    """The kept files of folder that were set aside."""
    return glob.glob(os.path.join(glob.escape(folder), f"{KEPT_PREFIX}*{KEPT_SUFFIX}{SET_ASIDE_SUFFIX}"))


def kept_by(folder: str, pid: int) -> bool:
    """Whether the process pid kept shipments in folder (a whole file: one it had not
    finished when it died holds nothing)."""
    return any(_keeper(path) == pid
               for path in glob.glob(os.path.join(glob.escape(folder), f"{KEPT_PREFIX}*{KEPT_SUFFIX}")))


def unfinished_kept(folder: str) -> list[str]:
    """Files keep() began in folder and never finished, their writer gone (killed while
    it wrote)."""
    return [path for path in glob.glob(os.path.join(glob.escape(folder), f"{KEPT_PREFIX}*{KEPT_SUFFIX}.part"))
            if (pid := _keeper(path)) is not None and not _alive(pid)]


def _keeper(path: str) -> int | None:
    """The pid in a kept file's name (shipments-SENDER-PID-NS.kept)."""
    parts = os.path.basename(path).split(KEPT_SUFFIX)[0].rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def read_kept(path: str) -> Iterator[Any]:
    """The shipments of one kept file, one at a time (a file holds up to a worker's whole
    backlog); ValueError where it is not whole."""
    with open(path, "rb") as f:
        while header := f.read(_HEADER.size):
            if len(header) < _HEADER.size:
                raise ValueError(f"cut off at byte {f.tell() - len(header)}")
            (size,) = _HEADER.unpack(header)
            at = f.tell()
            data = f.read(size) if size <= MAX_MESSAGE_BYTES else b""
            if len(data) < size:
                raise ValueError(f"cut off at byte {at}")
            try:
                item = pickle.loads(data)
            except Exception as e:       # a damaged pickle raises about anything
                raise ValueError(f"not a shipment at byte {at} ({e})") from None
            yield item
