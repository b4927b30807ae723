"""Root system test: the capture interface goes away under a running sensor and comes back.

Two namespaces joined by a veth pair; `dnssensor run` captures on the sensor's end
while the client end sends queries. Deleting the pair kills the worker's handle; the
supervisor restarts it with backoff (each restart failing with a plain "no such
device" while the link is gone), and once the link is made again the worker captures
anew. Every query sent while the interface existed is counted. Only the two
namespaces made here are addressed; the sender is bounded in count.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import REPO
from netns import Topology, require_root_tools
from realparts import db_rows as rows, wait_until

CLIENT, SENSOR = "10.98.0.1", "10.98.0.2"
SEND = """
import socket, sys, time, dnslib
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    s.sendto(dnslib.DNSRecord.question(f"q{i}.{sys.argv[2]}.test").pack(), (sys.argv[3], 53))
    time.sleep(0.002)
"""


def send(top: Topology, ns: str, count: int, tag: str) -> None:
    out = top.run(ns, [sys.executable, "-c", SEND, str(count), tag, SENSOR], capture_output=True,
                  text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_worker_outlives_its_interface_going_away(tmp_path):
    require_root_tools()
    top = Topology(f"dsi{os.getpid() % 10000}")
    try:
        c, s = top.add_namespace("c"), top.add_namespace("s")
        top.link(c, "vi0", CLIENT, s, "vi1", SENSOR)
        db = tmp_path / "sensor.db"
        rules = tmp_path / "rules"
        rules.mkdir()
        conf = tmp_path / "sensor.toml"
        conf.write_text(f"""
[sensor]
name = "iface-test"
user = ""
[capture]
interfaces = ["vi1"]
ports = [53]
workers = 1
ring_mib = 8
[network]
resolver_addresses = ["{SENSOR}"]
client_networks = ["10.98.0.0/24"]
[store]
path = "{db}"
flush_interval_s = 0.3
[rules]
dir = "{rules}"
""")
        log_path = tmp_path / "sensor.log"
        log = open(log_path, "w")
        sensor = top.spawn(s, [sys.executable, "-m", "sensor", "run", "--config", str(conf)],
                           cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

        def worker() -> tuple:
            try:
                found = rows(db, "SELECT state, started, restarts FROM workers WHERE worker = 'vi1/0'")
            except Exception:        # not created yet
                return (None, None, 0)
            return found[0] if found else (None, None, 0)

        def queries() -> int:
            try:
                return rows(db, "SELECT coalesce(sum(queries), 0) FROM stats")[0][0]
            except Exception:
                return 0

        assert wait_until(lambda: worker()[0] == "running", 30), log_path.read_text()
        send(top, c, 50, "before")
        assert wait_until(lambda: queries() == 50, 20), (queries(), log_path.read_text())

        gone_at = time.time()
        top.run(s, ["ip", "link", "del", "vi1"], check=True)
        assert wait_until(lambda: worker()[2] >= 2, 30), log_path.read_text()
        top.link(c, "vi0", CLIENT, s, "vi1", SENSOR)
        assert wait_until(lambda: worker()[0] == "running" and (worker()[1] or 0) > gone_at, 60), \
            (worker(), log_path.read_text())
        send(top, c, 70, "after")
        assert wait_until(lambda: queries() == 120, 20), (queries(), log_path.read_text())

        sensor.send_signal(signal.SIGTERM)
        assert sensor.wait(30) == 0
        text = log_path.read_text()
        assert "vi1: no such device (the interface is gone)" in text
        assert "not-yet-activated" not in text
        assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    finally:
        top.close()
