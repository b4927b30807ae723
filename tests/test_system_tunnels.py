"""Root system test: the detectors on real traffic through a real resolver (tests/lab.py),
captured live by `dnssensor run` on both of the resolver's interfaces.

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
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import REPO
from lab import BENIGN, CLIENT, OFFNET, RES_DOWN, RES_OFFNET, RES_UP, Lab
from netns import require_root_tools
from realparts import db_rows as rows, live_config, wait_until, workers_reporting


@pytest.fixture
def lab():
    require_root_tools("unbound", "iodine", "iodined", "dns2tcpc", "dns2tcpd")
    pytest.importorskip("scapy")
    folder = Path(tempfile.mkdtemp(prefix="dnssensor-lab-"))
    folder.chmod(0o755)
    the_lab = Lab(folder, f"dsl{os.getpid() % 10000}")
    try:
        yield the_lab.start()
    finally:
        the_lab.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_detectors_on_real_tunnels_floods_and_off_net_use(lab):
    top, r, folder = lab.top, lab.r, lab.folder
    rules = folder / "rules"
    shutil.copytree(REPO / "rules", rules)
    db = folder / "sensor.db"
    conf = live_config(folder / "sensor.toml", name="lab", db=db, rules=rules,
                       resolvers=[RES_DOWN, RES_OFFNET, RES_UP], client_networks=["10.77.0.0/24"])

    log = open(folder / "sensor.log", "w")
    sensor = top.spawn(r, [sys.executable, "-m", "sensor", "run", "--config", str(conf)],
                       cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    assert wait_until(lambda: workers_reporting(db) == 4, 30), (folder / "sensor.log").read_text()

    assert lab.benign()["answered"] == 33
    lab.iodine("t1.test", "NULL", "10.99.0.1")
    lab.iodine("t3.test", "TXT", "10.98.0.1")
    assert lab.dns2tcp() == 1500, (folder / "dns2tcpc.log").read_text()
    lab.exfil(count=150, interval_s=0.02)
    assert lab.offnet()["answered"] == 3
    lab.flood(200)

    def kinds() -> dict[str, set]:
        out: dict[str, set] = {}
        for kind, client, domain in rows(db, "SELECT kind, client, domain FROM verdicts"):
            out.setdefault(kind, set()).add((client, domain))
        return out
    expected_tunnels = {(CLIENT, "t1.test"), (CLIENT, "t2.test"), (CLIENT, "t3.test")}
    assert wait_until(lambda: expected_tunnels <= kinds().get("tunnel", set()) and kinds().get("exfil")
                      and kinds().get("cache_poisoning") and kinds().get("open_resolver"), 20), kinds()
    sensor.send_signal(signal.SIGTERM)
    assert sensor.wait(60) == 0, (folder / "sensor.log").read_text()

    found = kinds()
    assert {c for c, _ in found["tunnel"]} == {CLIENT}
    assert ("", "") not in found["cache_poisoning"]
    assert any(domain == "www.slow.test" for _, domain in found["cache_poisoning"])
    assert {client for client, _ in found["open_resolver"]} == {OFFNET}
    assert ("", "exfil.test") in found["exfil"]
    flagged = rows(db, "SELECT kind, client, domain, summary FROM verdicts")
    assert not [v for v in flagged if v[1] == BENIGN or v[2].endswith("corp.test")], flagged
    evidence = json.loads(rows(db, "SELECT evidence FROM verdicts WHERE kind = 'tunnel' AND domain = 't1.test'")[0][0])
    assert evidence["values"]["data_types"] == evidence["values"]["queries"]      # NULL queries
    assert all(name.endswith("t1.test") for name in evidence["sample_qnames"])
