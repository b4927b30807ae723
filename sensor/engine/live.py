"""`dnssensor run`: a supervisor, capture workers and one writer, as processes.

    supervisor ──starts/restarts──> worker (interface i, index k) ──Aggregate──┐
        │                               ... one per core per interface         ├─> writer ─> SQLite, syslog
        └──starts/restarts─────────────────────────────────────────────────────┘

Workers parse, track and aggregate; every flush interval each ships one
Aggregate over its own connection to the writer (sensor.engine.channel). When
its backlog is full a worker keeps merging into the next Aggregate rather than
dropping (bounded by the aggregation limits, whose overflow is counted).
SIGTERM: workers ship what they hold and stop, the writer drains their
connections, flushes and closes. What a worker could not hand over in time (the
writer lagging behind a flood) it keeps in a file beside the database, and the
next writer stores it before anything else. SIGHUP: everyone re-reads the
configuration file and the rules; a broken file is reported and the running
configuration stays. A worker that dies is restarted and the restart is
recorded in the `workers` table.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from sensor import config as cfg
from sensor.capture.live import LiveCapture, drop_privileges, give_to_user
from sensor.detectors import anomaly_burst, series_anomalies
from sensor.engine.aggregate import Aggregate, new_sensor_row
from sensor.engine.channel import (Inbox, Outbox, keep, kept_files, new_address, read_kept, set_aside,
                                   unfinished_kept)
from sensor.engine.pipeline import Pipeline
from sensor.errors import ConfigError, SensorError
from sensor.rules import load_rules_dir

SUPERVISOR_TICK_S = 0.5
WORKER_STOP_TIMEOUT_S = 20.0
"""Enough for a worker to drain its ring, wait SHIP_WAIT_S (and channel.ABANDON_WAIT_S)
and keep the rest on disk."""
WRITER_STOP_TIMEOUT_S = 60.0
SHIP_WAIT_S = 5.0
"""How long a stopping worker waits to see its backlog delivered; what is left, it keeps
on disk for the next start."""
ANY_INTERFACE = "any"
"""libpcap's Linux pseudo-interface: every interface at once, frames in Linux cooked form."""
RESTART_BACKOFF_S = 1.0
"""Wait before restarting a worker that died; doubled for each death soon after a start."""
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0
"""A worker that ran this long before dying is restarted after the shortest wait again."""
EXIT_WORKER_ERROR = 3
RETENTION_EVERY_S = 600.0


def _rule_files(rules_dir: str) -> tuple[Any, list, Any]:
    """Every rule file of the folder read: (the anomaly rule, the rules, the series rule);
    the first broken one raises with its file and line. series.toml is the writer's, but
    a broken one is refused at start and on reload like any rule file."""
    return anomaly_burst.load(rules_dir), load_rules_dir(rules_dir), series_anomalies.load(rules_dir)


def _reload(config: cfg.Config) -> tuple[cfg.Config, Any] | None:
    """Re-read the configuration file and rules; None (and a message) when broken."""
    try:
        new = (cfg.resolve_rules_dir(cfg.resolve_paths(cfg.load(config.path)))
               if config.path not in ("<defaults>", "<config>") else config)
        new = replace(new, interfaces=config.interfaces, workers=config.workers,
                      resolver_addresses=new.resolver_addresses or config.resolver_addresses,
                      client_networks=new.client_networks or config.client_networks)
        cfg.check_syslog_files(new)
        return new, _rule_files(new.rules_dir)
    except SensorError as e:
        print(f"dnssensor: reload refused, keeping the running configuration: {e}", file=sys.stderr)
        return None


# ----------------------------------------------------------------- worker

def worker_main(name: str, interface: str, config: cfg.Config, fanout_group: int, channel: str,
                restarts: int) -> None:
    try:
        _worker(name, interface, config, fanout_group, channel, restarts)
    except SensorError as e:          # the interface went away, a rule file broke, ...
        print(f"dnssensor: worker {name}: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_WORKER_ERROR)


def _worker(name: str, interface: str, config: cfg.Config, fanout_group: int, channel: str,
            restarts: int) -> None:
    flags = {"stop": False, "reload": False}
    signal.signal(signal.SIGTERM, lambda *_: flags.__setitem__("stop", True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, lambda *_: flags.__setitem__("reload", True))
    cap = LiveCapture(interface, config.ports, config.ring_mib << 20, config.snaplen, fanout_group)
    rule = anomaly_burst.load(config.rules_dir)
    pipeline = Pipeline(config, rule, load_rules_dir(config.rules_dir))   # everything loaded while it can
    drop_privileges(config.user)
    started = time.time()
    carry = Aggregate()
    out = Outbox(channel, config.limits.writer_queue_batches, config.limits.writer_queue_mib << 20)
    next_flush = time.monotonic() + config.flush_interval_s

    def ship(state: str) -> None:
        nonlocal carry
        now = time.time()
        d_recv, d_drop = cap.update_stats()
        pipeline.tick(now)                            # time out queries on a quiet link too
        agg = pipeline.take()
        srow = agg.sensor.setdefault(int(now // 60 * 60), new_sensor_row())
        srow["kernel_received"] += d_recv
        srow["kernel_dropped"] += d_drop
        agg.workers[name] = {"pid": os.getpid(), "started": started, "restarts": restarts,
                             "last_seen": now, "packets": pipeline.packets,
                             "kernel_received": cap.received, "kernel_dropped": cap.dropped, "state": state}
        carry.merge(agg, config.limits)
        if out.put(carry):
            carry = Aggregate()
        else:
            # kept in `carry` and merged into the next shipment: nothing lost, and bounded
            # while the writer lags (a flood from spoofed sources is a new client a query)
            carry.compact(config.limits)

    while not flags["stop"]:
        frames = cap.read(config.limits.frames_per_read, SUPERVISOR_TICK_S / 2)
        if frames is not None:
            pipeline.feed(frames, now=time.time())
        if flags["reload"]:
            flags["reload"] = False
            loaded = _reload(config)
            if loaded is not None:
                config, (rule, rules, _) = loaded
                pipeline.reconfigure(config, rule, rules)
                cap.set_ports(config.ports)
        if time.monotonic() >= next_flush:
            ship("running")
            next_flush = time.monotonic() + config.flush_interval_s
    # Drain what the ring still holds, then hand everything over.
    while True:
        frames = cap.read(config.limits.frames_per_read, 0)
        if frames is None:
            break
        pipeline.feed(frames, now=time.time())
    pipeline.stop()
    ship("stopped")
    cap.close()
    left = out.close(SHIP_WAIT_S)
    if not carry.is_empty():                          # the backlog was full
        left.append(pickle.dumps(carry, protocol=pickle.HIGHEST_PROTOCOL))
    if left:
        try:
            path = keep(cfg.spool_dir(config.db_path), name, left)
            print(f"dnssensor: worker {name}: the writer did not take {len(left)} shipment(s) in time; "
                  f"kept in {path} for the next start", file=sys.stderr, flush=True)
        except OSError as e:
            print(f"dnssensor: worker {name}: {len(left)} shipment(s) not delivered at stop and not kept: {e}",
                  file=sys.stderr, flush=True)


# ----------------------------------------------------------------- writer

def writer_main(config: cfg.Config, channel: str, stop_event: Any, restarts: int = 0) -> None:
    try:
        _writer(config, channel, stop_event, restarts)
    except SensorError as e:          # the store cannot be opened, a rule file broke, ...
        print(f"dnssensor: writer: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_WORKER_ERROR)


def _writer(config: cfg.Config, channel: str, stop_event: Any, restarts: int) -> None:
    from sensor.engine.writer import Writer
    from sensor.sinks.syslog import SyslogSender
    from sensor.store import Store

    flags = {"reload": False}
    signal.signal(signal.SIGTERM, signal.SIG_IGN)     # the supervisor decides when we stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, lambda *_: flags.__setitem__("reload", True))
    spool_dir = cfg.spool_dir(config.db_path)
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)   # workers keep shipments here at a stop
    inbox = Inbox(channel, kept_folder=spool_dir)
    store = Store(config.db_path)
    senders = [SyslogSender(t, spool_dir, config.sensor_name) for t in config.syslog]
    writer = Writer(config, store, anomaly_burst.load(config.rules_dir), senders, load_rules_dir(config.rules_dir))
    # Files made while privileged belong to the service user from here on.
    give_to_user(config.user, [config.db_path, config.db_path + "-wal", config.db_path + "-shm", spool_dir]
                 + [s.spool_path for s in senders])
    drop_privileges(config.user)
    started = time.time()
    torn_reported = refused_reported = 0
    kept = KeptShipments(spool_dir)
    kept.take(writer)

    def torn() -> int:
        return inbox.torn + kept.unreadable

    def report(state: str) -> None:           # the writer's own row in `workers`
        nonlocal torn_reported, refused_reported
        agg = Aggregate()
        agg.workers["writer"] = {"pid": os.getpid(), "started": started, "restarts": restarts,
                                 "last_seen": time.time(), "packets": None, "kernel_received": None,
                                 "kernel_dropped": None, "state": state}
        if torn() > torn_reported or inbox.refused > refused_reported:
            srow = agg.sensor[int(time.time() // 60 * 60)] = new_sensor_row()
            srow["drops"] = +Counter(      # unary + keeps the nonzero ones only
                shipments_torn=torn() - torn_reported,
                # a worker left running as another user (its shipments are lost),
                # or a stranger on this host trying to forge some
                shipments_refused=inbox.refused - refused_reported)
            if inbox.refused > refused_reported and inbox.last_refused is not None:
                pid, uid = inbox.last_refused
                print(f"dnssensor: writer refused {inbox.refused - refused_reported} connection(s), the latest "
                      f"from pid {pid} running as uid {uid}: only uid {os.getuid()} and root may ship",
                      file=sys.stderr, flush=True)
            torn_reported, refused_reported = torn(), inbox.refused
        writer.apply(agg)

    next_flush = time.monotonic() + config.flush_interval_s
    next_retention = time.monotonic()
    while True:
        shipments = inbox.receive(min(config.flush_interval_s, 0.5))
        for agg in shipments:
            writer.apply(agg)
        if inbox.idle and stop_event.is_set():        # the workers are gone and drained
            break
        if flags["reload"]:
            flags["reload"] = False
            loaded = _reload(config)
            if loaded is not None:
                writer.config, (rule, rules, series_rule) = loaded
                writer.set_rule(rule, rules, series_rule)
        if time.monotonic() >= next_flush:
            report("running")
            writer.flush()
            kept.after_flush(writer)
            next_flush = time.monotonic() + config.flush_interval_s
        if time.monotonic() >= next_retention:
            writer.enforce_retention(time.time())
            next_retention = time.monotonic() + RETENTION_EVERY_S
    report("stopped")
    writer.flush(final=True)
    kept.after_flush(writer)
    inbox.close()
    for s in senders:
        s.close()
    store.close()
    if writer.store_error is not None:
        # The last write failed (its verdicts are on stderr): the stop was not clean.
        sys.exit(1)


class KeptShipments:
    """Shipments that stopping workers kept in files (channel.keep): handed to the writer
    when it starts, each file removed once a flush has stored what it held."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.taken: list[str] = []
        self.unreadable = 0
        """Files that could not be read (set aside, channel.set_aside()) or were never
        finished (removed), each counted as a torn shipment."""

    def take(self, writer: Any) -> int:
        """Apply every kept shipment to the writer; returns how many."""
        shipments = 0
        for path, _ in kept_files(self.folder):
            try:
                for agg in read_kept(path):
                    if not isinstance(agg, Aggregate):
                        raise ValueError("holds something other than shipments")
                    writer.apply(agg)
                    shipments += 1
            except Exception as e:
                # damaged, or from a version whose shipments this one cannot merge: what came
                # before is applied, and the file is set aside rather than met at every start
                self.unreadable += 1
                try:
                    aside = os.path.basename(set_aside(path))
                except OSError as why:
                    aside = f"nothing: it cannot be renamed ({why})"
                print(f"dnssensor: writer: {path}: {e}; set aside as {aside}", file=sys.stderr, flush=True)
                continue
            self.taken.append(path)
        for path in unfinished_kept(self.folder):
            self.unreadable += 1
            print(f"dnssensor: writer: {path}: a worker was stopped while it kept shipments there; "
                  "what it held is lost", file=sys.stderr, flush=True)
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.taken:
            print(f"dnssensor: writer: {shipments} shipment(s) kept at the last stop, from {len(self.taken)} file(s)",
                  file=sys.stderr, flush=True)
        return shipments

    def after_flush(self, writer: Any) -> None:
        """Remove the files taken once the writer's last flush has stored them."""
        if not self.taken or writer.store_error is not None:
            return
        for path in self.taken:
            try:
                os.unlink(path)
            except OSError as e:          # stored now, but would be stored again at the next start
                print(f"dnssensor: writer: cannot remove {path}: {e}", file=sys.stderr, flush=True)
        self.taken = []


# ----------------------------------------------------------------- supervisor

class Supervisor:
    def __init__(self, config: cfg.Config) -> None:
        self.config = config
        self.ctx = mp.get_context("fork")
        self.channel = new_address()
        self._records: Outbox | None = None       # the supervisor's own rows (restarts), made at first use
        self.stop_event = self.ctx.Event()
        self.workers: dict[str, dict[str, Any]] = {}
        self.writer: Any = None
        self.writer_restarts = 0
        self.writer_state: dict[str, Any] = {}    # its start and deaths, for the restart backoff
        self.stopping = False
        self.reload_requested = False

    def _spawn(self, name: str) -> None:
        w = self.workers[name]
        p = self.ctx.Process(target=worker_main, name=f"dnssensor {name}", daemon=False,
                             args=(name, w["interface"], self.config, w["group"], self.channel, w["restarts"]))
        p.start()
        w["process"], w["started"] = p, time.monotonic()

    def start(self) -> None:
        self._start_writer()
        per_interface = cfg.worker_count(self.config)
        for i, interface in enumerate(self.config.interfaces):
            group = (os.getpid() * 16 + i) & 0xFFFF
            for k in range(per_interface):
                name = f"{interface}/{k}"
                self.workers[name] = {"interface": interface, "group": group, "restarts": 0}
                self._spawn(name)

    @staticmethod
    def _restart_due(state: dict[str, Any]) -> bool:
        """Whether a dead process's wait before its restart is over: RESTART_BACKOFF_S,
        doubled for each death soon after a start (a process that cannot start is not
        restarted in a tight loop)."""
        if "died_at" not in state:
            state["died_at"] = time.monotonic()
            lived = state["died_at"] - state["started"]
            state["quick_deaths"] = state.get("quick_deaths", 0) + 1 if lived < STABLE_AFTER_S else 0
        wait = min(RESTART_BACKOFF_S * 2 ** max(state["quick_deaths"] - 1, 0), RESTART_BACKOFF_MAX_S)
        if time.monotonic() - state["died_at"] < wait:
            return False
        del state["died_at"]
        return True

    def check(self) -> None:
        for name, w in self.workers.items():
            p = w["process"]
            if p.is_alive() or self.stopping or not self._restart_due(w):
                continue
            w["restarts"] += 1
            print(f"dnssensor: worker {name} (pid {p.pid}) died with status {p.exitcode}; "
                  f"restart {w['restarts']}", file=sys.stderr)
            self._record(name, p, f"died ({p.exitcode})", w["restarts"])
            self._spawn(name)
        if not self.writer.is_alive() and not self.stopping and self._restart_due(self.writer_state):
            self.writer_restarts += 1
            print(f"dnssensor: writer died with status {self.writer.exitcode}; restart {self.writer_restarts}",
                  file=sys.stderr)
            self._record("writer", self.writer, f"died ({self.writer.exitcode})", self.writer_restarts,
                         stage="writer_restarts")
            self._start_writer()

    def _start_writer(self) -> None:
        self.writer = self.ctx.Process(target=writer_main, name="dnssensor writer",
                                       args=(self.config, self.channel, self.stop_event, self.writer_restarts))
        self.writer.start()
        self.writer_state["started"] = time.monotonic()

    def _record(self, name: str, p: Any, state: str, restarts: int, stage: str = "worker_restarts") -> None:
        agg = Aggregate()
        agg.workers[name] = {"pid": p.pid, "started": None, "restarts": restarts, "last_seen": time.time(),
                             "packets": None, "kernel_received": None, "kernel_dropped": None, "state": state}
        srow = agg.sensor[int(time.time() // 60 * 60)] = new_sensor_row()
        srow["drops"][stage] = 1
        if self._records is None:
            limits = self.config.limits
            self._records = Outbox(self.channel, limits.writer_queue_batches, limits.writer_queue_mib << 20)
        self._records.put(agg)

    def reload(self) -> None:
        loaded = _reload(self.config)
        if loaded is None:
            return
        self.config = loaded[0]
        for w in self.workers.values():
            if w["process"].is_alive():
                os.kill(w["process"].pid, signal.SIGHUP)
        if self.writer.is_alive():
            os.kill(self.writer.pid, signal.SIGHUP)
        print("dnssensor: configuration and rules reloaded", file=sys.stderr)

    def stop(self) -> int:
        self.stopping = True
        for w in self.workers.values():
            if w["process"].is_alive():
                w["process"].terminate()           # SIGTERM: ship and stop
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for w in self.workers.values():
            w["process"].join(max(0.0, deadline - time.monotonic()))
            if w["process"].is_alive():
                w["process"].kill()
        if self._records is not None:
            self._records.close(SHIP_WAIT_S)      # not kept: at worst a restart goes uncounted
        self.stop_event.set()
        self.writer.join(WRITER_STOP_TIMEOUT_S)
        if self.writer.is_alive():
            self.writer.kill()
            return 1
        return 0 if self.writer.exitcode == 0 else 1


def run(config: cfg.Config) -> int:
    if not config.interfaces:
        raise ConfigError(f"{config.path}: capture.interfaces: no interface to capture on (or use --interface)")
    _check_interfaces(config)
    cfg.check_rings(config)
    config = cfg.discover_networks(cfg.resolve_rules_dir(config))
    # The service user, syslog's CA files, the store and every rule file are tried here
    # first: a start that cannot work stops with the reason, where each process would die
    # on it and be restarted, or a SIEM would get nothing for good.
    cfg.check_user(config)
    cfg.check_syslog_files(config)
    from sensor.store import Store
    os.makedirs(cfg.spool_dir(config.db_path), mode=0o700, exist_ok=True)
    Store(config.db_path).close()
    rules = _rule_files(config.rules_dir)[1]
    sup = Supervisor(config)
    flags = {"stop": False, "reload": False}
    signal.signal(signal.SIGTERM, lambda *_: flags.__setitem__("stop", True))
    signal.signal(signal.SIGINT, lambda *_: flags.__setitem__("stop", True))
    signal.signal(signal.SIGHUP, lambda *_: flags.__setitem__("reload", True))
    sup.start()
    print(f"dnssensor: capturing on {', '.join(config.interfaces)} with {len(sup.workers)} worker(s); "
          f"database {config.db_path}; {len(rules)} rule(s) from {config.rules_dir}", file=sys.stderr, flush=True)
    while not flags["stop"]:
        time.sleep(SUPERVISOR_TICK_S)
        if flags["reload"]:
            flags["reload"] = False
            sup.reload()
        sup.check()
    status = sup.stop()
    print("dnssensor: stopped", file=sys.stderr)
    return status


def _check_interfaces(config: cfg.Config) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        known = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    missing = [i for i in config.interfaces if i not in known and i != ANY_INTERFACE]
    if missing:
        raise ConfigError(f"{config.path}: capture.interfaces: no such interface: {', '.join(missing)}")
