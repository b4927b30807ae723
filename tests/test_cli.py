"""The command line: output, errors, help, and the README kept in step with the schema."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import DATA, REPO
from sensor import schema
from sensor.cli import COMMANDS, build_parser

BASELINE = str(DATA / "dnscap-baseline-udp-82-msgs.pcap")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_dump_jsonl_has_every_documented_field():
    out = run("dump", BASELINE)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 82
    documented = [name for name, _ in schema.RECORD_FIELDS]
    assert all(list(r) == documented for r in records)
    first = records[1]
    assert first["qname"] == "google.com" and first["answers"][0]["data"] == "216.58.218.206"


def test_dump_table_and_several_files():
    out = run("dump", BASELINE, str(DATA / "gdc-baseline-udp-33-msgs.pcap"), "--format", "table")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert len(lines) == 1 + 82 + 33 and "google.com" in lines[1]


def test_dump_extra_port():
    path = str(DATA / "suricata-malformed-tcp1053-1500-questions-overlong-qnames.pcap")
    assert run("dump", path).stdout == ""
    assert len(run("dump", path, "--port", "1053").stdout.splitlines()) == 1


@pytest.mark.parametrize("path, message", [
    ("/nonexistent.pcap", "No such file"),
    (str(REPO / "README.md"), "unknown file format"),
    (str(REPO / "tests"), "is a directory"),
])
def test_unreadable_input_gives_one_line_and_status_2(path, message):
    out = run("dump", path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr and out.stderr.startswith("dnssensor: error:")
    assert out.stderr.count(path) == 1


def test_standard_input_and_pipes_are_read_alone(tmp_path):
    for name in ("-", "/dev/stdin"):
        with open(BASELINE, "rb") as f:
            out = subprocess.run([sys.executable, "-m", "sensor", "dump", name], stdin=f, capture_output=True,
                                 text=True, cwd=REPO, timeout=120)
        assert out.returncode == 0 and len(out.stdout.splitlines()) == 82, out.stderr
    # a named pipe is read as it comes, never looked into first (that would consume its start)
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(Path(BASELINE).read_bytes()), daemon=True)
    writer.start()
    out = run("dump", str(fifo))
    writer.join(timeout=30)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 82, out.stderr
    out = run("replay", "--db", str(tmp_path / "x.db"), BASELINE, "-")
    assert out.returncode == 2 and "-: a pipe or standard input is read alone" in out.stderr
    # A compressed capture on standard input says what to do instead of "unknown file format" alone.
    import gzip
    out = subprocess.run([sys.executable, "-m", "sensor", "dump", "-"], input=gzip.compress(Path(BASELINE).read_bytes()),
                         capture_output=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and b"a compressed capture is not read from a pipe or standard input" in out.stderr


def test_pcapng_of_interfaces_with_different_link_types_is_explained(tmp_path):
    def block(kind: int, body: bytes) -> bytes:
        return struct.pack("<II", kind, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    interfaces = block(1, struct.pack("<HHI", 1, 0, 65535)) + block(1, struct.pack("<HHI", 101, 0, 65535))
    mixed = tmp_path / "mixed.pcapng"
    mixed.write_bytes(shb + interfaces)
    out = run("dump", str(mixed))
    assert out.returncode == 2 and "all its interfaces share one link type" in out.stderr


def test_truncated_capture_reports_where(tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((DATA / "dnscap-baseline-udp-82-msgs.pcap").read_bytes()[:1000])
    out = run("dump", str(cut))
    assert out.returncode == 2 and "truncated" in out.stderr
    assert out.stdout.count("\n") >= 1        # the complete frames before the cut were written


def test_a_capture_cut_short_is_replayed_and_stored_up_to_the_cut(tmp_path):
    """A tcpdump killed mid-write leaves a last record cut short. The replay stores every
    message before it and says where it stopped (exit 2, as tshark does). Before, it stored
    nothing at all: the error left the replay before its data was written."""
    import sqlite3

    data = (DATA / "lab-resolver.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-10])
    dumped = [json.loads(line) for line in run("dump", str(cut)).stdout.splitlines()]
    out = run("replay", "--db", str(tmp_path / "x.db"), str(cut))
    assert out.returncode == 2 and "cut.pcap: truncated" in out.stderr and "frames read before are stored" in out.stderr
    with sqlite3.connect(tmp_path / "x.db") as conn:
        queries, responses = conn.execute("SELECT sum(queries), sum(responses) FROM stats "
                                          "WHERE leg != 'sensor'").fetchone()
    assert (queries, responses) == (sum(1 for m in dumped if not m["qr"]), sum(1 for m in dumped if m["qr"]))
    assert queries + responses > 1800


def test_a_replay_that_would_count_nothing_or_everything_twice_is_refused(tmp_path):
    """A window that ends before it begins replayed nothing, and a capture named twice (a
    glob and the file it already matched, or a link to it) was replayed twice: both exited 0."""
    capture = DATA / "dnscap-baseline-udp-82-msgs.pcap"
    link = tmp_path / "link.pcap"
    link.symlink_to(capture)
    db = tmp_path / "x.db"
    out = run("replay", "--db", str(db), str(capture), "--from", "2030-01-01", "--until", "2020-01-01")
    assert out.returncode == 2 and "the window is empty: --from (2030-01-01 00:00:00 UTC) is not before" in out.stderr
    out = run("replay", "--db", str(db), str(capture), str(capture))
    assert out.returncode == 2 and f"{capture}: given twice: its traffic would be counted twice" in out.stderr
    out = run("replay", "--db", str(db), str(capture), str(link))
    assert out.returncode == 2 and f"link.pcap: given twice (the same file as {capture})" in out.stderr
    assert not db.exists()
    out = run("replay", "--db", str(db), str(capture), str(DATA / "lab-resolver.pcap"))
    assert out.returncode == 0 and "replayed 2 file(s)" in out.stdout


def test_every_command_has_help_with_an_example_and_is_documented():
    readme = (REPO / "README.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    for name, command in sub.choices.items():
        assert "Example:" in command.format_help()
        assert f"dnssensor {name}" in readme


def test_readme_field_reference_is_generated_from_the_schema():
    sys.path.insert(0, str(REPO / "tools"))
    from gen_field_reference import spliced
    readme = (REPO / "README.md").read_text()
    assert spliced(readme) == readme, "run `make readme`"
