"""What the atheris harnesses share: the captures that seed their corpora, and how they
start (python fuzz/fuzz_*.py [libFuzzer flags] CORPUS_FOLDER...)."""
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CAPTURE_FOLDERS = (REPO / "tests" / "data", REPO.parent / "shared" / "pcaps")
"""The captures in the repository, and the shared corpus when it is there."""


def capture_frames() -> Iterator[tuple[int, list[bytes]]]:
    """(link type, frames) of each batch of every capture; one that libpcap cannot read
    further ends its part there."""
    from sensor.capture.offline import read_frames     # here: the harness instruments sensor first

    for source in CAPTURE_FOLDERS:
        for path in sorted(source.glob("*.pcap*")):
            try:
                for fb in read_frames(str(path), 65536):
                    yield fb.linktype, [fb.blob[off:off + caplen] for _, _, off, caplen in fb.meta.tolist()]
            except Exception:
                continue


def seed(folder: Path, inputs: Callable[[], Iterable[bytes]]) -> None:
    """A first corpus in folder, unless it holds one already."""
    if folder.exists() and any(folder.iterdir()):
        return
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(inputs()):
        (folder / f"seed-{n:06d}").write_bytes(data)


def run(test_one_input: Callable[[bytes], None], inputs: Callable[[], Iterable[bytes]]) -> None:
    """Seed every corpus folder named on the command line, then fuzz."""
    import atheris

    for arg in sys.argv[1:]:
        if not arg.startswith("-"):
            seed(Path(arg), inputs)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
