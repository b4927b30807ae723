"""Builds the Cython extensions in ext/ into the sensor package.

Compiler directives live here, in one place. DNSSENSOR_DEBUG=1 builds with
-O0 -g and bounds checks on, for gdb and sanitizers. DNSSENSOR_PGO=generate
builds a core that records its branch profile into build/pgo, and
DNSSENSOR_PGO=use builds the final core from that profile (`make build` runs
both around tools/pgo_train.py).
"""
import os
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("DNSSENSOR_DEBUG") == "1"

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
}
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3"]
LDFLAGS: list[str] = []
PGO = "" if DEBUG else os.environ.get("DNSSENSOR_PGO", "")
PGO_DIR = os.path.abspath(os.path.join("build", "pgo"))
if PGO == "generate":
    CFLAGS += [f"-fprofile-generate={PGO_DIR}", "-fprofile-update=single"]
    LDFLAGS += [f"-fprofile-generate={PGO_DIR}"]
elif PGO == "use":
    # Code the training did not run keeps its ordinary optimisation.
    CFLAGS += [f"-fprofile-use={PGO_DIR}", "-fprofile-partial-training", "-Wno-missing-profile"]
elif PGO:
    raise SystemExit(f"DNSSENSOR_PGO must be generate or use, not {PGO!r}")

extensions = [
    Extension(
        "sensor._core",
        ["ext/_core.pyx"],
        include_dirs=[numpy.get_include(), "ext"],
        extra_compile_args=CFLAGS,
        extra_link_args=LDFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "sensor.capture._frames",
        ["ext/_frames.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=CFLAGS,
        extra_link_args=LDFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]



def rule_files() -> list[tuple[str, list[str]]]:
    """rules/ as data files under <prefix>/share/dnssensor/rules (sensor.config.SHIPPED_RULES):
    an installed sensor run with no rules folder configured finds them there. And the
    captures of tests/data, which the rules' data: samples name, under
    <prefix>/share/dnssensor/samples (sensor.detectors.samples.SHIPPED_SAMPLES), with their
    provenance: `dnssensor rules test` on an installed sensor replays them."""
    folders: dict[str, list[str]] = {}
    for path in sorted(Path("rules").rglob("*")):
        if path.is_file():
            folders.setdefault(str(Path("share", "dnssensor", path.parent)), []).append(str(path))
    samples = [str(p) for p in sorted(Path("tests", "data").iterdir())
               if p.is_file() and (".pcap" in p.name or p.name == "PROVENANCE.md")]
    folders[str(Path("share", "dnssensor", "samples"))] = samples
    return sorted(folders.items())


setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES, include_path=["ext"]),
      data_files=rule_files())
