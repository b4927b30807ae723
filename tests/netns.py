"""Test hosts in network namespaces (pyroute2), joined by veth pairs.

Only the namespaces made here and their loopbacks are ever addressed; every
namespace is removed again by `Topology.close()`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

UNBOUND_COMMON = """\
server:
    username: ""
    chroot: ""
    directory: "{folder}"
    pidfile: "{folder}/unbound.pid"
    use-syslog: no
    logfile: "{folder}/unbound.log"
    verbosity: 1
    do-daemonize: no
    do-ip6: no
    port: 53
    interface: {listen}
    access-control: {allow} allow
    module-config: "iterator"
    qname-minimisation: no
    minimal-responses: yes
    do-not-query-localhost: no
    harden-referral-path: no
    val-permissive-mode: yes
    num-threads: 1
remote-control:
    control-enable: no
"""


def require_root_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in ("ip",) + tools:
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed (make test installs it)")


@dataclass
class Topology:
    prefix: str
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def add_namespace(self, name: str) -> str:
        from pyroute2 import NetNS, netns

        full = f"{self.prefix}{name}"
        if full in netns.listnetns():
            netns.remove(full)
        netns.create(full)
        self.namespaces.append(full)
        with NetNS(full) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        return full

    def link(self, ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str, prefixlen: int = 24) -> None:
        """A veth pair between two namespaces, addressed and up."""
        from pyroute2 import IPRoute, NetNS

        with IPRoute() as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b})
            ipr.link("set", index=ipr.link_lookup(ifname=if_a)[0], net_ns_fd=ns_a)
            ipr.link("set", index=ipr.link_lookup(ifname=if_b)[0], net_ns_fd=ns_b)
        for ns_name, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            with NetNS(ns_name) as ns:
                idx = ns.link_lookup(ifname=ifname)[0]
                ns.addr("add", index=idx, address=addr, prefixlen=prefixlen)
                ns.link("set", index=idx, state="up")

    def route(self, ns_name: str, dst: str, gateway: str) -> None:
        from pyroute2 import NetNS

        with NetNS(ns_name) as ns:
            ns.route("add", dst=dst, gateway=gateway)

    def spawn(self, ns_name: str, cmd: list[str], **kw) -> subprocess.Popen:
        """A process in the namespace, in a process group of its own: close() kills the group,
        so the children of a sensor that a failing test left running go with it."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns_name] + cmd, start_new_session=True, **kw)
        self.processes.append(proc)
        return proc

    def run(self, ns_name: str, cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns_name] + cmd, timeout=timeout, **kw)

    def close(self) -> None:
        from pyroute2 import netns

        for proc in self.processes:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:      # the whole group is gone already
                pass
            proc.wait(10)
        for name in self.namespaces:
            try:
                netns.remove(name)
            except OSError:
                pass


def unbound(top: Topology, ns_name: str, folder: Path, listen: str, allow: str, extra: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "unbound.conf"
    conf.write_text(UNBOUND_COMMON.format(folder=folder, listen=listen, allow=allow) + extra)
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return top.spawn(ns_name, ["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE)
