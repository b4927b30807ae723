"""Real components for the engine tests: an rsyslog receiver on loopback.

rsyslogd runs in the foreground with its own configuration, listening on
127.0.0.1 (UDP and TCP, one port) and writing each raw message as one line.
"""
from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import socket
import subprocess
import time
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 10.0

RSYSLOG_CONF = """\
global(workDirectory="{work}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{port}")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="raw" type="string" string="%rawmsg%\\n")
*.* action(type="omfile" file="{out}" template="raw")
"""


RSYSLOG_TLS_CONF = """\
global(workDirectory="{work}" DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{ca}"
       DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="raw" type="string" string="%rawmsg%\\n")
*.* action(type="omfile" file="{out}" template="raw")
"""


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI): (ca, cert, key)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (make test installs it)")
    folder.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=dnssensor test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def free_port() -> int:
    """A port free for both UDP and TCP on loopback."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class Rsyslog:
    def __init__(self, folder: Path, port: int | None = None, netns: str | None = None,
                 tls: bool = False) -> None:
        if not shutil.which("rsyslogd"):
            pytest.skip("rsyslogd is not installed (make test installs it)")
        if tls and not Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so").exists() and not list(
                Path("/usr/lib").glob("**/rsyslog/lmnsd_gtls.so")):
            pytest.skip("rsyslog-gnutls is not installed (make test installs it)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.out = folder / "received.log"
        self.conf = folder / "rsyslog.conf"
        self.pidfile = folder / "rsyslog.pid"
        self.netns = netns
        if tls:
            self.ca, cert, key = make_certificates(folder / "pki")
            self.conf.write_text(RSYSLOG_TLS_CONF.format(work=folder, port=self.port, out=self.out,
                                                         ca=self.ca, cert=cert, key=key))
        else:
            self.conf.write_text(RSYSLOG_CONF.format(work=folder, port=self.port, out=self.out))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Rsyslog":
        cmd = ["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.pidfile)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        self.proc = subprocess.Popen(cmd, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {self.proc.stderr.read().decode()[-500:]}")
            if self._listening():
                return self
            time.sleep(0.1)
        raise RuntimeError("rsyslogd did not start listening")

    def _listening(self) -> bool:
        cmd = ["ss", "-ltn", f"sport = :{self.port}"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        return f":{self.port}" in out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pidfile.exists():
            self.pidfile.unlink()

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def wait_for(self, predicate, timeout_s: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = self.lines()
            if predicate(lines):
                return lines
            time.sleep(0.1)
        return self.lines()


def wait_until(predicate, timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return False


__all__ = ["Rsyslog", "free_port", "wait_until", "live_config", "db_rows", "workers_reporting"]


def live_config(path: Path, *, name: str, db: Path, rules: Path, resolvers: list[str],
                client_networks: list[str], extra: str = "", user: str = "") -> Path:
    """A `dnssensor run` configuration for the test resolvers: both interfaces, two workers
    each, small rings, a fast flush."""
    path.write_text(f"""
[sensor]
name = "{name}"
user = "{user}"
[capture]
interfaces = ["vr0", "vr1"]
ports = [53]
workers = 2
ring_mib = 8
[network]
resolver_addresses = {json.dumps(resolvers)}
client_networks = {json.dumps(client_networks)}
[store]
path = "{db}"
flush_interval_s = 0.3
[rules]
dir = "{rules}"
{extra}""")
    return path


def db_rows(db: Path, sql: str) -> list[tuple]:
    """Read the sensor's database the way analysts do: read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def workers_reporting(db: Path) -> int:
    """Capture workers with a row in `workers` (the writer has one too, not counted)."""
    try:
        return db_rows(db, "SELECT count(*) FROM workers WHERE worker != 'writer'")[0][0] if db.exists() else 0
    except sqlite3.OperationalError:       # created, migrations not yet committed
        return 0
