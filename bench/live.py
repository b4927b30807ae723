"""Live capture: the highest rate with zero kernel drops and zero internal drops (root).

Builds two network namespaces joined by a veth pair, runs `dnssensor run` on the
receiving end (1 worker, then N), and sends the frames of a realistic capture
(the one bench/parse.py builds, or --capture: an Ethernet capture of your own, an
attack's traffic say) from the other end at increasing rates: raw AF_PACKET
sockets in several sender processes, each with whole conversations, paced every
millisecond. For
each rate it reports what was sent, what the sensor read, the kernel's drops
and every internal stage's drops, all read back from the sensor's database.

On a small machine the senders share the cores with the sensor and run out
first, so each run ends with a drain: the capture workers are stopped (SIGSTOP),
--drain-frames frames each are queued in their kernel rings, and the workers are
let go. What they read, divided by the CPU time they spent reading it, is the rate
one core sustains, whatever the senders could reach; the wall time from release
to an empty ring is the rate the workers drained at together.
Only the two namespaces made here are addressed; every loop is bounded.

    sudo python bench/live.py [--workers N] [--seconds 3] [--rates 25000,50000,...]
                              [--drain-frames 500000] [--drain-repeat 3] [--ring-mib 256]
                              [--capture FILE]

The last line is one JSON object: per worker count, the highest clean rate and
the rate the senders actually reached (on a 2-core machine the senders, not the
sensor, are usually the limit: see ../shared/CAPTURE.md), and the drain's rates.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from parse import build_capture  # noqa: E402

from sensor.capture.offline import read_frames  # noqa: E402

NS_SEND, NS_SENSOR = "dsbench-send", "dsbench-sensor"
IF_SEND, IF_SENSOR = "dsb-send", "dsb-sensor"
SETTLE_S = 2.0
DRAIN_BUSY_WINDOW_S = 0.05
"""The ring is empty once no worker was busy for half of the last such window."""
DRAIN_QUIET_S = 1.0
"""CPU is counted until no worker has worked for this long: longer than the flush interval
set here, so the shipment after the drain (tracking timeouts, the rules' fold) is counted."""
DRAIN_TIMEOUT_S = 60.0
ETHERNET = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def setup() -> None:
    teardown()
    sh("ip", "netns", "add", NS_SEND)
    sh("ip", "netns", "add", NS_SENSOR)
    sh("ip", "link", "add", IF_SEND, "type", "veth", "peer", "name", IF_SENSOR)
    sh("ip", "link", "set", IF_SEND, "netns", NS_SEND)
    sh("ip", "link", "set", IF_SENSOR, "netns", NS_SENSOR)
    for ns, ifname in ((NS_SEND, IF_SEND), (NS_SENSOR, IF_SENSOR)):
        sh("ip", "-n", ns, "link", "set", ifname, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def teardown() -> None:
    for ns in (NS_SEND, NS_SENSOR):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def enter_netns(name: str) -> None:
    from pyroute2.netns import setns
    setns(name)


def flow_of(frame: bytes) -> int:
    """A number for the frame's conversation, the same both ways (addresses and ports of
    both ends, whichever sent it); 0 for what is not IP over Ethernet."""
    at, ethertype = 14, struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
    while ethertype in (0x8100, 0x88A8) and len(frame) >= at + 4:           # VLAN tags
        ethertype, at = struct.unpack_from("!H", frame, at + 2)[0], at + 4
    if ethertype == 0x0800 and len(frame) >= at + 20:
        proto, ends, l4 = frame[at + 9], (frame[at + 12:at + 16], frame[at + 16:at + 20]), at + (frame[at] & 15) * 4
    elif ethertype == 0x86DD and len(frame) >= at + 40:
        proto, ends, l4 = frame[at + 6], (frame[at + 8:at + 24], frame[at + 24:at + 40]), at + 40
    else:
        return 0
    ports = struct.unpack_from("!HH", frame, l4) if proto in (6, 17) and len(frame) >= l4 + 4 else (0, 0)
    return zlib.crc32(b"".join(sorted((ends[0] + ports[0].to_bytes(2, "big"), ends[1] + ports[1].to_bytes(2, "big")))))


def share(frames: list[bytes], flows: list[int], k: int, senders: int) -> list[bytes]:
    """Sender k's part of the capture: whole conversations, each in its order. Frames dealt
    one by one would send a query and its response through different senders, and unpaced
    senders drift apart: responses would come before their queries (unsolicited, and
    mismatched to the rules), which a resolver's link does not do."""
    return [f for f, flow in zip(frames, flows) if flow % senders == k]


def sender(frames: list[bytes], rate: float, total: int, time_bound_s: float, start_at: float,
           out: mp.Queue) -> None:
    """Send `total` frames (cycling) at `rate` per second, paced per millisecond, giving up
    after `time_bound_s`."""
    enter_netns(NS_SEND)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((IF_SEND, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    sent, i, n = 0, 0, len(frames)
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            try:
                s.send(frames[i])
            except BlockingIOError:
                break
            sent += 1
            i = i + 1 if i + 1 < n else 0
        if time.perf_counter() - t0 > time_bound_s:       # bounded even when the link is slow
            break
        time.sleep(0.0005)
    out.put((sent, time.perf_counter() - t0))


def start_sensor(conf: Path, log: Path) -> subprocess.Popen:
    """`dnssensor run` with this configuration in the sensor namespace, its output to log."""
    return subprocess.Popen(["ip", "netns", "exec", NS_SENSOR, sys.executable, "-m", "sensor", "run",
                             "--config", str(conf)], cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop_sensor(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, as systemd stops it; killed if it has not stopped within timeout_s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def sensor_counts(db: Path) -> dict[str, int]:
    """Frames the sensor read, the kernel's drops and each internal stage's drops so far."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        packets, kdrop = conn.execute("SELECT coalesce(sum(packets), 0), coalesce(sum(kernel_dropped), 0) "
                                      "FROM stats WHERE leg = 'sensor'").fetchone()
        out = {"packets": packets, "kernel_dropped": kdrop}
        for (text,) in conn.execute("SELECT drops FROM stats WHERE leg = 'sensor' AND drops IS NOT NULL"):
            for stage, n in json.loads(text).items():
                out[stage] = out.get(stage, 0) + n
        return out
    except sqlite3.OperationalError:
        return {"packets": 0, "kernel_dropped": 0}
    finally:
        conn.close()


def totals(db: Path) -> dict:
    stages = sensor_counts(db)
    return {"packets": stages.pop("packets"), "kernel_dropped": stages.pop("kernel_dropped"),
            "internal_dropped": sum(stages.values()), "stages": stages}


def settled(db: Path, expected_packets: int) -> dict:
    """The sensor's totals once it has read `expected_packets` or its count stopped moving:
    a backlog still in the rings is late, not lost, and must not count as a loss."""
    time.sleep(SETTLE_S)
    now = totals(db)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while now["packets"] < expected_packets and time.monotonic() < deadline:
        time.sleep(SETTLE_S)
        later = totals(db)
        if later["packets"] == now["packets"]:
            return later
        now = later
    return now


def stage_drops(before: dict, after: dict) -> dict[str, int]:
    """Internal drops between two readings, by stage (only the stages that dropped)."""
    out = {k: n - before["stages"].get(k, 0) for k, n in after["stages"].items()}
    return {k: n for k, n in out.items() if n}


def tracking(db: Path) -> dict[str, int]:
    """The tracker's totals over the whole run: a bench that reorders or loses its own
    traffic shows here as unsolicited or mismatched responses."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT coalesce(sum(responses), 0), coalesce(sum(unanswered), 0), "
                           "coalesce(sum(unsolicited), 0), coalesce(sum(mismatched), 0) "
                           "FROM stats WHERE leg != 'sensor'").fetchone()
        return dict(zip(("responses", "unanswered", "unsolicited", "mismatched"), row))
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def worker_table(db: Path) -> dict[str, tuple[int, str]]:
    """Each worker's (and the writer's) process id and state, as the sensor last wrote them."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {worker: (pid, state) for worker, pid, state in conn.execute("SELECT worker, pid, state FROM workers")}
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def worker_pids(db: Path) -> list[int]:
    return [pid for name, (pid, state) in worker_table(db).items() if name != "writer" and state == "running"]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def send_all(frames: list[bytes], flows: list[int], count: int, senders: int) -> int:
    """Send `count` frames as fast as the senders go; returns the number sent."""
    q: mp.Queue = mp.Queue()
    start_at = time.time() + 0.3
    per_sender = count // senders
    procs = [mp.Process(target=sender, args=(share(frames, flows, k, senders), 1e9, per_sender, DRAIN_TIMEOUT_S, start_at, q))
             for k in range(senders)]
    for p in procs:
        p.start()
    sent = sum(q.get(timeout=DRAIN_TIMEOUT_S)[0] for _ in procs)
    for p in procs:
        p.join()
    return sent


def drain(db: Path, frames: list[bytes], flows: list[int], count: int, senders: int) -> dict:
    """Queue `count` frames in the stopped workers' rings, release them and time the drain."""
    pids = worker_pids(db)
    if not pids:
        return {"error": "no running worker in the database"}
    before = totals(db)
    idle0 = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(1.0)
    idle_rate = {pid: cpu_seconds(pid) - idle0[pid] for pid in pids}      # CPU s per s when idle
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        sent = send_all(frames, flows, count, senders)
        time.sleep(0.2)
    finally:
        cpu0 = {pid: cpu_seconds(pid) for pid in pids}
        released = time.perf_counter()
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    history = [(0.0, cpu0)]
    drained_at = last_busy = None
    while time.perf_counter() - released < DRAIN_TIMEOUT_S:
        time.sleep(0.01)
        now = time.perf_counter() - released
        cpu = {pid: cpu_seconds(pid) for pid in pids}
        if any(cpu[pid] - history[-1][1][pid] > 0 for pid in pids):
            last_busy = now
        history.append((now, cpu))
        if drained_at is None and now >= DRAIN_BUSY_WINDOW_S:
            then = next(c for t, c in reversed(history) if t <= now - DRAIN_BUSY_WINDOW_S)
            if all(cpu[pid] - then[pid] < DRAIN_BUSY_WINDOW_S / 2 for pid in pids):
                drained_at = now - DRAIN_BUSY_WINDOW_S
        if drained_at is not None and now - (last_busy or 0) > DRAIN_QUIET_S:
            break
    span, cpu = history[-1]
    used = sum(cpu[pid] - cpu0[pid] - idle_rate[pid] * span for pid in pids)
    wall = drained_at or span
    time.sleep(SETTLE_S)
    after = totals(db)
    read = after["packets"] - before["packets"]
    return {"sent": sent, "read": read, "kernel_dropped": after["kernel_dropped"] - before["kernel_dropped"],
            "internal_dropped": after["internal_dropped"] - before["internal_dropped"],
            "internal_by_stage": stage_drops(before, after), "cpu_s": round(used, 3), "wall_s": round(wall, 3),
            "per_core_pps": round(read / used) if used > 0 else None,
            "drain_pps": round(read / wall) if wall > 0 else None}


def measure(workers: int, frames: list[bytes], flows: list[int], rates: list[int], seconds: float, senders: int,
            tmp: Path, drain_frames: int, drain_repeat: int, ring_mib: int) -> dict:
    db = tmp / f"live-{workers}.db"
    conf = tmp / f"live-{workers}.toml"
    conf.write_text(f'[capture]\ninterfaces = ["{IF_SENSOR}"]\nworkers = {workers}\nring_mib = {ring_mib}\n'
                    f'[network]\ndiscover = false\n[store]\npath = "{db}"\nflush_interval_s = 0.5\n'
                    f'[rules]\ndir = "{REPO / "rules"}"\n')
    proc = start_sensor(conf, tmp / f"live-{workers}.log")
    steps = []
    drained = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not db.exists():
            time.sleep(0.2)
        time.sleep(SETTLE_S)
        for rate in rates:
            before = totals(db)
            q: mp.Queue = mp.Queue()
            start_at = time.time() + 0.3
            procs = [mp.Process(target=sender, args=(share(frames, flows, k, senders), rate / senders,
                                                     int(rate / senders * seconds), seconds * 3, start_at, q))
                     for k in range(senders)]
            for p in procs:
                p.start()
            results = [q.get(timeout=seconds * 4 + 30) for _ in procs]
            for p in procs:
                p.join()
            sent = sum(r[0] for r in results)
            achieved = sent / max(r[1] for r in results)
            after = settled(db, before["packets"] + sent)
            step = {"rate": rate, "sent": sent, "achieved_pps": round(achieved),
                    "read": after["packets"] - before["packets"],
                    "kernel_dropped": after["kernel_dropped"] - before["kernel_dropped"],
                    "internal_dropped": after["internal_dropped"] - before["internal_dropped"],
                    "internal_by_stage": stage_drops(before, after)}
            step["clean"] = (step["kernel_dropped"] == 0 and step["internal_dropped"] == 0
                             and step["read"] == sent)
            steps.append(step)
            print(f"  workers {workers}: target {rate:>9,} pps  achieved {step['achieved_pps']:>9,}  "
                  f"sent {sent:>9,}  read {step['read']:>9,}  kernel drops {step['kernel_dropped']:>7,}  "
                  f"internal drops {step['internal_dropped']:>5,}  {'clean' if step['clean'] else 'LOSS'}"
                  f"{'  ' + str(step['internal_by_stage']) if step['internal_by_stage'] else ''}", flush=True)
            if not step["clean"] or achieved < rate * 0.9:
                break
        # the first drain after the sweep still meets names and clients for the first time
        # (and the ring's pages); the best of several is the steady rate
        for _ in range(drain_repeat if drain_frames else 0):
            attempt = drain(db, frames, flows, drain_frames * workers, senders)
            if drained is None or (attempt.get("per_core_pps") or 0) > (drained.get("per_core_pps") or 0):
                drained = attempt
        if drained is not None:
            print(f"  workers {workers}: drain of {drained.get('sent', 0):,} queued frames: "
                  f"read {drained.get('read', 0):,}, kernel drops {drained.get('kernel_dropped', 0):,}, "
                  f"internal drops {drained.get('internal_dropped', 0):,} {drained.get('internal_by_stage') or ''}; "
                  f"{drained.get('per_core_pps') or 0:,} pps per core of worker CPU, "
                  f"{drained.get('drain_pps') or 0:,} pps wall", flush=True)
    finally:
        stop_sensor(proc, 60)
    tracked = tracking(db)
    print(f"  workers {workers}: tracking over the run: {tracked}", flush=True)
    clean = [s for s in steps if s["clean"]]
    return {"tracking": tracked, "max_clean_pps": max((s["achieved_pps"] for s in clean), default=0),
            "max_sender_pps": max((s["achieved_pps"] for s in steps), default=0), "steps": steps,
            "drain": drained}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="N for the second run")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--senders", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--rates", default="25000,50000,100000,200000,400000,800000,1600000")
    ap.add_argument("--messages", type=int, default=200_000, help="frames in the capture that is built")
    ap.add_argument("--capture", help="send this Ethernet capture (its frames cycled) instead of building one")
    ap.add_argument("--ring-mib", type=int, default=256, help="each worker's kernel ring")
    ap.add_argument("--drain-frames", type=int, default=500_000,
                    help="frames per worker queued for the drain (about 250 bytes of ring each); 0: none")
    ap.add_argument("--drain-repeat", type=int, default=3, help="drains per worker count (the best is kept)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/live.py needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="dnssensor-bench-live-"))
    capture = args.capture or str(tmp / "live.pcap")
    if not args.capture:
        build_capture(capture, args.messages)
    frames = []
    for fb in read_frames(capture, 65536):
        if fb.linktype != ETHERNET:
            print(f"bench/live.py sends Ethernet frames; {capture} has link type {fb.linktype}", file=sys.stderr)
            return 2
        frames += [fb.blob[off:off + n] for _, _, off, n in fb.meta.tolist()]
    flows = [flow_of(f) for f in frames]
    setup()
    try:
        result = {}
        for workers in sorted({1, args.workers}):
            result[f"workers_{workers}"] = measure(workers, frames, flows, rates, args.seconds, args.senders, tmp,
                                                        args.drain_frames, args.drain_repeat, args.ring_mib)
    finally:
        teardown()
    summary = {k: {"max_clean_pps": v["max_clean_pps"], "max_sender_pps": v["max_sender_pps"],
                   **({"drain_per_core_pps": v["drain"].get("per_core_pps"), "drain_pps": v["drain"].get("drain_pps"),
                       "drain_lost": v["drain"].get("sent", 0) - v["drain"].get("read", 0)}
                      if v["drain"] else {})}
               for k, v in result.items()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
