"""The live sensor's processes and interfaces: the capture filter for each link type a
live handle can have, and root system tests on a veth pair between two namespaces.

- The capture interface goes away under a running sensor and comes back: deleting the
  pair kills the worker's handle; the supervisor restarts it with backoff (each restart
  failing with a plain "no such device" while the link is gone), and once the link is
  made again the worker captures anew. Every query sent while the interface existed is
  counted.
- `any`, libpcap's every-interface pseudo-device (Linux cooked frames, no VLAN filter).
- The writer killed: the supervisor starts another at the same address, the workers
  reconnect; what was sent after the kill is stored, and the restart is on record.
- The writer stops reading while queries keep coming, and the sensor is stopped: the
  worker keeps what it could not hand over in a file, and the next start stores it.
- A process of another user connects to the writer and ships a forged aggregate: it is
  refused, said on stderr with its pid and uid, and counted as a drop stage; the
  workers' own shipments go on.
- The database's filesystem (a small tmpfs) fills up under a running sensor: the verdict
  of an attack seen meanwhile reaches a real rsyslog at once, the store catches up once
  there is room, and syslog hears of the verdict once. A replay whose last write fails
  exits non-zero and prints its verdicts; one whose database cannot even open says why.

Only the two namespaces made here are addressed; the sender is bounded in count.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pcapy
import pytest

from conftest import REPO
from netns import Topology, require_root_tools
from realparts import db_rows as rows, wait_until
from sensor.capture.live import COOKED_LINKTYPES, bpf_filter

CLIENT, SENSOR = "10.98.0.1", "10.98.0.2"
SEND = """
import socket, sys, time, dnslib
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    # argv[4] given: each name under a registered domain of its own
    name = f"q.d{i}.{sys.argv[2]}.test" if len(sys.argv) > 4 else f"q{i}.{sys.argv[2]}.test"
    s.sendto(dnslib.DNSRecord.question(name).pack(), (sys.argv[3], 53))
    time.sleep(0.002)
"""

MALFORMED = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    # a question name that points at itself: bad_pointer
    s.sendto(bytes([0, i & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1]), (sys.argv[2], 53))
    time.sleep(0.002)
"""

STRANGER = """
import os, pickle, socket, struct, sys
# The writer's abstract socket, as this network namespace lists it.
name = next(line.split()[-1] for line in open("/proc/net/unix") if line.split()[-1].startswith("@dnssensor-"))
os.setgid(65534)
os.setuid(65534)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect("\\0" + name[1:])
forged = pickle.dumps("forged")
try:
    sock.sendall(struct.pack("!I", len(forged)) + forged)
except OSError:
    pass              # refused and closed before the write: either way nothing got in
print(os.getpid())
"""


def dns_frame(linktype: int, dport: int) -> bytes:
    """A UDP datagram from 10.98.0.1 to 10.98.0.2 on dport, framed for the link type."""
    udp = struct.pack("!HHHH", 40000, dport, 8 + 12, 0) + bytes(12)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([10, 98, 0, 1]), bytes([10, 98, 0, 2])) + udp
    if linktype == 1:
        return bytes(12) + b"\x08\x00" + ip
    if linktype == 113:
        return struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0800) + ip
    return struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, bytes(8)) + ip      # SLL2


@pytest.mark.parametrize("linktype", [1] + list(COOKED_LINKTYPES))
def test_capture_filter_compiles_for_every_live_link_type(linktype):
    """Ethernet gets the VLAN-tagged copy of the filter; cooked frames (where libpcap
    refuses `vlan`) do not, and DNS on the ports still passes where nothing else does."""
    program = pcapy.compile(linktype, 65535, bpf_filter([53, 5353], vlan=linktype not in COOKED_LINKTYPES), 1, 0)
    assert program.filter(dns_frame(linktype, 53)) > 0
    assert program.filter(dns_frame(linktype, 5353)) > 0
    assert program.filter(dns_frame(linktype, 80)) == 0
    if linktype in COOKED_LINKTYPES:
        with pytest.raises(pcapy.PcapError):
            pcapy.compile(linktype, 65535, bpf_filter([53]), 1, 0)


def send(top: Topology, ns: str, count: int, tag: str, own_domains: bool = False) -> None:
    out = top.run(ns, [sys.executable, "-c", SEND, str(count), tag, SENSOR] + ["own-domains"] * own_domains,
                  capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def pair():
    """Client and sensor namespaces joined by vi0 (client) -- vi1 (sensor)."""
    require_root_tools()
    top = Topology(f"dsi{os.getpid() % 10000}")
    try:
        c, s = top.add_namespace("c"), top.add_namespace("s")
        top.link(c, "vi0", CLIENT, s, "vi1", SENSOR)
        yield top, c, s
    finally:
        top.close()


class Sensor:
    """`dnssensor run` in the sensor namespace on one interface, one worker, no rules."""

    def __init__(self, top: Topology, ns: str, folder, interface: str, db=None, rules: tuple[str, ...] = (),
                 extra: str = "", flush_s: float = 0.3) -> None:
        self.db = db or folder / "sensor.db"
        self.log_path = folder / "sensor.log"
        self.worker_name = f"{interface}/0"
        (folder / "rules").mkdir()
        for name in rules:
            (folder / "rules" / name).write_text((REPO / "rules" / name).read_text())
        conf = folder / "sensor.toml"
        conf.write_text(f"""
[sensor]
name = "iface-test"
user = ""
[capture]
interfaces = ["{interface}"]
ports = [53]
workers = 1
ring_mib = 8
[network]
resolver_addresses = ["{SENSOR}"]
client_networks = ["10.98.0.0/24"]
[store]
path = "{self.db}"
flush_interval_s = {flush_s}
[rules]
dir = "{folder / "rules"}"
{extra}""")
        self.proc = top.spawn(ns, [sys.executable, "-m", "sensor", "run", "--config", str(conf)],
                              cwd=REPO, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def worker(self) -> tuple:
        """(state, started, restarts) of the worker, as the writer last stored them."""
        try:
            found = rows(self.db, f"SELECT state, started, restarts FROM workers WHERE worker = '{self.worker_name}'")
        except Exception:        # the database is not there yet
            return (None, None, 0)
        return found[0] if found else (None, None, 0)

    def queries(self) -> int:
        try:
            return rows(self.db, "SELECT coalesce(sum(queries), 0) FROM stats")[0][0]
        except Exception:
            return 0

    def running(self) -> "Sensor":
        """Once its worker has reported."""
        assert wait_until(lambda: self.worker()[0] == "running", 30), self.log()
        return self

    def expect_queries(self, total: int) -> None:
        assert wait_until(lambda: self.queries() == total, 20), (self.queries(), self.log())

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.log()
        assert rows(self.db, "PRAGMA integrity_check") == [("ok",)]
        return self.log()


def test_worker_outlives_its_interface_going_away(pair, tmp_path):
    top, c, s = pair
    sensor = Sensor(top, s, tmp_path, "vi1").running()
    send(top, c, 50, "before")
    sensor.expect_queries(50)

    gone_at = time.time()
    top.run(s, ["ip", "link", "del", "vi1"], check=True)
    assert wait_until(lambda: sensor.worker()[2] >= 2, 30), sensor.log()
    top.link(c, "vi0", CLIENT, s, "vi1", SENSOR)
    assert wait_until(lambda: sensor.worker()[0] == "running" and (sensor.worker()[1] or 0) > gone_at, 60), \
        (sensor.worker(), sensor.log())
    send(top, c, 70, "after")
    sensor.expect_queries(120)

    text = sensor.stop()
    assert "vi1: no such device (the interface is gone)" in text
    assert "not-yet-activated" not in text


CAPTURE = """
import json, sys, time
import dnslib
sys.path.insert(0, sys.argv[1])
from sensor.capture import offline
from sensor.capture.live import LiveCapture
offline.FRAME_BATCH_BYTES = int(sys.argv[4])
cap = LiveCapture(sys.argv[2], [53], 4 << 20)
print(json.dumps({"frame_reader": cap.source.frame_reader is not None}), flush=True)
sys.stdin.readline()                # every query is in the ring by now
names, batches = [], []
deadline = time.monotonic() + 30
while len(names) < int(sys.argv[3]) and time.monotonic() < deadline:
    fb = cap.read(7, 0.2)
    if fb is None:
        continue
    batches.append((len(fb.meta), len(fb.blob)))
    names += [str(dnslib.DNSRecord.parse(fb.blob[o + 42:o + c]).q.qname) for o, c in zip(fb.meta[:, 2], fb.meta[:, 3])]
print(json.dumps({"names": names, "batches": batches}))
"""


@pytest.mark.parametrize("batch_bytes", [1 << 20, 200])
def test_live_frames_are_read_on_the_handle_in_batches_of_bounded_size(pair, batch_bytes):
    """A live handle's frames are read by FrameReader on pcapy-ng's handle: every query
    sent arrives once, in order, in batches of the frames asked for or, past
    FRAME_BATCH_BYTES, fewer: a frame that does not fit waits for the next batch."""
    top, c, s = pair
    capture = top.spawn(s, [sys.executable, "-c", CAPTURE, str(REPO), "vi1", "60", str(batch_bytes)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(capture.stdout.readline()) == {"frame_reader": True}, capture.stderr.read()
        send(top, c, 60, "live")
        out, err = capture.communicate("sent\n", timeout=60)
    finally:
        capture.kill()
    got = json.loads(out)
    assert got["names"] == [f"q{i}.live.test." for i in range(60)], err
    assert all(size <= batch_bytes for _, size in got["batches"])
    # All 60 were waiting, though the kernel shows a ring block's frames only once it
    # retires the block: up to 7 at a time, or the 2 of about 75 bytes that fit (a third
    # waits), and most in full batches.
    per_batch = 7 if batch_bytes > 1000 else 2
    counts = [frames for frames, _ in got["batches"]]
    assert max(counts) == per_batch and sum(f for f in counts if f == per_batch) >= 30, counts


def test_capture_on_the_any_interface(pair, tmp_path):
    """Every interface at once, as cooked frames: each query is counted once."""
    top, c, s = pair
    sensor = Sensor(top, s, tmp_path, "any").running()
    send(top, c, 40, "any")
    sensor.expect_queries(40)
    time.sleep(1.0)                 # a second copy of any frame would be counted by now
    assert sensor.queries() == 40
    assert "died" not in sensor.stop()


def test_writer_killed_is_replaced_and_nothing_sent_after_is_lost(pair, tmp_path):
    """A writer killed while waiting for shipments (on the shared queue this held the
    queue's reader lock for good, and every later shipment was lost): the replacement
    gets every worker's shipments again."""
    top, c, s = pair
    sensor = Sensor(top, s, tmp_path, "vi1").running()
    send(top, c, 40, "before")
    sensor.expect_queries(40)
    first = rows(sensor.db, "SELECT pid FROM workers WHERE worker = 'writer'")
    assert first, sensor.log()
    os.kill(first[0][0], signal.SIGKILL)
    assert wait_until(lambda: rows(sensor.db, "SELECT pid, restarts, state FROM workers WHERE worker = 'writer'")
                      [0][1:] == (1, "running"), 30), sensor.log()
    send(top, c, 60, "after")
    sensor.expect_queries(100)
    text = sensor.stop()
    assert "writer died with status -9; restart 1" in text
    (pid, restarts, state), = rows(sensor.db, "SELECT pid, restarts, state FROM workers WHERE worker = 'writer'")
    assert pid != first[0][0] and restarts == 1 and state == "stopped"
    assert rows(sensor.db, "SELECT drops FROM stats WHERE drops LIKE '%writer_restarts%'"), "restart not in stats"


def test_what_a_stalled_writer_could_not_take_at_stop_is_stored_at_the_next_start(pair, tmp_path):
    """The writer stops reading (SIGSTOP) while queries keep coming, each under a domain of
    its own so that shipments are large, until the worker's socket and backlog are full;
    then the sensor is stopped. The worker gives up on the writer and keeps what it could
    not hand over in a file beside the database (before, it was lost: "not delivered at
    stop"); the next start stores it, every query sent is counted once, and no stage
    counts anything lost."""
    top, c, s = pair
    sensor = Sensor(top, s, tmp_path, "vi1", flush_s=0.05).running()
    send(top, c, 20, "before")
    sensor.expect_queries(20)
    (writer,), = rows(sensor.db, "SELECT pid FROM workers WHERE worker = 'writer'")
    os.kill(writer, signal.SIGSTOP)
    try:
        send(top, c, 3000, "stalled", own_domains=True)
        sensor.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: list((tmp_path / "spool").glob("shipments-*.kept")), 40), sensor.log()
    finally:
        os.kill(writer, signal.SIGCONT)
    assert sensor.proc.wait(60) == 0, sensor.log()
    assert "for the next start" in sensor.log()
    assert sensor.queries() < 3020                  # what was kept is not stored yet

    (tmp_path / "again").mkdir()
    started = time.time()
    again = Sensor(top, s, tmp_path / "again", "vi1", db=sensor.db)
    assert wait_until(lambda: again.worker()[0] == "running" and (again.worker()[1] or 0) > started, 30), again.log()
    assert not list((tmp_path / "spool").glob("shipments-*"))
    send(top, c, 10, "after")
    again.expect_queries(3030)
    text = again.stop()
    assert "kept at the last stop" in text
    assert again.queries() == 3030
    assert [d for (d,) in rows(sensor.db, "SELECT drops FROM stats WHERE drops IS NOT NULL") if json.loads(d)] == []


def test_a_stranger_shipping_to_the_writer_is_refused_and_reported(pair, tmp_path):
    top, c, s = pair
    sensor = Sensor(top, s, tmp_path, "vi1").running()
    out = top.run(s, [sys.executable, "-c", STRANGER], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    stranger_pid = int(out.stdout)
    send(top, c, 30, "after-stranger")
    sensor.expect_queries(30)
    assert wait_until(lambda: rows(sensor.db, "SELECT drops FROM stats WHERE drops LIKE '%shipments_refused%'"),
                      20), sensor.log()
    text = sensor.stop()
    assert f"writer refused 1 connection(s), the latest from pid {stranger_pid} running as uid 65534" in text
    assert "died" not in text


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a real filesystem that a test can fill to the last byte."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk) -> None:
    """Write a file until the filesystem has no byte left."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 1):
            while True:
                try:
                    os.write(fd, bytes(size))
                except OSError:
                    break
    finally:
        os.close(fd)


def test_a_full_disk_delays_the_store_but_not_the_siem(pair, small_disk, tmp_path):
    """The database's filesystem fills up under a running sensor: the verdict of an attack
    seen meanwhile reaches syslog at once, the sensor says once that the store is full and
    keeps what it could not write; once there is room again the database gets the verdict
    (without syslog hearing of it twice) and the counters of the whole outage. Stopped
    while full, it prints what it could not store and exits non-zero."""
    from realparts import Rsyslog

    top, c, s = pair
    receiver = Rsyslog(tmp_path / "rsyslog", netns=s).start()
    try:
        sensor = Sensor(top, s, tmp_path, "vi1", db=small_disk / "sensor.db", rules=("anomaly_burst.toml",),
                        extra=f'[[syslog]]\nhost = "127.0.0.1"\nport = {receiver.port}\nprotocol = "tcp"\n'
                              'format = "json"\n').running()
        send(top, c, 30, "before")
        sensor.expect_queries(30)
        fill(small_disk)
        out = top.run(c, [sys.executable, "-c", MALFORMED, "40", SENSOR], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        lines = receiver.wait_for(lambda ls: any('"anomaly"' in line for line in ls), 30)
        assert any(f'"client": "{CLIENT}"' in line for line in lines), (lines, sensor.log())
        assert wait_until(lambda: "database or disk is full" in sensor.log(), 10), sensor.log()
        assert rows(sensor.db, "SELECT count(*) FROM verdicts") == [(0,)]
        assert sensor.queries() == 30                  # nothing of the outage is stored yet
        status = subprocess.run([sys.executable, "-m", "sensor", "status", "--db", str(sensor.db)], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert "WARNING the store's filesystem is 100% full" in status.stdout, status.stdout + status.stderr

        (small_disk / "filler").unlink()
        assert wait_until(lambda: rows(sensor.db, "SELECT count(*) FROM verdicts") == [(1,)], 20), sensor.log()
        sensor.expect_queries(70)
        (client, count), = rows(sensor.db, "SELECT client, count FROM verdicts")
        assert (client, count) == (CLIENT, 40)
        time.sleep(0.5)
        assert sum('"anomaly"' in line for line in receiver.lines()) == 1
        assert "writing again after" in sensor.log()

        # Full again, another burst, and a stop before there is room: the last write
        # fails, so its verdict goes to the log and the sensor exits non-zero.
        fill(small_disk)
        out = top.run(c, [sys.executable, "-c", MALFORMED, "40", SENSOR], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert wait_until(lambda: sensor.log().count("database or disk is full") == 2, 20), sensor.log()
        sensor.proc.send_signal(signal.SIGTERM)
        assert sensor.proc.wait(30) == 1, sensor.log()
        text = sensor.log()
        assert "nothing more will be written" in text
        unstored = [json.loads(line.split(": ", 2)[2]) for line in text.splitlines()
                    if line.startswith("dnssensor: verdict not stored: ")]
        assert unstored and all(v["client"] == CLIENT and v["kind"] == "anomaly" for v in unstored), text
    finally:
        receiver.stop()


def test_a_replay_onto_a_full_disk_fails_and_prints_its_verdicts(small_disk):
    """Nothing will retry a replay's last write: it must fail loudly, with its verdicts."""
    from sensor.store import Store

    held = Store(str(small_disk / "sensor.db"))       # in use, so its journal files stay
    fill(small_disk)
    out = subprocess.run([sys.executable, "-m", "sensor", "replay", "--db", str(small_disk / "sensor.db"),
                          str(REPO / "tests" / "data" / "demo-office-resolver.pcap")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    held.close()
    assert out.returncode == 2, out.stderr
    unstored = [json.loads(line.split(": ", 2)[2]) for line in out.stderr.splitlines()
                if line.startswith("dnssensor: verdict not stored: ")]
    assert sorted(v["kind"] for v in unstored) == ["anomaly", "cache_poisoning"], out.stderr
    assert f"{small_disk / 'sensor.db'}: database or disk is full: the last write failed, so 2 verdict(s)" \
        in out.stderr
    assert "Traceback" not in out.stderr


def test_a_database_that_cannot_open_on_a_full_disk_says_why(small_disk):
    fill(small_disk)
    out = subprocess.run([sys.executable, "-m", "sensor", "replay", "--db", str(small_disk / "new.db"),
                          str(REPO / "tests" / "data" / "demo-office-resolver.pcap")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().endswith(f"(no space left on {small_disk})"), out.stderr
