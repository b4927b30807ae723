"""Shared fixtures: where the captures are, and the two parser backends."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sensor.parse import BACKENDS, Parser

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
SHARED_PCAPS = Path(os.environ.get("DNSSENSOR_SHARED_PCAPS", REPO.parent / "shared" / "pcaps"))
TEST_PORTS = (53, 5353, 8053, 1053)


def capture(name: str) -> Path:
    """A capture by file name: the repo's copy if there is one, else the shared corpus."""
    for folder in (DATA, SHARED_PCAPS):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"{name} is not in tests/data and the shared corpus is absent")


def shared_captures() -> list[str]:
    if not SHARED_PCAPS.is_dir():
        return sorted(p.name for p in DATA.glob("*.pcap*"))
    return sorted(p.name for p in SHARED_PCAPS.glob("*.pcap*"))


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_parser(backend):
    def make(**kw) -> Parser:
        kw.setdefault("ports", TEST_PORTS)
        return Parser(backend=backend, **kw)
    return make
