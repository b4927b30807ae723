"""Memory of a live sensor under a flood that outruns its writer (root).

Builds the two namespaces of bench/live.py, runs `dnssensor run` with one worker on the
receiving end and sends, for --minutes at --rate frames/s, one of two floods:

- new-answers: query/response pairs cycling through --pairs distinct ones (bench/parse.py's
  generator), so nearly every answer record is new to passive DNS: the writer's upserts
  are the bottleneck and the worker's shipments queue up;
- spoofed-sources: every query from another random address, each name once per cycle,
  with its answer: a new client with every query.

Every --sample-s it prints the resident memory of the supervisor, the writer and the
worker, and what the sensor read and dropped (kernel, each internal stage), read back
from its database. Memory must level off: the worker's backlog is bounded by
limits.writer_queue_batches and writer_queue_mib, what it holds back by the tables'
limits. Then the sensor is stopped at once, its writer still behind: the worker keeps
what it could not hand over in a file, and the sensor is started again until that file
is stored. The last line is one JSON object: peak memory per process, its growth over the
second half of the run, the losses, each counted, how long the stop took, what it kept
and how soon the next start stored it, and the frames read or dropped by the kernel
(which must make the frames sent).
Only the two namespaces made here are addressed; every loop is bounded.

    sudo python bench/flood.py [--kind new-answers|spoofed-sources] [--minutes 3] [--rate 150000]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from live import (IF_SENSOR, sender, sensor_counts, setup, start_sensor, stop_sensor, teardown,  # noqa: E402
                  worker_table)
from parse import build_capture  # noqa: E402

from sensor.capture.offline import read_frames  # noqa: E402
from sensor.config import spool_dir  # noqa: E402
from sensor.engine.channel import kept_files  # noqa: E402

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 120.0
KEPT_STORED_TIMEOUT_S = 300.0
"""How long the start after the flood may take to store what the stop kept."""


def spoofed_capture(path: Path, pairs: int) -> None:
    from pcapgen import Conversation

    rng = random.Random(5)
    conv = Conversation()
    for i in range(pairs):
        client = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        name = f"x{i}.victim{i % 50}.example"
        conv.exchange(client, "10.0.0.53", name, f"{name} 60 A 192.0.2.{i % 250}", txid=i & 0xFFFF,
                      sport=1024 + i % 60000, rtt=0.0001)
    conv.write(path)


def rss_mb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def processes(db: Path, supervisor: int) -> dict[str, int]:
    return {"supervisor": supervisor, **{name: pid for name, (pid, _) in worker_table(db).items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("new-answers", "spoofed-sources"), default="new-answers")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--rate", type=int, default=150_000)
    ap.add_argument("--pairs", type=int, default=300_000, help="distinct query/response pairs cycled through")
    ap.add_argument("--sample-s", type=float, default=15.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/flood.py needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="dnssensor-bench-flood-"))
    capture = tmp / "flood.pcap"
    if args.kind == "new-answers":
        build_capture(str(capture), 2 * args.pairs, distinct_pairs=args.pairs)
    else:
        spoofed_capture(capture, args.pairs)
    frames: list[bytes] = []
    for fb in read_frames(str(capture), 65536):
        frames += [fb.blob[off:off + n] for _, _, off, n in fb.meta.tolist()]
    db, conf = tmp / "flood.db", tmp / "flood.toml"
    conf.write_text(f'[capture]\ninterfaces = ["{IF_SENSOR}"]\nworkers = 1\nring_mib = 128\n'
                    f'[network]\ndiscover = false\n[store]\npath = "{db}"\n'
                    f'[rules]\ndir = "{REPO / "rules"}"\n')
    setup()
    samples: list[dict] = []
    proc = None
    spool = spool_dir(str(db))
    stop_s = stored_s = None
    kept: list[tuple[str, int]] = []
    try:
        proc = started(conf, db, tmp / "sensor.log")
        seconds = args.minutes * 60
        q: mp.Queue = mp.Queue()
        send = mp.Process(target=sender, args=(frames, args.rate, int(args.rate * seconds), seconds * 3,
                                               time.time() + 0.3, q))
        send.start()
        t0 = time.monotonic()
        while send.is_alive() and time.monotonic() - t0 < seconds * 3 + 30:
            send.join(args.sample_s)
            pids = processes(db, proc.pid)
            sample = {"t": round(time.monotonic() - t0), **{name: rss_mb(pid) for name, pid in pids.items()},
                      **sensor_counts(db)}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        sent, took = q.get(timeout=30)
        # Stopped at once, its writer still behind: what the worker could not hand over is
        # kept on disk, and the next start stores it.
        t0 = time.monotonic()
        stop_sensor(proc, STOP_TIMEOUT_S)
        proc, stop_s = None, time.monotonic() - t0
        kept = kept_files(spool)
        if kept:
            t0 = time.monotonic()
            proc = started(conf, db, tmp / "restart.log")
            while kept_files(spool) and time.monotonic() - t0 < KEPT_STORED_TIMEOUT_S:
                time.sleep(0.5)
            stored_s = time.monotonic() - t0 if not kept_files(spool) else None
            stop_sensor(proc, STOP_TIMEOUT_S)
            proc = None
    finally:
        if proc is not None:
            stop_sensor(proc, STOP_TIMEOUT_S)
        teardown()
    final = sensor_counts(db)
    names = [k for k in samples[-1] if k == "supervisor" or k == "writer" or "/" in k] if samples else []
    half = samples[len(samples) // 2:] if samples else []
    result = {"kind": args.kind, "rate": args.rate, "sent": sent, "achieved_pps": round(sent / took),
              "peak_rss_mb": {n: max((s.get(n) or 0) for s in samples) for n in names},
              "second_half_growth_mb": {n: (half[-1].get(n) or 0) - (half[0].get(n) or 0) for n in names},
              "losses": final, "stop_s": round(stop_s, 1), "kept_files": len(kept),
              "kept_mb": round(sum(size for _, size in kept) / 1e6, 1),
              "kept_stored_after_s": round(stored_s, 1) if stored_s is not None else None,
              "read_or_dropped": final.get("packets", 0) + final.get("kernel_dropped", 0)}
    print(f"{args.kind}: {sent:,} frames at {result['achieved_pps']:,}/s; peak RSS "
          + ", ".join(f"{n} {v} MB" for n, v in result["peak_rss_mb"].items())
          + "; read {:,}, kernel drops {:,}, internal {}".format(
              final.get("packets", 0), final.get("kernel_dropped", 0),
              {k: v for k, v in final.items() if k not in ("packets", "kernel_dropped")} or "none"))
    print(f"stop: {stop_s:.1f} s, {len(kept)} file(s) of shipments kept ({result['kept_mb']} MB)"
          + (f", stored {stored_s:.1f} s after the next start" if stored_s is not None else
             (", NOT stored by the next start" if kept else ""))
          + f"; frames read or dropped by the kernel: {result['read_or_dropped']:,} of {sent:,} sent")
    print(json.dumps(result))
    return 0


def started(conf: Path, db: Path, log: Path) -> subprocess.Popen:
    """The sensor, once its processes are on record."""
    proc = start_sensor(conf, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and len(processes(db, proc.pid) if db.exists() else {}) < 3:
        time.sleep(0.2)
    return proc


if __name__ == "__main__":
    sys.exit(main())
