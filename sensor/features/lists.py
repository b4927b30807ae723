"""Name lists (blocklists, RPZ zones) as feature columns: list_<name> is true when the
question name is on the list <name> (rules/lists/<name>.<ext>).

Formats, by content:
- RPZ zone (a line "<name> CNAME ."): the name itself; "*.<name>" entries match every
  name below <name>. SOA/NS lines, $TTL/$ORIGIN and comments are skipped.
- hosts file ("0.0.0.0 <name>" or "127.0.0.1 <name>"): the name itself.
- plain list (one domain per line): the domain and every name below it.
Lines that are not names are counted and skipped, never fatal. The sensor never downloads
a list: operators drop files in rules/lists/ and reload (SIGHUP).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sensor import _core
from sensor.errors import ConfigError
from sensor.parse.psl import hash_set_table, reversed_name_hash

LIST_SUFFIXES = (".txt", ".hosts", ".rpz", ".zone", ".conf", ".list")
MAX_LIST_ENTRIES = 5_000_000
"""Names kept per list (about 16 bytes each in the hash sets)."""
_NAME = re.compile(r"^[a-z0-9_*](?:[a-z0-9_.*-]*[a-z0-9_])?$")
_ADDRESS = re.compile(r"^(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f:]+)$")


@dataclass
class NameList:
    name: str
    path: str
    exact: np.ndarray = field(repr=False)
    with_subdomains: np.ndarray = field(repr=False)
    below_only: np.ndarray = field(repr=False)
    entries: int
    skipped: int

    def mask(self, arena: bytes, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if not len(offsets):
            return np.zeros(0, dtype=bool)
        return _core.names_listed(arena, np.ascontiguousarray(offsets, dtype=np.uint32),
                                  np.ascontiguousarray(lengths, dtype=np.uint16),
                                  self.exact, self.with_subdomains, self.below_only).astype(bool)


def _normalise(name: str) -> str | None:
    name = name.strip().rstrip(".").lower()
    return name if name and len(name) <= 253 and _NAME.match(name) else None


def load_list(path: str | Path) -> NameList:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    is_rpz = any(re.search(r"\sCNAME\s+\.\s*$", line, re.I) for line in lines[:200])
    exact: set[int] = set()
    and_below: set[int] = set()
    below: set[int] = set()
    skipped = 0
    for line in lines:
        line = line.split(";" if is_rpz else "#", 1)[0].strip()
        if not line or line.startswith("$") or line.startswith("@"):
            continue
        parts = line.split()
        if is_rpz:
            if len(parts) < 3 or parts[-2].upper() != "CNAME" or parts[-1] != ".":
                skipped += 1           # SOA, NS and other policies
                continue
            name, target = parts[0], exact
            if name.startswith("*."):
                name, target = name[2:], below
        elif len(parts) >= 2 and _ADDRESS.match(parts[0]):
            name, target = parts[1], exact
        elif len(parts) == 1:
            name, target = parts[0], and_below
        else:
            skipped += 1
            continue
        clean = _normalise(name)
        if clean is None or "*" in clean:
            skipped += 1
            continue
        target.add(reversed_name_hash(clean))
        if len(exact) + len(and_below) + len(below) >= MAX_LIST_ENTRIES:
            raise ConfigError(f"{path}: more than {MAX_LIST_ENTRIES} names")
    return NameList(path.stem, str(path), hash_set_table(exact), hash_set_table(and_below),
                    hash_set_table(below), len(exact) + len(and_below) + len(below), skipped)


def load_lists(directory: str | Path) -> dict[str, NameList]:
    """Every list file of a directory, by feature name (list_<stem>)."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    out = {}
    for p in sorted(directory.iterdir()):
        if p.suffix in LIST_SUFFIXES and p.is_file():
            feature = "list_" + re.sub(r"[^a-z0-9_]", "_", p.stem.lower())
            if feature in out:
                raise ConfigError(f"{p}: list name {feature!r} also used by {out[feature].path}")
            out[feature] = load_list(p)
    return out


@dataclass
class NamePattern:
    """A regular expression over question names (rules/patterns.toml): feature pattern_<name>,
    true where it matches. For tool signatures that no aggregate shows (a one-query exfil)."""
    name: str
    regex: str
    compiled: re.Pattern = field(repr=False)

    def mask(self, arena: bytes, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Whether each name (arena span) matches. Names are searched as given: the worker's
        memo of name features (sensor.features.memo) asks once per name."""
        search = self.compiled.search
        return np.fromiter((search(arena[o:o + n].decode("ascii", "replace")) is not None
                            for o, n in zip(np.asarray(offsets).tolist(), np.asarray(lengths).tolist())),
                           dtype=bool, count=len(offsets))
