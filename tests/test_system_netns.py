"""Root system test: live capture on a real resolver's interfaces.

    client ns (10.77.0.2) ── veth ── resolver ns: unbound (10.77.0.1 / 10.78.0.1) ── veth ── auth ns: unbound (10.78.0.2)
                                          │ dnssensor run on both resolver interfaces
                                          └ rsyslog on the resolver namespace's loopback (UDP and TCP)

Queries go through the resolver; the test checks the store's stats and pdns
against what was sent and answered, the verdict lines rsyslog received, a
worker killed with SIGKILL being restarted, and the database's integrity.
Only the namespaces made here are addressed; every loop is bounded.
"""
from __future__ import annotations

import json
import re
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO
from netns import Topology, require_root_tools, unbound
from pyroute2 import NetNS
from realparts import Rsyslog, db_rows as rows, live_config, wait_until, workers_reporting

CLIENT, RES_DOWN, RES_UP, AUTH = "10.77.0.2", "10.77.0.1", "10.78.0.1", "10.78.0.2"
AUTH_ZONE = ('server:\n    local-zone: "test." static\n'
             '    local-data: "www.test. 300 IN A 10.9.9.9"\n'
             '    local-data: "mail.test. 300 IN A 10.9.9.25"\n')
RESOLVER_EXTRA = (f'server:\n    outgoing-interface: {RES_UP}\n    domain-insecure: "test."\n'
                  '    local-zone: "test." transparent\n'
                  f'stub-zone:\n    name: "test."\n    stub-addr: {AUTH}\n')
SENDER = REPO / "tests" / "tools" / "send_queries.py"


def query(top: Topology, ns: str, spec: dict) -> dict:
    out = top.run(ns, [sys.executable, str(SENDER), RES_DOWN, json.dumps(spec)],
                  capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def world(tmp_path):
    require_root_tools("unbound", "rsyslogd")
    top = Topology(f"dst{os.getpid() % 10000}")
    try:
        c, r, a = top.add_namespace("c"), top.add_namespace("r"), top.add_namespace("a")
        top.link(c, "vc0", CLIENT, r, "vr0", RES_DOWN)
        top.link(r, "vr1", RES_UP, a, "va0", AUTH)
        unbound(top, a, tmp_path / "auth", AUTH, "10.78.0.0/24", AUTH_ZONE)
        unbound(top, r, tmp_path / "resolver", RES_DOWN, "10.77.0.0/24", RESOLVER_EXTRA)
        syslog = Rsyslog(tmp_path / "rsyslog", port=10514, netns=r).start()
        assert wait_until(lambda: query(top, c, {"queries": [["www.test", "A"]]})["answered"] == 1, 20, 0.5), \
            "resolver did not come up"
        yield top, c, r, syslog
        syslog.stop()
    finally:
        top.close()


@pytest.fixture
def service_dir():
    """Configuration, rules and state where the unprivileged service user can reach them
    (pytest's own tmp folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="dnssensor-netns-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def service_user_can_run_python() -> bool:
    """The service user must be able to read this Python installation (it cannot when the
    interpreter lives in root's home, as pyenv installs do)."""
    probe = subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-c", "import numpy, sqlite_utils"],
                           cwd=REPO, capture_output=True)
    return probe.returncode == 0


def test_live_capture_on_a_resolver(world, service_dir):
    top, c, r, syslog = world
    tmp_path = service_dir
    nobody = pwd.getpwnam("nobody")
    user = "nobody" if service_user_can_run_python() else ""
    db = tmp_path / "state" / "sensor.db"
    db.parent.mkdir()
    os.chown(db.parent, nobody.pw_uid, nobody.pw_gid)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "anomaly_burst.toml").write_text(
        (REPO / "rules" / "anomaly_burst.toml").read_text().replace("threshold = 20", "threshold = 10"))
    syslog_targets = "".join(f'[[syslog]]\nhost = "127.0.0.1"\nport = {syslog.port}\nprotocol = "{proto}"\n'
                             f'format = "{fmt}"\n' for proto, fmt in (("udp", "json"), ("tcp", "cef")))
    conf = live_config(tmp_path / "sensor.toml", name="netns-test", db=db, rules=rules,
                       resolvers=[RES_DOWN, RES_UP], client_networks=["10.77.0.0/24"],
                       extra=syslog_targets, user=user)

    log = open(tmp_path / "sensor.log", "w")
    sensor = top.spawn(r, [sys.executable, "-m", "sensor", "run", "--config", str(conf)],
                       cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    assert wait_until(lambda: workers_reporting(db) == 4, 30), (tmp_path / "sensor.log").read_text()

    # Workers run as the service user (where it can read this Python) with no capabilities left.
    for (pid,) in rows(db, "SELECT pid FROM workers"):
        status = Path(f"/proc/{pid}/status").read_text()
        if user:
            assert re.search(rf"^Uid:\s+{nobody.pw_uid}\s", status, re.M), status
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status

    names = [["www.test", "A"]] * 10 + [["mail.test", "A"]] * 5 + [[f"nx{i}.test", "A"] for i in range(12)]
    sent = query(top, c, {"queries": names, "malformed": 15})
    assert sent["answered"] == 27 and sent["rcodes"] == {"NOERROR": 15, "NXDOMAIN": 12}

    def client_leg() -> tuple:
        return rows(db, "SELECT sum(queries), sum(responses), sum(answered), sum(nxdomain) FROM stats "
                        f"WHERE resolver = '{RES_DOWN}' AND leg = 'client'")[0]
    # 27 answered queries + 15 malformed ones (unbound answers those with FORMERR or not at all)
    assert wait_until(lambda: (client_leg()[0] or 0) >= 27 + 15, 20), client_leg()
    queries, responses, answered, nxdomain = client_leg()
    assert queries == 27 + 15
    assert answered >= 27 and nxdomain == 12

    def upstream() -> tuple:
        return rows(db, f"SELECT sum(queries), sum(answered) FROM stats WHERE resolver = '{RES_UP}' "
                        "AND leg = 'upstream'")[0]
    # www.test is cached by the start-up probe: mail.test and the 12 NXDOMAIN names go upstream,
    # and every upstream query is answered
    assert wait_until(lambda: (upstream()[0] or 0) >= 1 + 12 and upstream()[1] == upstream()[0], 10), upstream()
    pdns = set(rows(db, "SELECT rrname, rrtype, rdata FROM pdns"))
    assert {("www.test", "A", "10.9.9.9"), ("mail.test", "A", "10.9.9.25")} <= pdns
    nx = {q for (q,) in rows(db, "SELECT qname FROM pdns_nxdomain")}
    assert nx == {f"nx{i}.test" for i in range(12)}

    # The malformed burst: one anomaly verdict, in the store and at rsyslog over UDP and TCP.
    # (Two verdicts when the burst straddles a minute boundary with enough on each side.)
    assert wait_until(lambda: rows(db, "SELECT count(*) FROM verdicts")[0][0] >= 1, 10)
    verdicts = rows(db, "SELECT id, kind, client FROM verdicts")
    assert {(kind, client) for _, kind, client in verdicts} == {("anomaly", CLIENT)}
    lines = syslog.wait_for(lambda ls: len(ls) >= 2 * len(verdicts), 10)
    for vid, _, _ in verdicts:
        assert any(line.endswith("}") and f'"id": {vid}' in line for line in lines)          # JSON over UDP
        assert any("CEF:0|dnssensor|" in line and f"cn1={vid} " in line for line in lines)   # CEF over TCP

    # The receiver goes away; a verdict made meanwhile reaches it over TCP once it is back.
    syslog.stop()
    second_client = "10.77.0.3"
    with NetNS(c) as ns:
        ns.addr("add", index=ns.link_lookup(ifname="vc0")[0], address=second_client, prefixlen=24)
    query(top, c, {"queries": [], "malformed": 25, "source": second_client})
    assert wait_until(lambda: rows(db, f"SELECT count(*) FROM verdicts WHERE client = '{second_client}'")[0][0]
                      >= 1, 10)
    (late_id,) = rows(db, f"SELECT min(id) FROM verdicts WHERE client = '{second_client}'")[0]
    time.sleep(1.0)
    syslog.start()
    lines = syslog.wait_for(lambda ls: any(f"cn1={late_id} " in line for line in ls), 20)
    assert any("CEF:0|dnssensor|" in line and f"cn1={late_id} " in line for line in lines)

    # SIGKILL a worker: the supervisor restarts it and records that it did.
    (pid,) = rows(db, "SELECT pid FROM workers WHERE worker = 'vr0/0'")[0]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: rows(db, "SELECT restarts, pid FROM workers WHERE worker = 'vr0/0'")[0][0] >= 1
                      and rows(db, "SELECT pid FROM workers WHERE worker = 'vr0/0'")[0][0] != pid, 20)
    after = query(top, c, {"queries": [["www.test", "A"]] * 5})
    assert after["answered"] == 5
    assert wait_until(lambda: client_leg()[0] >= 27 + 15 + 5 - 2, 20)   # the killed worker's unflushed share may be lost

    # SIGHUP: a broken rule file is refused and the sensor runs on; a good one takes effect
    # (the next burst updates the same verdict with the new severity) and no state is lost.
    rule_file = rules / "anomaly_burst.toml"
    good = rule_file.read_text()
    rule_file.write_text("threshold = [\n")
    sensor.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload refused" in (tmp_path / "sensor.log").read_text(), 10)
    assert sensor.poll() is None
    rule_file.write_text(good.replace('severity = "medium"', 'severity = "high"'))
    sensor.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "configuration and rules reloaded" in (tmp_path / "sensor.log").read_text(), 10)
    time.sleep(1.0)
    before = client_leg()[0]
    (burst,) = rows(db, "SELECT sum(count) FROM verdicts")[0]
    query(top, c, {"queries": [], "malformed": 25})
    # Same window: the verdict is updated with the new severity; a new window: a new verdict.
    # Either way the burst shows with severity high and nothing counted before is lost.
    assert wait_until(lambda: rows(db, "SELECT count(*) FROM verdicts WHERE severity = 'high'")[0][0] >= 1
                      and rows(db, "SELECT sum(count) FROM verdicts")[0][0] >= burst + 12, 10), \
        rows(db, "SELECT severity, count, window_start FROM verdicts")
    assert wait_until(lambda: client_leg()[0] == before + 25, 10)

    sensor.send_signal(signal.SIGTERM)
    assert sensor.wait(60) == 0, (tmp_path / "sensor.log").read_text()
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    states = dict(rows(db, "SELECT worker, state FROM workers"))
    assert set(states.values()) == {"stopped"}
    sensor_rows = rows(db, "SELECT sum(packets), sum(kernel_received), sum(kernel_dropped) FROM stats "
                           "WHERE leg = 'sensor'")[0]
    assert sensor_rows[0] > 0 and sensor_rows[1] >= sensor_rows[0] and sensor_rows[2] == 0
