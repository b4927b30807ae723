"""Public Suffix List rules for finding the registered domain (eTLD+1).

The rules come from the snapshot bundled with tldextract, so the sensor never
downloads anything; an operator may point at a local public_suffix_list.dat
instead. The compiled parser gets them as one open-addressing table keyed by the
FNV-1a hash of each suffix with its labels reversed ("uk.co" for "co.uk"), so
it walks a name from its last label leftwards hashing each label once and
probing once per label, and stops at the first suffix no rule ends with. Each
entry carries flags: a plain rule, the base of a wildcard ``*.suffix``, an
exception, or an inner suffix of a longer rule (the walk goes on). The
reference twin uses the rule sets themselves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

# Flags of a suffix in the compiled table (the low bits of each entry); the
# same values as PSL_RULE... in ext/_core.pyx.
FLAG_RULE, FLAG_WILDCARD, FLAG_EXCEPTION, FLAG_INNER = 1, 2, 4, 8
FLAG_BITS = 4
PSL_MAX_LABELS = 8  # must equal PSL_MAX_LABELS in ext/_core.pyx


def _to_ascii(rule: str) -> str:
    try:
        return rule.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return ".".join(
            label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
            for label in rule.split(".")
        ).lower()


def reversed_name_hash(name: str) -> int:
    """FNV-1a of a name with its labels reversed ("com.example" for "example.com"): the key
    the compiled core computes for every parent of a name in one pass from its end."""
    from sensor._core import fnv1a64

    return fnv1a64(".".join(reversed(name.split("."))).encode())


@dataclass(frozen=True)
class SuffixRules:
    rules: frozenset[str]
    wildcards: frozenset[str]
    exceptions: frozenset[str]

    def table(self) -> np.ndarray:
        """The compiled core's suffix table: entry = key << FLAG_BITS | flags, where key
        is the reversed-label hash shifted right by FLAG_BITS; slot = key & mask, linear
        probing, a power-of-two size at least twice the count, 0 meaning empty. Built
        once per rule set and shared, read-only, by every parser."""
        return self._table

    @cached_property
    def _table(self) -> np.ndarray:
        flags: dict[str, int] = {}
        for group, flag in ((self.rules, FLAG_RULE), (self.wildcards, FLAG_WILDCARD),
                            (self.exceptions, FLAG_EXCEPTION)):
            for suffix in group:
                flags[suffix] = flags.get(suffix, 0) | flag
                labels = suffix.split(".")
                for k in range(1, len(labels)):
                    inner = ".".join(labels[k:])
                    flags[inner] = flags.get(inner, 0) | FLAG_INNER
        size = 1
        while size < 2 * len(flags) + 2:
            size *= 2
        table = np.zeros(size, dtype=np.uint64)
        mask = size - 1
        for suffix, flag in flags.items():
            key = reversed_name_hash(suffix) >> FLAG_BITS
            slot = key & mask
            while table[slot] and int(table[slot]) >> FLAG_BITS != key:
                slot = (slot + 1) & mask
            table[slot] = key << FLAG_BITS | flag
        table.flags.writeable = False
        return table

    def registered_label(self, labels: list[str]) -> int:
        """Index of the first label of the registered domain; mirrors Core.registered_label."""
        n = len(labels)
        if n == 0:
            return 0
        ps = n - 1
        for i in range(max(0, n - PSL_MAX_LABELS), n):
            suffix = ".".join(labels[i:])
            if suffix in self.exceptions:
                ps = i + 1
                break
            if suffix in self.rules:
                ps = i
                break
            if i + 1 < n and ".".join(labels[i + 1:]) in self.wildcards:
                ps = i
                break
        return ps - 1 if ps >= 1 else 0


def parse_rules(text: str, include_private: bool = True) -> SuffixRules:
    from tldextract.suffix_list import extract_tlds_from_suffix_list

    public, private = extract_tlds_from_suffix_list(text)
    rules, wildcards, exceptions = set(), set(), set()
    for raw in public + (private if include_private else []):
        rule = _to_ascii(raw.strip())
        if rule.startswith("!"):
            exceptions.add(rule[1:])
        elif rule.startswith("*."):
            wildcards.add(rule[2:])
        elif rule:
            rules.add(rule)
    return SuffixRules(frozenset(rules), frozenset(wildcards), frozenset(exceptions))


def bundled_snapshot_path() -> str:
    import tldextract

    return os.path.join(os.path.dirname(tldextract.__file__), ".tld_set_snapshot")


def load_rules(path: str | None = None, include_private: bool = True) -> SuffixRules:
    """Rules from `path` (a public_suffix_list.dat) or from tldextract's bundled snapshot,
    read once per process whichever way the arguments are spelt."""
    return _load_rules(path, include_private)


@lru_cache(maxsize=4)
def _load_rules(path: str | None, include_private: bool) -> SuffixRules:
    with open(path or bundled_snapshot_path(), encoding="utf-8") as f:
        return parse_rules(f.read(), include_private)
