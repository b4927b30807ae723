"""Name lists (blocklists, RPZ zones) as feature columns: list_<name> is true when the
question name is on the list <name> (rules/lists/<name>.<ext>).

Formats, by content:
- RPZ zone (a line "<name> CNAME ."): the name itself; "*.<name>" entries match every
  name below <name>. SOA/NS lines, $TTL/$ORIGIN and comments are skipped.
- hosts file ("0.0.0.0 <name>" or "127.0.0.1 <name>"): the name itself.
- plain list (one domain per line): the domain and every name below it.
Lines that are not names are counted and skipped, never fatal. The sensor never downloads
a list: operators drop files in rules/lists/ and reload (SIGHUP).

The lists of a directory share one table (NameListSet), so a name is walked once for all
of them: each list is a bit of the name's list bits, worked out once per name
(sensor.features.memo) whichever list a rule reads first.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sensor import _core
from sensor.errors import ConfigError

LIST_SUFFIXES = (".txt", ".hosts", ".rpz", ".zone", ".conf", ".list")
MAX_LIST_ENTRIES = 5_000_000
"""Names kept per list (32 to 64 bytes each in the table: a 16-byte row, at most half full)."""
MAX_NAME_LISTS = 32
"""Lists in one directory: each is one bit of a name's list bits (a table row holds 32 such
bits for the name itself and 32 for the names below it)."""
_NAME = re.compile(r"^[a-z0-9_*](?:[a-z0-9_.*-]*[a-z0-9_])?$")
_ADDRESS = re.compile(r"^(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f:]+)$")


_SERIALS = itertools.count()


@dataclass
class NameListSet:
    """The lists of one directory in one table (_core.name_list_table); `memo_key` names
    their bits in the memo of name features."""
    table: np.ndarray = field(repr=False)
    memo_key: str = field(default_factory=lambda: f"list bits {next(_SERIALS)}")

    def bits(self, arena: bytes, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Per name (arena span): the bits of the lists it is on."""
        if not len(offsets):
            return np.zeros(0, dtype=np.uint32)
        return _core.names_listed(arena, np.ascontiguousarray(offsets, dtype=np.uint32),
                                  np.ascontiguousarray(lengths, dtype=np.uint16), self.table)


@dataclass
class NameList:
    name: str
    path: str
    entries: int
    skipped: int
    lists: NameListSet = field(repr=False)
    bit: int
    """Its bit in lists.bits()."""

    def listed(self, bits: np.ndarray) -> np.ndarray:
        """Whether names are on this list, from their list bits."""
        return (bits >> np.uint32(self.bit)) & np.uint32(1) != 0

    def mask(self, arena: bytes, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.listed(self.lists.bits(arena, offsets, lengths))


@dataclass
class _Entries:
    """A list file's names by kind, as name-list keys."""
    path: Path
    exact: set[int]
    and_below: set[int]
    below: set[int]
    skipped: int

    def __len__(self) -> int:
        return len(self.exact) + len(self.and_below) + len(self.below)


def _normalise(name: str) -> str | None:
    name = name.strip().rstrip(".").lower()
    return name if name and len(name) <= 253 and _NAME.match(name) else None


def _read_list(path: Path) -> _Entries:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    is_rpz = any(re.search(r"\sCNAME\s+\.\s*$", line, re.I) for line in lines[:200])
    entries = _Entries(path, set(), set(), set(), 0)
    for line in lines:
        line = line.split(";" if is_rpz else "#", 1)[0].strip()
        if not line or line.startswith("$") or line.startswith("@"):
            continue
        parts = line.split()
        if is_rpz:
            if len(parts) < 3 or parts[-2].upper() != "CNAME" or parts[-1] != ".":
                entries.skipped += 1           # SOA, NS and other policies
                continue
            name, target = parts[0], entries.exact
            if name.startswith("*."):
                name, target = name[2:], entries.below
        elif len(parts) >= 2 and _ADDRESS.match(parts[0]):
            name, target = parts[1], entries.exact
        elif len(parts) == 1:
            name, target = parts[0], entries.and_below
        else:
            entries.skipped += 1
            continue
        clean = _normalise(name)
        if clean is None or "*" in clean:
            entries.skipped += 1
            continue
        target.add(_core.name_list_key(clean.encode()))
        if len(entries) >= MAX_LIST_ENTRIES:
            raise ConfigError(f"{path}: more than {MAX_LIST_ENTRIES} names")
    return entries


def _name_lists(files: list[_Entries]) -> list[NameList]:
    """The lists of `files` (at most MAX_NAME_LISTS), sharing one table."""
    keys: list[int] = []
    own: list[int] = []
    below: list[int] = []
    for bit, entries in enumerate(files):
        for kind, is_own, is_below in ((entries.exact, 1, 0), (entries.and_below, 1, 1), (entries.below, 0, 1)):
            keys.extend(kind)
            own.extend([is_own << bit] * len(kind))
            below.extend([is_below << bit] * len(kind))
    lists = NameListSet(_core.name_list_table(np.array(keys, dtype=np.uint64), np.array(own, dtype=np.uint32),
                                              np.array(below, dtype=np.uint32)))
    return [NameList(e.path.stem, str(e.path), len(e), e.skipped, lists, bit) for bit, e in enumerate(files)]


def load_list(path: str | Path) -> NameList:
    return _name_lists([_read_list(Path(path))])[0]


def load_lists(directory: str | Path) -> dict[str, NameList]:
    """Every list file of a directory, by feature name (list_<stem>), in one table."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    features: list[str] = []
    files: list[_Entries] = []
    for p in sorted(directory.iterdir()):
        if p.suffix in LIST_SUFFIXES and p.is_file():
            feature = "list_" + re.sub(r"[^a-z0-9_]", "_", p.stem.lower())
            if feature in features:
                other = files[features.index(feature)].path
                raise ConfigError(f"{p}: list name {feature!r} also used by {other}")
            if len(files) == MAX_NAME_LISTS:
                raise ConfigError(f"{directory}: more than {MAX_NAME_LISTS} name lists")
            features.append(feature)
            files.append(_read_list(p))
    return dict(zip(features, _name_lists(files)))


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
