"""Live capture: the highest rate with zero kernel drops and zero internal drops (root).

Builds two network namespaces joined by a veth pair, runs `dnssensor run` on the
receiving end (1 worker, then N), and sends the frames of a realistic capture
(the one bench/parse.py builds) from the other end at increasing rates: raw
AF_PACKET sockets in several sender processes, paced every millisecond. For
each rate it reports what was sent, what the sensor read, the kernel's drops
and every internal stage's drops, all read back from the sensor's database.
Only the two namespaces made here are addressed; every loop is bounded.

    sudo python bench/live.py [--workers N] [--seconds 3] [--rates 25000,50000,...]

The last line is one JSON object: per worker count, the highest clean rate and
the rate the senders actually reached (on a 2-core machine the senders, not the
sensor, are usually the limit: see ../shared/CAPTURE.md).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from parse import build_capture  # noqa: E402

from sensor.capture.offline import read_frames  # noqa: E402

NS_SEND, NS_SENSOR = "dsbench-send", "dsbench-sensor"
IF_SEND, IF_SENSOR = "dsb-send", "dsb-sensor"
SETTLE_S = 2.0


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


def sender(frames: list[bytes], rate: float, seconds: float, start_at: float, out: mp.Queue) -> None:
    """Send frames (cycling) at `rate` per second for `seconds`, paced per millisecond."""
    enter_netns(NS_SEND)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((IF_SEND, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    sent, i, n = 0, 0, len(frames)
    total = int(rate * seconds)
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            try:
                s.send(frames[i])
            except BlockingIOError:
                break
            sent += 1
            i = i + 1 if i + 1 < n else 0
        if time.perf_counter() - t0 > seconds * 3:       # bounded even when the link is slow
            break
        time.sleep(0.0005)
    out.put((sent, time.perf_counter() - t0))


def totals(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        packets, kdrop = conn.execute("SELECT coalesce(sum(packets), 0), coalesce(sum(kernel_dropped), 0) "
                                      "FROM stats WHERE leg = 'sensor'").fetchone()
        internal = 0
        for (text,) in conn.execute("SELECT drops FROM stats WHERE leg = 'sensor' AND drops IS NOT NULL"):
            internal += sum(json.loads(text).values())
        return {"packets": packets, "kernel_dropped": kdrop, "internal_dropped": internal}
    except sqlite3.OperationalError:
        return {"packets": 0, "kernel_dropped": 0, "internal_dropped": 0}
    finally:
        conn.close()


def measure(workers: int, frames: list[bytes], rates: list[int], seconds: float, senders: int,
            tmp: Path) -> dict:
    db = tmp / f"live-{workers}.db"
    conf = tmp / f"live-{workers}.toml"
    conf.write_text(f'[capture]\ninterfaces = ["{IF_SENSOR}"]\nworkers = {workers}\nring_mib = 128\n'
                    f'[network]\ndiscover = false\n[store]\npath = "{db}"\nflush_interval_s = 0.5\n'
                    f'[rules]\ndir = "{REPO / "rules"}"\n')
    log = open(tmp / f"live-{workers}.log", "w")
    proc = subprocess.Popen(["ip", "netns", "exec", NS_SENSOR, sys.executable, "-m", "sensor", "run",
                             "--config", str(conf)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    steps = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not db.exists():
            time.sleep(0.2)
        time.sleep(SETTLE_S)
        for rate in rates:
            before = totals(db)
            q: mp.Queue = mp.Queue()
            start_at = time.time() + 0.3
            procs = [mp.Process(target=sender, args=(frames[k::senders], rate / senders, seconds, start_at, q))
                     for k in range(senders)]
            for p in procs:
                p.start()
            results = [q.get(timeout=seconds * 4 + 30) for _ in procs]
            for p in procs:
                p.join()
            sent = sum(r[0] for r in results)
            achieved = sent / max(r[1] for r in results)
            time.sleep(SETTLE_S)
            after = totals(db)
            step = {"rate": rate, "sent": sent, "achieved_pps": round(achieved),
                    "read": after["packets"] - before["packets"],
                    "kernel_dropped": after["kernel_dropped"] - before["kernel_dropped"],
                    "internal_dropped": after["internal_dropped"] - before["internal_dropped"]}
            step["clean"] = (step["kernel_dropped"] == 0 and step["internal_dropped"] == 0
                             and step["read"] == sent)
            steps.append(step)
            print(f"  workers {workers}: target {rate:>9,} pps  achieved {step['achieved_pps']:>9,}  "
                  f"sent {sent:>9,}  read {step['read']:>9,}  kernel drops {step['kernel_dropped']:>7,}  "
                  f"internal drops {step['internal_dropped']:>5,}  {'clean' if step['clean'] else 'LOSS'}",
                  flush=True)
            if not step["clean"] or achieved < rate * 0.9:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    clean = [s for s in steps if s["clean"]]
    return {"max_clean_pps": max((s["achieved_pps"] for s in clean), default=0),
            "max_sender_pps": max((s["achieved_pps"] for s in steps), default=0), "steps": steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="N for the second run")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--senders", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--rates", default="25000,50000,100000,200000,400000,800000,1600000")
    ap.add_argument("--messages", type=int, default=200_000, help="frames in the capture that is sent")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/live.py needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="dnssensor-bench-live-"))
    capture = tmp / "live.pcap"
    build_capture(str(capture), args.messages)
    frames = []
    for fb in read_frames(str(capture), 65536):
        frames += [fb.blob[off:off + n] for _, _, off, n in fb.meta.tolist()]
    setup()
    try:
        result = {}
        for workers in sorted({1, args.workers}):
            result[f"workers_{workers}"] = measure(workers, frames, rates, args.seconds, args.senders, tmp)
    finally:
        teardown()
    summary = {k: {"max_clean_pps": v["max_clean_pps"], "max_sender_pps": v["max_sender_pps"]}
               for k, v in result.items()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
