"""A parsed batch: columnar message rows, RR rows and the text arena they point into."""
from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from sensor import _core, schema


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def address_text(raw: bytes) -> str:
    """A 16-byte address key as text, IPv4-mapped ones in dotted form (where the IP version
    is not at hand: group keys, verdicts)."""
    if raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def format_address(raw: bytes, ip_version: int) -> str:
    if ip_version == 4:
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw)


@dataclass
class Batch:
    messages: np.ndarray          # schema.MESSAGE_DTYPE
    rrs: np.ndarray               # schema.RR_DTYPE
    arena: bytes
    counters: dict[str, int] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    """Message fields as contiguous columns, by name, as the parser made them or Batch.column
    copied them out; and what the parser works out with them (_core.DERIVED_COLUMNS)."""

    def __len__(self) -> int:
        return int(self.messages.shape[0])

    def column(self, name: str) -> np.ndarray:
        """A message field as a contiguous column, copied out of the rows once for every
        stage that reads it (the rows are 152 bytes wide: a field read on its own pulls
        the whole batch through the cache)."""
        column = self.columns.get(name)
        if column is None:
            column = self.columns[name] = np.ascontiguousarray(self.messages[name])
        return column

    @cached_property
    def _regdom(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        made = tuple(self.columns.get(name) for name in _core.REGDOM_COLUMNS)
        if all(column is not None for column in made):
            return made
        return _core.regdom_columns(np.ascontiguousarray(self.messages), self.arena)

    @property
    def regdom_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Per message: (arena offset, length) of its question's registered domain."""
        return self._regdom[:2]

    @property
    def regdom_hash(self) -> np.ndarray:
        """Per message: a hash of its question's registered domain (span_hashes), made once
        for the stages that group by it (breakdown, features)."""
        return self._regdom[2]

    @cached_property
    def bailiwick_strays(self) -> np.ndarray:
        """Per message: its authority and additional records that nothing it asked or
        answered explains (_core.out_of_bailiwick), as the parser counted them."""
        made = self.columns.get(_core.BAILIWICK_COLUMN)
        if made is not None:
            return made
        return _core.out_of_bailiwick(np.ascontiguousarray(self.messages), np.ascontiguousarray(self.rrs),
                                      self.arena)

    @cached_property
    def minute(self) -> np.ndarray:
        """Per message: the start of its minute (ts // 60 * 60), for the per-minute tables."""
        return _core.message_windows(self.column("ts"), 60)

    def text(self, off: int, length: int) -> str:
        return self.arena[off:off + length].decode("ascii")

    def qname(self, i: int) -> str:
        m = self.messages[i]
        return self.text(int(m["qname_off"]), int(m["qname_len"]))

    def qnames(self) -> list[str]:
        return [self.qname(i) for i in range(len(self))]

    def rr_dicts(self, i: int) -> list[dict[str, Any]]:
        m = self.messages[i]
        start, count = int(m["rr_start"]), int(m["rr_count"])
        out = []
        for r in self.rrs[start:start + count].tolist():
            msg, name_off, rdata_off, rdata_len, ttl, name_len, rtype, rclass, section, _ = r
            out.append({
                "section": section, "name": self.text(name_off, name_len), "type": rtype,
                "type_name": schema.type_name(rtype), "class": rclass, "ttl": ttl,
                "data": self.text(rdata_off, rdata_len),
            })
        return out

    def anomaly_counts(self) -> dict[str, int]:
        """Messages carrying each anomaly."""
        counts = {}
        masks = self.messages["anomalies"]
        for bit, (name, _) in enumerate(schema.ANOMALIES):
            n = int(np.count_nonzero(masks & np.uint64(1 << bit)))
            if n:
                counts[name] = n
        return counts

    def record(self, i: int) -> dict[str, Any]:
        """The JSON object of one message, as documented in schema.RECORD_FIELDS."""
        m = self.messages[i]
        ipv = int(m["ip_version"])
        flags = int(m["flags"])
        rrs = self.rr_dicts(i)
        mdns = schema.MDNS_PORT in (int(m["sport"]), int(m["dport"]))
        sections: dict[str, list] = {"answers": [], "authority": [], "additional": []}
        edns = None
        for rr in rrs:
            section = schema.SECTION_NAMES[rr.pop("section")]
            if rr["type"] == 41 and section == "additional" and edns is None:
                continue
            if rr["type"] != 41:
                if mdns and rr["class"] & schema.MDNS_CACHE_FLUSH:
                    rr["cache_flush"] = True
                    rr["class"] &= ~schema.MDNS_CACHE_FLUSH
                rr["class"] = schema.class_name(rr["class"])
            sections[section].append(rr)
        if m["edns"]:
            opt = next(r for r in rrs if r["type"] == 41)
            edns = {
                "udp_size": int(m["edns_udp_size"]), "version": int(m["edns_version"]),
                "do": bool(m["edns_do"]), "ext_rcode": int(m["rcode"]) >> 4,
                "options": opt["data"].split(" ", 4)[4] if opt["data"].count(" ") >= 4 else "",
                "ede_code": None if m["ede_code"] < 0 else int(m["ede_code"]),
                "ecs_prefix": int(m["ecs_prefix"]) if m["edns_options"] & 1 else None,
            }
        qname = self.qname(i) if m["qname_len"] else None
        regdom = qname[int(m["regdom_off"]):] if qname else None
        rcode = int(m["rcode"])
        return {
            "ts": round(float(m["ts"]), 6), "frame": int(m["frame"]),
            "src": format_address(bytes(m["src"]), ipv), "sport": int(m["sport"]),
            "dst": format_address(bytes(m["dst"]), ipv), "dport": int(m["dport"]),
            "transport": "tcp" if m["transport"] == 6 else "udp",
            "ip_ttl": int(m["ip_ttl"]),
            "id": int(m["id"]), "qr": bool(m["qr"]),
            "opcode": int(m["opcode"]), "opcode_name": schema.opcode_name(int(m["opcode"])),
            "rcode": rcode, "rcode_name": schema.rcode_name(rcode),
            "flags": [name for name, bit in schema.FLAG_BITS if flags & bit],
            "qname": qname, "qtype": int(m["qtype"]), "qtype_name": schema.type_name(int(m["qtype"])),
            "qclass": int(m["qclass"]),
            "qdcount": int(m["qdcount"]), "ancount": int(m["ancount"]),
            "nscount": int(m["nscount"]), "arcount": int(m["arcount"]),
            "size": int(m["size"]),
            "min_ttl": None if m["min_ttl"] < 0 else int(m["min_ttl"]),
            "case_differs": bool(m["case_differs"]),
            "features": {
                "length": int(m["qname_len"]), "labels": int(m["labels"]),
                "longest_label": int(m["longest_label"]),
                "entropy": round(float(m["entropy"]), 4), "digits": int(m["digits"]),
                "hexchars": int(m["hexchars"]), "uppers": int(m["uppers"]),
                "registered_domain": regdom, "hash": f"{int(m['name_hash']):016x}",
            },
            **sections,
            "edns": edns,
            "anomalies": schema.anomaly_names(int(m["anomalies"])),
        }

    def records(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self.record(i)


def concat(batches: list[Batch]) -> Batch:
    """One batch out of several (message and arena offsets rebased)."""
    if len(batches) == 1:
        return batches[0]
    msgs, rrs, arenas, counters = [], [], [], {}
    n_msg = n_rr = n_text = 0
    for b in batches:
        m = b.messages.copy()
        r = b.rrs.copy()
        m["qname_off"] += n_text
        m["rr_start"] += n_rr
        r["msg"] += n_msg
        r["name_off"] += n_text
        r["rdata_off"] += n_text
        msgs.append(m)
        rrs.append(r)
        arenas.append(b.arena)
        n_msg += len(m)
        n_rr += len(r)
        n_text += len(b.arena)
        for k, v in b.counters.items():
            counters[k] = counters.get(k, 0) + v
    return Batch(np.concatenate(msgs) if msgs else np.zeros(0, schema.MESSAGE_DTYPE),
                 np.concatenate(rrs) if rrs else np.zeros(0, schema.RR_DTYPE),
                 b"".join(arenas), counters)
