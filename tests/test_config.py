"""The configuration file: the shipped example loads; every mistake names its file and key."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from sensor import cli, config
from sensor.errors import ConfigError
from sensor.rules import load_rules_dir

MALWARE_LOOKUPS = REPO / "tests" / "data" / "generated-malware-lookups.pcap"


def dnssensor(*args: str, cwd=REPO, timeout: int = 120) -> subprocess.CompletedProcess:
    """The command line, run in `cwd` (where it looks for ./rules)."""
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


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


def test_no_rules_folder_configured_means_the_local_one_else_the_sensors_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.resolve_rules_dir(config.Config()).rules_dir == str(REPO / "rules")
    (tmp_path / "rules").mkdir()
    assert config.resolve_rules_dir(config.Config()).rules_dir == str(tmp_path / "rules")


def test_a_named_rules_folder_is_found_beside_its_file_or_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    site = tmp_path / "etc"
    (site / "my-rules").mkdir(parents=True)
    conf = site / "sensor.toml"
    conf.write_text('[rules]\ndir = "my-rules"\n')
    assert config.resolve_rules_dir(config.load(conf)).rules_dir == str(site / "my-rules")
    conf.write_text('[rules]\ndir = "/nonexistent/rules"\n')
    with pytest.raises(ConfigError, match=rf"^{conf}: rules.dir: no such directory: /nonexistent/rules$"):
        config.resolve_rules_dir(config.load(conf))


def test_no_rules_anywhere_is_an_error_not_a_sensor_without_detectors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "shipped_rules_dir", lambda: None)
    with pytest.raises(ConfigError, match=r"rules.dir: not set, and neither ./rules nor"):
        config.resolve_rules_dir(config.Config())


def test_replay_outside_the_source_tree_judges_with_the_sensors_own_rules(tmp_path):
    """Run from any folder with no configuration, a replay still has its detectors, and says
    which rules judged (before, it found no ./rules, ran none and reported 0 verdicts)."""
    out = dnssensor("replay", "--db", "x.db", str(MALWARE_LOOKUPS), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"rules: {len(load_rules_dir(REPO / 'rules'))} from {REPO / 'rules'}" in out.stdout
    assert "3 new verdict(s)" in out.stdout


def test_run_refuses_to_start_on_a_broken_rule_file(tmp_path):
    """Before, each worker died on it and was restarted again and again while the sensor ran
    without detectors."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "typo.toml").write_text('kind = "tunnel"\nseverity = "high"\nwhere = "is_query and lenght > 3"\n'
                                     'group_by = ["client"]\nwindow_s = 60\n[aggregate]\nn = "count()"\n[threshold]\nwhen = "n > 1"\n')
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[capture]\ninterfaces = ["lo"]\n[store]\npath = "{tmp_path / "s.db"}"\n[rules]\ndir = "rules"\n')
    out = dnssensor("run", "--config", str(conf), cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert "typo.toml" in out.stderr and "lenght" in out.stderr and "capturing" not in out.stderr


def test_rules_check_without_a_folder_checks_the_one_the_sensor_would_use(tmp_path):
    def check(*args: str) -> subprocess.CompletedProcess:
        return dnssensor("rules", "check", *args, cwd=tmp_path)

    out = check()
    assert out.returncode == 0 and out.stdout.startswith(f"rules of {REPO / 'rules'}\n")
    assert out.stdout.count("\nok  ") == len(out.stdout.splitlines()) - 1 > len(load_rules_dir(REPO / "rules"))
    conf = tmp_path / "sensor.toml"
    conf.write_text('[rules]\ndir = "gone"\n')
    out = check("--config", str(conf))
    assert out.returncode == 2 and f"{conf}: rules.dir: no such directory" in out.stderr


@pytest.mark.parametrize("setting, error", [
    ('[sensor]\nuser = "no-such-service-user"\n', "sensor.user: no such user 'no-such-service-user'"),
    ('[store]\npath = "{tmp}/a-folder.db"\n', "a-folder.db: unable to open database file"),
    ('[[syslog]]\nhost = "127.0.0.1"\nport = 6514\nprotocol = "tls"\nca_file = "{tmp}/gone.pem"\n',
     "syslog[1].ca_file: cannot read"),
])
def test_run_refuses_to_start_without_its_user_or_its_store(tmp_path, setting, error):
    """Before, the writer died on a missing user or store at every restart, in a tight loop
    (29 restarts in 15 s for the user), and the workers after it; a CA file that cannot be
    read left the TLS target failing for good while its verdicts piled up in the spool."""
    (tmp_path / "a-folder.db").mkdir()
    conf = tmp_path / "sensor.toml"
    conf.write_text(("" if "[store]" in setting else f'[store]\npath = "{tmp_path / "s.db"}"\n')
                    + '[capture]\ninterfaces = ["lo"]\n' + setting.format(tmp=tmp_path))
    out = dnssensor("run", "--config", str(conf), timeout=60)
    assert out.returncode == 2 and error in out.stderr and "capturing" not in out.stderr


def test_worker_and_ring_counts_are_bounded_before_anything_starts(tmp_path):
    """Before, --workers 100000 went past the config file's bound and started processes
    by the hundred, each asking the kernel for a 128 MiB ring."""
    out = dnssensor("run", "--interface", "lo", "--workers", "100000", "--db", str(tmp_path / "s.db"), timeout=60)
    assert out.returncode == 2 and "--workers: 100000: at most 256" in out.stderr
    assert "capturing" not in out.stderr and not (tmp_path / "s.db").exists()
    conf = tmp_path / "sensor.toml"
    conf.write_text('[capture]\ninterfaces = ["lo", "eth9"]\nworkers = 4\nring_mib = 512\n')
    rings = config.load(conf)
    config.check_rings(rings, memory_bytes=9 << 30)        # 4 GiB of rings: under half of 9
    with pytest.raises(ConfigError) as e:
        config.check_rings(rings, memory_bytes=7 << 30)
    assert str(e.value).startswith(f"{conf}: capture.ring_mib: 8 capture ring(s) of 512 MiB")
    assert "capture.workers" in str(e.value) and "4096 MiB" in str(e.value) and "7168 MiB" in str(e.value)
    everything = tmp_path / "everything.toml"
    everything.write_text(f'[capture]\ninterfaces = ["lo"]\nworkers = 256\nring_mib = 4096\n'
                          f'[store]\npath = "{tmp_path / "s.db"}"\n')
    out = dnssensor("run", "--config", str(everything), timeout=60)
    assert out.returncode == 2 and "capture.ring_mib: 256 capture ring(s) of 4096 MiB" in out.stderr
    assert "capturing" not in out.stderr


def test_replay_refuses_a_tls_target_whose_ca_file_cannot_be_read(tmp_path):
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[[syslog]]\nhost = "127.0.0.1"\nport = 6514\nprotocol = "tls"\nca_file = "{tmp_path}/gone.pem"\n')
    out = dnssensor("replay", "--config", str(conf), "--db", str(tmp_path / "x.db"), str(MALWARE_LOOKUPS))
    assert out.returncode == 2 and f"{conf}: syslog[1].ca_file: cannot read {tmp_path}/gone.pem" in out.stderr
    assert not (tmp_path / "x.db").exists()


def test_a_reload_refuses_a_tls_target_whose_ca_file_cannot_be_read(tmp_path, capsys):
    from sensor.engine.live import _reload

    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[store]\npath = "{tmp_path / "s.db"}"\n')
    running = config.resolve_rules_dir(config.load(conf))
    assert _reload(running) is not None
    conf.write_text(conf.read_text() + f'[[syslog]]\nhost = "127.0.0.1"\nport = 6514\nprotocol = "tls"\n'
                                       f'ca_file = "{tmp_path}/gone.pem"\n')
    assert _reload(running) is None
    err = capsys.readouterr().err
    assert "reload refused" in err and "syslog[1].ca_file: cannot read" in err
