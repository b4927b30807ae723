"""The project's lab: a real resolver (unbound), real tunnel servers (iodined, dns2tcpd) and
clients in network namespaces, with scripted traffic: benign look-ups, tunnels in several
record modes, a slow-ish exfiltration, off-net use of the resolver and a Kaminsky-style
flood. Used by the root system test and by tools/record_lab.py, which records the demo
capture from it. Only its own namespaces are addressed; every traffic loop is bounded.

    client ns: 10.77.0.2 (tunnels), 10.77.0.5 (benign), 10.77.1.9 (off-net)
        │ veth
    resolver ns: unbound on 10.77.0.1 / 10.77.1.1, upstream from 10.78.0.1
        │ veth
    authoritative ns: iodined for t1.test (10.78.0.2) and t3.test (10.78.0.4), dns2tcpd for
                      t2.test (10.78.0.3), nothing on 10.78.0.5 (slow.test: queries stay open)
"""
from __future__ import annotations

import base64
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from netns import Topology, unbound
from realparts import wait_until

REPO = Path(__file__).resolve().parent.parent

CLIENT, BENIGN, OFFNET = "10.77.0.2", "10.77.0.5", "10.77.1.9"
RES_DOWN, RES_OFFNET, RES_UP = "10.77.0.1", "10.77.1.1", "10.78.0.1"
IODINE_NULL, DNS2TCP, IODINE_TXT, SLOW = "10.78.0.2", "10.78.0.3", "10.78.0.4", "10.78.0.5"
TOOLS = REPO / "tests" / "tools"
RESOLVER = (f'server:\n    outgoing-interface: {RES_UP}\n    domain-insecure: "test."\n'
            '    local-zone: "test." transparent\n'
            f'    interface: {RES_OFFNET}\n    access-control: 10.77.1.0/24 allow\n'
            '    local-zone: "corp.test." static\n'
            '    local-zone: "exfil.test." static\n'
            '    local-data: "www.corp.test. 300 IN A 10.77.0.80"\n'
            '    local-data: "mail.corp.test. 300 IN A 10.77.0.25"\n'
            '    local-data: "files.corp.test. 300 IN A 10.77.0.81"\n'
            + "".join(f'stub-zone:\n    name: "{zone}."\n    stub-addr: {addr}\n'
                      for zone, addr in (("t1.test", IODINE_NULL), ("t2.test", DNS2TCP),
                                         ("t3.test", IODINE_TXT), ("slow.test", SLOW))))


class Lab:
    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder = folder
        self.top = Topology(prefix)

    def start(self) -> "Lab":
        from pyroute2 import NetNS

        top, folder = self.top, self.folder
        self.c, self.r, self.a = c, r, a = top.add_namespace("c"), top.add_namespace("r"), top.add_namespace("a")
        top.link(c, "vc0", CLIENT, r, "vr0", RES_DOWN)
        top.link(r, "vr1", RES_UP, a, "va0", IODINE_NULL)
        for ns, ifname, extra in ((c, "vc0", [BENIGN, OFFNET]), (r, "vr0", [RES_OFFNET]),
                                  (a, "va0", [DNS2TCP, IODINE_TXT, SLOW])):
            with NetNS(ns) as n:
                for addr in extra:
                    n.addr("add", index=n.link_lookup(ifname=ifname)[0], address=addr, prefixlen=24)
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
        if not wait_until(lambda: self.queries({"queries": [["www.corp.test", "A"]]})["answered"] == 1, 20, 0.5):
            raise RuntimeError("the lab resolver did not come up")
        return self

    def close(self) -> None:
        self.top.close()

    def queries(self, spec: dict, server: str = RES_DOWN) -> dict:
        out = self.top.run(self.c, [sys.executable, str(TOOLS / "send_queries.py"), server, json.dumps(spec)],
                           capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(out.stderr)
        return json.loads(out.stdout)

    def benign(self) -> dict:
        """The site's names, again and again, and a few search-domain misses."""
        return self.queries({"source": BENIGN, "queries":
                             [["www.corp.test", "A"], ["mail.corp.test", "A"], ["files.corp.test", "A"]] * 10
                             + [[f"{h}.corp.test", "A"] for h in ("printer", "nas", "wiki")]})

    def iodine(self, domain: str, record_type: str, tunnel_ip: str) -> None:
        """Connect, push 20 datagrams through the tunnel, disconnect: bounded in time."""
        log = self.folder / f"iodine-{domain}.log"
        proc = self.top.spawn(self.c, ["iodine", "-f", "-r", "-P", "labsecret", "-T", record_type, RES_DOWN, domain],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
        try:
            if not wait_until(lambda: "Connection setup complete" in log.read_text(), 40, 0.2):
                raise RuntimeError(log.read_text())
            self.top.run(self.c, [sys.executable, str(TOOLS / "tunnel_traffic.py"), "udp", tunnel_ip, "20"],
                         timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)

    def dns2tcp(self, sessions: int = 2) -> int:
        """Five round trips to an echo service through dns2tcp; the bytes echoed back by the
        best of at most `sessions` sessions. A real tunnel through a real resolver sometimes
        loses its connection on a loaded host (CI saw 4 of 5 round trips once); a second
        session tells that apart from a tunnel that does not work."""
        best = 0
        for _ in range(sessions):
            best = max(best, self._dns2tcp_session())
            if best == 5 * 300:
                break
        return best

    def _dns2tcp_session(self) -> int:
        proc = self.top.spawn(self.c, ["dns2tcpc", "-z", "t2.test", "-r", "echo", "-l", "4444", RES_DOWN],
                              stdout=open(self.folder / "dns2tcpc.log", "w"), stderr=subprocess.STDOUT)
        try:
            time.sleep(2)
            out = self.top.run(self.c, [sys.executable, str(TOOLS / "tunnel_traffic.py"), "tcp",
                                        "127.0.0.1:4444", "5"], capture_output=True, text=True, timeout=90)
            return int(out.stdout.strip() or 0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)

    def exfil(self, count: int = 150, interval_s: float = 0.2) -> None:
        """A file leaving in base32 labels under exfil.test, one query every interval."""
        rng = random.Random(23)
        names = []
        for i in range(count):
            chunk = base64.b32encode(bytes(rng.randrange(256) for _ in range(50))).decode().lower().rstrip("=")
            names.append([f"{chunk[:40]}.{chunk[40:]}.{i:x}.exfil.test", "A"])
        self.queries({"queries": names, "interval_s": interval_s})

    def offnet(self) -> dict:
        return self.queries({"source": OFFNET, "queries": [["www.corp.test", "A"]] * 3}, RES_OFFNET)

    def flood(self, count: int = 200) -> None:
        """The resolver asks slow.test's silent server; forged answers with guessed ids race in."""
        asker = self.top.spawn(self.c, [sys.executable, str(TOOLS / "send_queries.py"), RES_DOWN,
                                        json.dumps({"queries": [["www.slow.test", "A"]]})], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        out = self.top.run(self.a, [sys.executable, str(TOOLS / "spoof_flood.py"), SLOW, RES_UP, "www.slow.test",
                                    str(count)], capture_output=True, text=True, timeout=60)
        asker.wait(30)
        if out.returncode:
            raise RuntimeError(out.stderr)
