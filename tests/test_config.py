"""The configuration file: the shipped example loads; every mistake names its file and key."""
from __future__ import annotations

import pytest

from conftest import REPO
from sensor import cli, config
from sensor.errors import ConfigError


def test_shipped_example_is_valid():
    conf = config.load(REPO / "deploy" / "dnssensor.toml")
    assert conf.interfaces == ("eth0",) and conf.ports == (53, 5353)
    assert conf.syslog[0].protocol == "tcp" and conf.retention_days["pdns"] == 365


@pytest.mark.parametrize("text, key", [
    ('[capture]\nintrfaces = ["eth0"]\n', "capture.intrfaces: unknown key"),
    ('[capture]\nports = [53, 70000]\n', "capture.ports: item 2: expected 1..65535"),
    ('[capture]\nworkers = "four"\n', "capture.workers: expected an integer"),
    ('[network]\nclient_networks = ["10.0.0.0/33"]\n', "network.client_networks: item 1: not an IP network"),
    ('[[syslog]]\nhost = "h"\nport = 514\nprotocol = "smoke"\n', "syslog[1].protocol: expected one of"),
    ('[[syslog]]\nport = 514\n', "syslog[1].host: missing"),
    ('[store.retention_days]\npdsn = 3\n', "store.retention_days.pdsn: unknown table"),
    ('[limits]\nmax_pending_queries = -1\n', "limits: limit max_pending_queries must be a positive number"),
    ('[limits]\nmax_pendng = 5\n', "limits.max_pendng: unknown limit"),
    ('[limits]\nheap_mmap_threshold = 1073741824\n', "heap_mmap_threshold must be at most 33554432"),
    ('[limits]\nheap_trim_threshold = 4294967296\n', "heap_trim_threshold must be at most 2147483647"),
    ('[capture]\ndedup_window_ms = 500\n', "capture.dedup_window_ms: expected 0..100, got 500"),
    ('[limits]\ndedup_slots = 1000\n', "limit dedup_slots must be a power of two"),
    ('[capture\nports = [53]\n', "not valid TOML"),
])
def test_errors_name_the_file_and_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value).startswith(f"{path}: ")
    assert key in str(e.value)


def test_cli_reports_a_broken_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[store]\nflush_interval_s = 0\n")
    assert cli.main(["status", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "store.flush_interval_s" in err and str(path) in err


def test_broken_rule_file_names_the_file(tmp_path):
    from sensor.detectors import anomaly_burst
    (tmp_path / "anomaly_burst.toml").write_text('threshold = 10\nanomalies = ["truncated", "no_such"]\n')
    with pytest.raises(ConfigError, match=r"anomaly_burst.toml: anomalies: unknown names \['no_such'\]"):
        anomaly_burst.load(tmp_path)


def test_discovery_fills_resolver_addresses_from_this_host():
    conf = config.discover_networks(config.Config())
    assert "127.0.0.1" in conf.resolver_addresses
