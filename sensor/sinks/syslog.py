"""Verdicts to syslog for SIEMs: RFC 5424 with structured data, over UDP, TCP or TLS.

Message body as key=value, CEF or JSON. A sender thread per target does the
network I/O, so submitting never waits on the receiver: messages go to a
bounded in-memory queue, and to a spool file on disk when the queue is full or
the receiver is unreachable. On reconnection the spool is delivered first, so
order is kept; the spool survives a restart of the sensor. Delivery over TCP
and TLS is at least once; UDP has no way to learn of loss (a closed port shows
up as an error on the next send at best), so prefer TCP where every verdict
matters. Only a spool past its size bound drops messages, and counts them.
"""
from __future__ import annotations

import errno
import json
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

from sensor.config import SYSLOG_FACILITIES, SyslogTarget

APP_NAME = "dnssensor"
SD_ID = "dnssensor@32473"
"""Structured-data id. 32473 is the enterprise number RFC 5612 reserves for documentation;
a site with its own number can change it here."""
SEVERITY_CODES = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
CEF_SEVERITY = {"critical": 10, "high": 8, "medium": 5, "low": 3, "info": 1}
SD_FIELDS = ("id", "kind", "severity", "detector", "client", "server", "domain", "count",
             "first_ts", "last_ts", "sensor")
MAX_UDP_MESSAGE = 8192
"""UDP messages are cut to this (RFC 5426 asks receivers to take at least 2048; rsyslog 8 k)."""
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 30.0
CONNECT_TIMEOUT_S = 5.0
_RECORD = struct.Struct("<I")


def _header_field(text: str, limit: int) -> str:
    """A header field as RFC 5424 has it: printable US-ASCII without spaces (1*PRINTUSASCII),
    anything else as '_' (the sensor's name whole is in the structured data), or '-'."""
    return "".join(c if "!" <= c <= "~" else "_" for c in (text or "")[:limit]) or "-"


def _sd_escape(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _cef_header(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _cef_value(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


def _kv_value(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\\'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return s


def format_message(verdict: dict[str, Any], target: SyslogTarget, hostname: str) -> bytes:
    """One verdict as an RFC 5424 message with the chosen body format."""
    severity = verdict.get("severity", "info")
    pri = SYSLOG_FACILITIES[target.facility] * 8 + SEVERITY_CODES.get(severity, 6)
    ts = datetime.fromtimestamp(verdict.get("ts") or time.time(), tz=timezone.utc)
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    host = _header_field(hostname, 255)
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_escape(verdict[k])}"' for k in SD_FIELDS
                               if verdict.get(k) not in (None, "")) + "]"
    evidence = verdict.get("evidence") or {}
    if isinstance(evidence, str):
        evidence = json.loads(evidence)
    if target.format == "json":
        body = json.dumps({**{k: verdict.get(k) for k in SD_FIELDS}, "summary": verdict.get("summary"),
                           "evidence": evidence}, sort_keys=True)
    elif target.format == "cef":
        ext = {"src": verdict.get("client"), "dst": verdict.get("server"),
               "dhost": verdict.get("domain"), "cnt": verdict.get("count"),
               "start": int((verdict.get("first_ts") or 0) * 1000),
               "end": int((verdict.get("last_ts") or 0) * 1000),
               "cs1Label": "detector", "cs1": verdict.get("detector"),
               "cs2Label": "evidence", "cs2": json.dumps(evidence, sort_keys=True),
               "cn1Label": "verdictId", "cn1": verdict.get("id"),
               "dvchost": verdict.get("sensor"), "msg": verdict.get("summary")}
        body = (f"CEF:0|dnssensor|dnssensor|1|{_cef_header(verdict.get('kind'))}|"
                f"{_cef_header(verdict.get('summary'))}|{CEF_SEVERITY.get(severity, 1)}|"
                + " ".join(f"{k}={_cef_value(v)}" for k, v in ext.items() if v not in (None, "")))
    else:
        pairs = {k: verdict.get(k) for k in SD_FIELDS}
        pairs["summary"] = verdict.get("summary")
        pairs["evidence"] = json.dumps(evidence, sort_keys=True, separators=(",", ":"))
        body = " ".join(f"{k}={_kv_value(v)}" for k, v in pairs.items() if v not in (None, ""))
    line = f"<{pri}>1 {stamp} {host} {APP_NAME} {os.getpid()} {verdict.get('kind', '-')} {sd} {body}"
    return line.replace("\n", " ").encode("utf-8")


class SyslogSender:
    """One target: a bounded queue, a spool file, a thread that delivers in order."""

    def __init__(self, target: SyslogTarget, spool_dir: str, hostname: str) -> None:
        self.target = target
        self.hostname = hostname
        safe = f"{target.protocol}-{target.host}-{target.port}".replace(":", "_").replace("/", "_")
        os.makedirs(spool_dir, exist_ok=True)
        self.spool_path = os.path.join(spool_dir, f"syslog-{safe}.spool")
        self.spool_max = target.spool_max_mib * 1024 * 1024
        self.queue: deque[bytes] = deque()
        self.cond = threading.Condition()
        self.counters = {"sent": 0, "spooled": 0, "dropped": 0, "reconnects": 0, "send_errors": 0}
        self.connected = False
        self.last_error = ""
        self._sock: socket.socket | None = None
        self._stop = False
        self._spool_read = 0          # bytes of the spool already delivered
        self._thread = threading.Thread(target=self._run, name=f"syslog {target.label}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------- producer

    def submit(self, verdict: dict[str, Any]) -> None:
        msg = format_message(verdict, self.target, self.hostname)
        with self.cond:
            if self._spool_size() > self._spool_read or len(self.queue) >= self.target.queue_size:
                self._spool_append([msg])
            else:
                self.queue.append(msg)
            self.cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within `timeout`; the rest stays in the spool."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while (self.queue or self._spool_size() > self._spool_read) and time.monotonic() < deadline:
                self.cond.wait(0.05)
            self._stop = True
            self.cond.notify_all()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()) + 1.0)
        with self.cond:
            if self.queue:
                self._spool_append(list(self.queue))
                self.queue.clear()
        self._disconnect()

    def pending(self) -> int:
        with self.cond:
            return len(self.queue) + (1 if self._spool_size() > self._spool_read else 0)

    # ------------------------------------------------------------- spool

    def _spool_size(self) -> int:
        try:
            return os.path.getsize(self.spool_path)
        except OSError:
            return 0

    def _spool_append(self, msgs: list[bytes]) -> None:
        size = self._spool_size()
        data = bytearray()
        for m in msgs:
            if size + len(data) + _RECORD.size + len(m) > self.spool_max:
                self.counters["dropped"] += 1
                continue
            data += _RECORD.pack(len(m)) + m
        if not data:
            return
        try:
            with open(self.spool_path, "ab") as f:
                f.write(data)
                f.flush()
            self.counters["spooled"] += len(msgs)
        except OSError as e:       # full disk: the messages are lost, and counted
            self.counters["dropped"] += len(msgs)
            self.last_error = f"spool: {e}"

    def _spool_next(self) -> bytes | None:
        try:
            with open(self.spool_path, "rb") as f:
                f.seek(self._spool_read)
                head = f.read(_RECORD.size)
                if len(head) < _RECORD.size:
                    return None
                (n,) = _RECORD.unpack(head)
                msg = f.read(n)
                return msg if len(msg) == n else None
        except OSError:
            return None

    # ------------------------------------------------------------- network

    def _connect(self) -> None:
        t = self.target
        family = socket.AF_INET6 if ":" in t.host else socket.AF_INET
        if t.protocol == "udp":
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.connect((t.host, t.port))
        else:
            s = socket.create_connection((t.host, t.port), timeout=CONNECT_TIMEOUT_S)
            if t.protocol == "tls":
                ctx = ssl.create_default_context(cafile=t.ca_file or None)
                if not t.verify:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                s = ctx.wrap_socket(s, server_hostname=t.host)
            s.settimeout(CONNECT_TIMEOUT_S)
        self._sock = s
        self.connected = True

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self.connected = False

    def _peer_closed(self) -> bool:
        """A stream receiver that went away has sent FIN: readable with nothing to read."""
        s = self._sock
        if s is None or self.target.protocol == "udp":
            return False
        try:
            readable, _, _ = select.select([s], [], [], 0)
            if not readable:
                return False
            if isinstance(s, ssl.SSLSocket):
                return s.recv(1) == b""
            return s.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ssl.SSLError):
            return True

    def _send(self, msg: bytes) -> None:
        if self.target.protocol == "udp":
            self._sock.send(msg[:MAX_UDP_MESSAGE])
        else:
            self._sock.sendall(b"%d %s" % (len(msg), msg))     # RFC 6587 octet counting

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            with self.cond:
                while not self._stop and not self.queue and self._spool_size() <= self._spool_read:
                    self.cond.wait(0.5)
                if self._stop:
                    return
            if self._sock is None or self._peer_closed():
                self._disconnect()
                try:
                    self._connect()
                    self.counters["reconnects"] += 1
                    backoff = BACKOFF_START_S
                except OSError as e:
                    self.last_error = str(e)
                    with self.cond:          # keep memory bounded and order intact
                        if self.queue:
                            self._spool_append(list(self.queue))
                            self.queue.clear()
                        self.cond.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
            try:
                self._deliver_one()
            except (OSError, ssl.SSLError) as e:
                self.counters["send_errors"] += 1
                self.last_error = str(e)
                self._disconnect()
                if getattr(e, "errno", None) not in (errno.ECONNREFUSED, errno.EPIPE, errno.ECONNRESET):
                    time.sleep(BACKOFF_START_S)

    def _deliver_one(self) -> None:
        """Send the oldest message (spool first); it leaves the queue only once sent."""
        with self.cond:
            spool_size = self._spool_size()
        if spool_size > self._spool_read:
            msg = self._spool_next()
            if msg is None:                      # torn tail: nothing more to read
                with self.cond:
                    self._reset_spool()
                return
            self._send(msg)
            self.counters["sent"] += 1
            with self.cond:
                self._spool_read += _RECORD.size + len(msg)
                if self._spool_read >= self._spool_size():
                    self._reset_spool()
                self.cond.notify_all()
            return
        with self.cond:
            if not self.queue:
                return
            msg = self.queue[0]
        self._send(msg)
        self.counters["sent"] += 1
        with self.cond:
            self.queue.popleft()
            self.cond.notify_all()

    def _reset_spool(self) -> None:
        try:
            os.unlink(self.spool_path)
        except OSError:
            pass
        self._spool_read = 0
