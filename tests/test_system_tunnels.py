"""Root system test: the detectors on real traffic through a real resolver.

    client ns: 10.77.0.2 (tunnels), 10.77.0.5 (benign), 10.77.1.9 (off-net)
        │ veth
    resolver ns: unbound on 10.77.0.1 / 10.77.1.1, upstream from 10.78.0.1; dnssensor run on both sides
        │ veth
    authoritative ns: iodined for t1.test (10.78.0.2) and t3.test (10.78.0.4), dns2tcpd for
                      t2.test (10.78.0.3), nothing on 10.78.0.5 (slow.test: queries stay open)

iodine runs in two record modes (NULL, TXT) and dns2tcp in its own, each pushing a little
traffic through; a benign client resolves the site's names and misses a few (search-domain
style); an off-net client uses the resolver; scapy floods the resolver's open upstream query
with forged responses. Each tunnel's client and domain must be flagged, the flood as
cache_poisoning, the off-net client as open_resolver, and nothing about the benign client or
the site's own names. Only the namespaces made here are addressed; every loop is bounded.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO
from netns import Topology, require_root_tools, unbound
from realparts import wait_until

CLIENT, BENIGN, OFFNET = "10.77.0.2", "10.77.0.5", "10.77.1.9"
RES_DOWN, RES_OFFNET, RES_UP = "10.77.0.1", "10.77.1.1", "10.78.0.1"
IODINE_NULL, DNS2TCP, IODINE_TXT, SLOW = "10.78.0.2", "10.78.0.3", "10.78.0.4", "10.78.0.5"
TOOLS = REPO / "tests" / "tools"
RESOLVER = (f'server:\n    outgoing-interface: {RES_UP}\n    domain-insecure: "test."\n'
            '    local-zone: "test." transparent\n'
            f'    interface: {RES_OFFNET}\n    access-control: 10.77.1.0/24 allow\n'
            '    local-zone: "corp.test." static\n'
            '    local-data: "www.corp.test. 300 IN A 10.77.0.80"\n'
            '    local-data: "mail.corp.test. 300 IN A 10.77.0.25"\n'
            '    local-data: "files.corp.test. 300 IN A 10.77.0.81"\n'
            + "".join(f'stub-zone:\n    name: "{zone}."\n    stub-addr: {addr}\n'
                      for zone, addr in (("t1.test", IODINE_NULL), ("t2.test", DNS2TCP),
                                         ("t3.test", IODINE_TXT), ("slow.test", SLOW))))


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def queries(top: Topology, ns: str, spec: dict, server: str = RES_DOWN) -> dict:
    out = top.run(ns, [sys.executable, str(TOOLS / "send_queries.py"), server, json.dumps(spec)],
                  capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def iodine_session(top: Topology, ns: str, domain: str, record_type: str, tunnel_ip: str, log: Path) -> None:
    """Connect, push 20 datagrams through the tunnel, disconnect: bounded in time."""
    proc = top.spawn(ns, ["iodine", "-f", "-r", "-P", "labsecret", "-T", record_type, RES_DOWN, domain],
                     stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: "Connection setup complete" in log.read_text(), 40, 0.2), log.read_text()
        top.run(ns, [sys.executable, str(TOOLS / "tunnel_traffic.py"), "udp", tunnel_ip, "20"], timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@pytest.fixture
def lab():
    require_root_tools("unbound", "iodine", "iodined", "dns2tcpc", "dns2tcpd")
    pytest.importorskip("scapy")
    folder = Path(tempfile.mkdtemp(prefix="dnssensor-lab-"))
    folder.chmod(0o755)
    top = Topology(f"dsl{os.getpid() % 10000}")
    try:
        c, r, a = top.add_namespace("c"), top.add_namespace("r"), top.add_namespace("a")
        top.link(c, "vc0", CLIENT, r, "vr0", RES_DOWN)
        top.link(r, "vr1", RES_UP, a, "va0", IODINE_NULL)
        from pyroute2 import NetNS
        for ns, ifname, extra in ((c, "vc0", [BENIGN]), (c, "vc0", []), (r, "vr0", []),
                                  (a, "va0", [DNS2TCP, IODINE_TXT, SLOW])):
            with NetNS(ns) as n:
                for addr in extra:
                    n.addr("add", index=n.link_lookup(ifname=ifname)[0], address=addr, prefixlen=24)
        with NetNS(c) as n:
            n.addr("add", index=n.link_lookup(ifname="vc0")[0], address=OFFNET, prefixlen=24)
        with NetNS(r) as n:
            n.addr("add", index=n.link_lookup(ifname="vr0")[0], address=RES_OFFNET, prefixlen=24)
        unbound(top, r, folder / "resolver", RES_DOWN, "10.77.0.0/24", RESOLVER)
        for addr, domain, net in ((IODINE_NULL, "t1.test", "10.99.0.1/24"), (IODINE_TXT, "t3.test", "10.98.0.1/24")):
            top.spawn(a, ["iodined", "-f", "-c", "-P", "labsecret", "-l", addr, "-p", "53", net, domain],
                      stdout=open(folder / f"iodined-{domain}.log", "w"), stderr=subprocess.STDOUT)
        (folder / "dns2tcpd.conf").write_text(
            f"listen = {DNS2TCP}\nport = 53\nuser = nobody\nchroot = /tmp\ndomain = t2.test\n"
            "resources = echo:127.0.0.1:7\n")
        top.spawn(a, [sys.executable, str(TOOLS / "echo_server.py")])
        top.spawn(a, ["dns2tcpd", "-F", "-f", str(folder / "dns2tcpd.conf")],
                  stdout=open(folder / "dns2tcpd.log", "w"), stderr=subprocess.STDOUT)
        assert wait_until(lambda: queries(top, c, {"queries": [["www.corp.test", "A"]]})["answered"] == 1, 20, 0.5)
        yield top, c, r, a, folder
    finally:
        top.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_detectors_on_real_tunnels_floods_and_off_net_use(lab):
    top, c, r, a, folder = lab
    rules = folder / "rules"
    shutil.copytree(REPO / "rules", rules)
    db = folder / "sensor.db"
    conf = folder / "sensor.toml"
    conf.write_text(f"""
[sensor]
name = "lab"
[capture]
interfaces = ["vr0", "vr1"]
ports = [53]
workers = 2
ring_mib = 8
[network]
resolver_addresses = ["{RES_DOWN}", "{RES_OFFNET}", "{RES_UP}"]
client_networks = ["10.77.0.0/24"]
[store]
path = "{db}"
flush_interval_s = 0.3
[rules]
dir = "{rules}"
""")
    log = open(folder / "sensor.log", "w")
    sensor = top.spawn(r, [sys.executable, "-m", "sensor", "run", "--config", str(conf)],
                       cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def started() -> bool:
        try:
            return db.exists() and rows(db, "SELECT count(*) FROM workers")[0][0] == 4
        except sqlite3.OperationalError:
            return False
    assert wait_until(started, 30), (folder / "sensor.log").read_text()

    # benign: the site's names, again and again, and a few search-domain misses
    benign = queries(top, c, {"source": BENIGN, "queries":
                              [["www.corp.test", "A"], ["mail.corp.test", "A"], ["files.corp.test", "A"]] * 10
                              + [[f"{h}.corp.test", "A"] for h in ("printer", "nas", "wiki")]})
    assert benign["answered"] == 33

    iodine_session(top, c, "t1.test", "NULL", "10.99.0.1", folder / "iodine-null.log")
    iodine_session(top, c, "t3.test", "TXT", "10.98.0.1", folder / "iodine-txt.log")

    tcp = top.spawn(c, ["dns2tcpc", "-z", "t2.test", "-r", "echo", "-l", "4444", RES_DOWN],
                    stdout=open(folder / "dns2tcpc.log", "w"), stderr=subprocess.STDOUT)
    try:
        time.sleep(2)
        echoed = top.run(c, [sys.executable, str(TOOLS / "tunnel_traffic.py"), "tcp", "127.0.0.1:4444", "5"],
                         capture_output=True, text=True, timeout=90)
        assert int(echoed.stdout.strip() or 0) == 1500, (folder / "dns2tcpc.log").read_text() + echoed.stderr
    finally:
        tcp.send_signal(signal.SIGTERM)
        tcp.wait(10)

    # off-net use of the resolver
    assert queries(top, c, {"source": OFFNET, "queries": [["www.corp.test", "A"]] * 3}, RES_OFFNET)["answered"] == 3

    # Kaminsky-style: the resolver asks slow.test's (silent) server; forged answers race in
    asker = top.spawn(c, [sys.executable, str(TOOLS / "send_queries.py"), RES_DOWN,
                          json.dumps({"queries": [["www.slow.test", "A"]]})], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    flood = top.run(a, [sys.executable, str(TOOLS / "spoof_flood.py"), SLOW, RES_UP, "www.slow.test", "200"],
                    capture_output=True, text=True, timeout=60)
    assert flood.returncode == 0, flood.stderr
    asker.wait(30)

    def kinds() -> dict[str, set]:
        out: dict[str, set] = {}
        for kind, client, domain in rows(db, "SELECT kind, client, domain FROM verdicts"):
            out.setdefault(kind, set()).add((client, domain))
        return out
    expected_tunnels = {(CLIENT, "t1.test"), (CLIENT, "t2.test"), (CLIENT, "t3.test")}
    assert wait_until(lambda: expected_tunnels <= kinds().get("tunnel", set())
                      and kinds().get("cache_poisoning") and kinds().get("open_resolver"), 20), kinds()
    sensor.send_signal(signal.SIGTERM)
    assert sensor.wait(60) == 0, (folder / "sensor.log").read_text()

    found = kinds()
    assert {c for c, _ in found["tunnel"]} == {CLIENT}
    assert ("", "") not in found["cache_poisoning"]
    assert any(domain == "www.slow.test" for _, domain in found["cache_poisoning"])
    assert {client for client, _ in found["open_resolver"]} == {OFFNET}
    flagged = rows(db, "SELECT kind, client, domain, summary FROM verdicts")
    assert not [v for v in flagged if v[1] == BENIGN or v[2].endswith("corp.test")], flagged
    evidence = json.loads(rows(db, "SELECT evidence FROM verdicts WHERE kind = 'tunnel' AND domain = 't1.test'")[0][0])
    assert evidence["values"]["data_types"] == evidence["values"]["queries"]      # NULL queries
    assert all(name.endswith("t1.test") for name in evidence["sample_qnames"])
