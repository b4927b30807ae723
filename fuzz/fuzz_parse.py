"""Coverage-guided fuzzing of the compiled parser with atheris.

Each input is one DNS message. The harness checks that nothing raises and that
the compiled parser and the pure-Python twin produce the same records.

    make fuzz                       # seeds fuzz/corpus from the captures, then runs
    python fuzz/fuzz_parse.py -atheris_runs=1000000 fuzz/corpus

Seeds: every DNS payload in tests/data and ../shared/pcaps (written to
fuzz/corpus on first run).
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from sensor.parse import Parser
    from sensor.parse.twin import decode_frame
    from sensor.capture.offline import read_frames

COMPILED = Parser(backend="compiled")
TWIN = Parser(backend="twin")


def seed_corpus(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        return
    folder.mkdir(parents=True, exist_ok=True)
    ports = frozenset((53, 5353, 8053, 1053))
    n = 0
    for source in (REPO / "tests" / "data", REPO.parent / "shared" / "pcaps"):
        for path in sorted(source.glob("*.pcap*")):
            try:
                for fb in read_frames(str(path), 65536):
                    for sec, usec, off, caplen in fb.meta.tolist():
                        d = decode_frame(fb.blob[off:off + caplen], fb.linktype, ports)
                        if d.payload and d.sport in ports | {d.dport}:
                            (folder / f"seed-{n:06d}").write_bytes(d.payload)
                            n += 1
            except Exception:
                continue


def test_one_input(data: bytes) -> None:
    a = list(COMPILED.parse_payloads([data]).records())
    b = list(TWIN.parse_payloads([data]).records())
    if a != b:
        raise AssertionError(f"compiled and twin disagree on {data!r}")


if __name__ == "__main__":
    corpus = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    for folder in corpus:
        seed_corpus(Path(folder))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
