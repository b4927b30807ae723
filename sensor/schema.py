"""The one definition of every record the sensor produces.

The parser's numpy dtypes, the JSON objects of ``dnssensor dump`` and the
field reference in the README are all generated from the tables below.
The compiled parser checks at import that its C structs have exactly
these layouts (see ``sensor.parse``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str
    doc: str


# One row per DNS message. Order and widths mirror ``struct MessageRow`` in
# ext/_core.pyx; keep them in step (checked at import).
MESSAGE_FIELDS: tuple[Field, ...] = (
    Field("ts", "f8", "capture time, epoch seconds (microsecond resolution)"),
    Field("frame", "u8", "1-based packet number in the capture that completed the message"),
    Field("src", "V16", "source address, 16 bytes; IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d)"),
    Field("dst", "V16", "destination address, same encoding as src"),
    Field("rr_start", "u4", "index of the message's first row in the batch's RR table"),
    Field("rr_count", "u4", "number of RR rows the message owns (answer, authority, additional)"),
    Field("anomalies", "u8", "bit set of anomaly names (see the anomaly registry)"),
    Field("name_hash", "u8", "64-bit FNV-1a hash of the normalised qname"),
    Field("min_ttl", "i8", "smallest TTL in the answer section, -1 when it has none"),
    Field("qname_off", "u4", "offset of the normalised qname in the batch's text arena"),
    Field("size", "u4", "DNS message size in bytes (without the TCP length prefix)"),
    Field("entropy", "f4", "Shannon entropy (bits/char) of the labels left of the registered domain"),
    Field("qname_len", "u2", "length of the normalised qname text"),
    Field("sport", "u2", "source port"),
    Field("dport", "u2", "destination port"),
    Field("id", "u2", "DNS transaction id"),
    Field("flags", "u2", "the 16-bit flags word of the header, as on the wire"),
    Field("rcode", "u2", "response code, extended by the OPT record's upper 8 bits"),
    Field("qtype", "u2", "type of the first question (0 when there is none)"),
    Field("qclass", "u2", "class of the first question, without the mDNS unicast bit"),
    Field("qdcount", "u2", "question count from the header"),
    Field("ancount", "u2", "answer count from the header"),
    Field("nscount", "u2", "authority count from the header"),
    Field("arcount", "u2", "additional count from the header"),
    Field("edns_udp_size", "u2", "EDNS advertised UDP payload size, 0 without OPT"),
    Field("edns_options", "u2", "bit set of EDNS options present: 1<<0 ECS, 1<<1 cookie, 1<<2 NSID, 1<<3 extended error, 1<<4 padding, 1<<5 keepalive, 1<<6 other"),
    Field("ede_code", "i4", "EDNS extended DNS error info-code, -1 when absent"),
    Field("digits", "u2", "decimal digits in the qname"),
    Field("hexchars", "u2", "hexadecimal characters [0-9a-fA-F] in the qname"),
    Field("uppers", "u2", "upper-case letters in the qname as sent"),
    Field("regdom_off", "u2", "offset in the qname text where the registered domain (eTLD+1) starts"),
    Field("ip_version", "u1", "4 or 6"),
    Field("transport", "u1", "IP protocol: 17 UDP, 6 TCP"),
    Field("qr", "u1", "1 for a response"),
    Field("opcode", "u1", "header opcode"),
    Field("edns", "u1", "1 when the message carries an OPT record"),
    Field("edns_version", "u1", "EDNS version"),
    Field("edns_do", "u1", "EDNS DNSSEC OK bit"),
    Field("case_differs", "u1", "1 when the qname as sent had upper-case letters"),
    Field("labels", "u1", "number of labels in the qname"),
    Field("longest_label", "u1", "length of the longest qname label"),
    Field("ecs_prefix", "u1", "EDNS client-subnet source prefix length, 0 when absent"),
    Field("ip_ttl", "u1", "IPv4 TTL or IPv6 hop limit as captured (a responder's habit; 0 when unknown)"),
    Field("pad", "V8", "padding to an 8-byte boundary"),
)

# One row per resource record of the answer, authority and additional sections.
RR_FIELDS: tuple[Field, ...] = (
    Field("msg", "u4", "row of the owning message in the batch"),
    Field("name_off", "u4", "owner name: offset in the text arena (a compressed name may share "
                            "the text of an earlier name of its message)"),
    Field("rdata_off", "u4", "rdata in presentation form: offset in the text arena"),
    Field("rdata_len", "u4", "rdata text length"),
    Field("ttl", "u4", "TTL as on the wire"),
    Field("name_len", "u2", "owner name text length"),
    Field("type", "u2", "RR type"),
    Field("rclass", "u2", "RR class (for OPT: the UDP payload size)"),
    Field("section", "u1", "1 answer, 2 authority, 3 additional"),
    Field("pad", "V1", "padding"),
)

SECTION_NAMES = {1: "answers", 2: "authority", 3: "additional"}


def _dtype(fields: tuple[Field, ...]) -> np.dtype:
    return np.dtype([(f.name, f.dtype) for f in fields])


MESSAGE_DTYPE = _dtype(MESSAGE_FIELDS)
RR_DTYPE = _dtype(RR_FIELDS)

HOT_COLUMNS = ("ts", "qr", "rcode", "qtype", "size", "anomalies", "transport", "flags", "name_hash",
               "regdom_off", "longest_label", "labels", "qdcount")
"""Message fields that tracking, the per-minute tables and the shipped rules read from every
batch: the engine's compiled parser copies them out as columns while it has the rows in its
caches (Parser(hot_columns=...); Batch.column copies any other field out of finished rows)."""

# Anomalies: stable snake_case names. The bit is the position in this tuple,
# so names are only ever appended, never reordered.
ANOMALIES: tuple[tuple[str, str], ...] = (
    ("truncated", "the message ends inside a field; may complete with more bytes"),
    ("bad_pointer", "a compression pointer that does not point strictly backwards"),
    ("label_too_long", "a label length byte above 63 (reserved label types 0x40/0x80)"),
    ("name_too_long", "a name longer than 255 bytes on the wire"),
    ("pointer_limit", "more compression hops in one name than the limit allows"),
    ("rdlength_mismatch", "rdata not consumed exactly by its type's layout"),
    ("trailing_bytes", "bytes after the last record the header announced"),
    ("too_many_records", "more records than the per-message limit; the rest were skipped"),
    ("header_too_short", "fewer than 12 bytes: no complete DNS header"),
    ("qdcount_not_one", "the question count is not 1 where one belongs (none is right in an inverse query, "
                        "a DSO message, a server-cookie query and its answer, and may be in a FORMERR or "
                        "NOTIMP response; multicast DNS, port 5353, has its own rules)"),
    ("invalid_opcode", "an opcode with no assigned meaning"),
    ("z_bit_set", "the reserved Z header bit is set"),
    ("edns_bad_option", "an EDNS option that runs past its OPT record or is malformed"),
    ("edns_multiple_opt", "more than one OPT record"),
    ("edns_misplaced_opt", "an OPT record outside the additional section or not owned by the root"),
    ("bad_rdata", "rdata whose content is invalid for its type"),
    ("qname_non_printable", "control or non-ASCII bytes in the qname"),
    ("answer_in_query", "a standard query (QR=0, opcode QUERY) carrying answer records"),
    ("ttl_high_bit", "a TTL above 2^31-1 (RFC 2181 says treat as zero)"),
    ("udp_length_mismatch", "UDP length disagrees with the IP payload"),
    ("ip_truncated", "the capture holds fewer bytes than the IP header announces (snaplen)"),
    ("frag_overlap", "IP fragments overlapped or conflicted"),
    ("frag_limit", "fragment reassembly limit hit; datagrams were dropped"),
    ("tcp_gap", "bytes missing in a TCP stream; reassembly resynchronised"),
    ("tcp_limit", "TCP reassembly limit hit; state was dropped"),
    ("tcp_midstream", "message taken from a TCP stream whose start was not seen"),
    ("bad_length_prefix", "a DNS-over-TCP length prefix too short for a header"),
)
ANOMALY_BIT: dict[str, int] = {name: i for i, (name, _) in enumerate(ANOMALIES)}
ANOMALY_NAMES: tuple[str, ...] = tuple(name for name, _ in ANOMALIES)


def anomaly_names(mask: int) -> list[str]:
    return [name for i, (name, _) in enumerate(ANOMALIES) if mask >> i & 1]


# RR type mnemonics (IANA "Resource Record (RR) TYPEs").
TYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT",
    17: "RP", 18: "AFSDB", 19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAP-PTR",
    24: "SIG", 25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT",
    31: "EID", 32: "NIMLOC", 33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX", 37: "CERT",
    38: "A6", 39: "DNAME", 40: "SINK", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP",
    45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3",
    51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 56: "NINFO", 57: "RKEY",
    58: "TALINK", 59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD",
    64: "SVCB", 65: "HTTPS", 99: "SPF", 108: "EUI48", 109: "EUI64", 249: "TKEY",
    250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "ANY",
    256: "URI", 257: "CAA", 32768: "TA", 32769: "DLV",
}
CLASS_NAMES: dict[int, str] = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
OPCODE_NAMES: dict[int, str] = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO"}
RCODE_NAMES: dict[int, str] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
    16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
    22: "BADTRUNC", 23: "BADCOOKIE",
}
MDNS_PORT = 5353
"""Multicast DNS (RFC 6762): its own question counts and class bits."""
MDNS_CACHE_FLUSH = 0x8000
"""The top bit of an mDNS record's class (RFC 6762 section 10.2)."""
TSIG_ERROR_NAMES: dict[int, str] = {
    **{code: name for code, name in RCODE_NAMES.items() if code <= 10 or code >= 17}, 16: "BADSIG",
}
"""The error field of TSIG and TKEY rdata (RFC 8945, 2930): 16 is BADSIG there, not BADVERS."""
FLAG_BITS: tuple[tuple[str, int], ...] = (
    ("aa", 0x0400), ("tc", 0x0200), ("rd", 0x0100), ("ra", 0x0080),
    ("z", 0x0040), ("ad", 0x0020), ("cd", 0x0010),
)
EDNS_OPTION_BITS: tuple[tuple[str, int], ...] = (
    ("ecs", 1 << 0), ("cookie", 1 << 1), ("nsid", 1 << 2), ("ede", 1 << 3),
    ("padding", 1 << 4), ("keepalive", 1 << 5), ("other", 1 << 6),
)


def type_name(code: int) -> str:
    return TYPE_NAMES.get(code, f"TYPE{code}")


def class_name(code: int) -> str:
    return CLASS_NAMES.get(code, f"CLASS{code}")


def rcode_name(code: int) -> str:
    return RCODE_NAMES.get(code, f"RCODE{code}")


def tsig_error_name(code: int) -> str:
    return TSIG_ERROR_NAMES.get(code, str(code))


def opcode_name(code: int) -> str:
    return OPCODE_NAMES.get(code, f"OPCODE{code}")


# The JSON object that ``dnssensor dump`` writes for each message.
RECORD_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts", "capture time, epoch seconds"),
    ("frame", "packet number in the capture that completed the message"),
    ("src", "source address"),
    ("sport", "source port"),
    ("dst", "destination address"),
    ("dport", "destination port"),
    ("transport", "\"udp\" or \"tcp\""),
    ("ip_ttl", "IPv4 TTL or IPv6 hop limit of the packet (the last one of a reassembled message)"),
    ("id", "DNS transaction id"),
    ("qr", "true for a response"),
    ("opcode", "opcode number"),
    ("opcode_name", "opcode mnemonic (QUERY, NOTIFY, UPDATE, ...)"),
    ("rcode", "response code, EDNS-extended"),
    ("rcode_name", "response code mnemonic (NOERROR, NXDOMAIN, BADCOOKIE, ...)"),
    ("flags", "list of set header flags among aa, tc, rd, ra, z, ad, cd"),
    ("qname", "normalised qname: lower case, no trailing dot, \\DDD escapes for odd bytes; \".\" for the root"),
    ("qtype", "type of the first question"),
    ("qtype_name", "its mnemonic"),
    ("qclass", "class of the first question"),
    ("qdcount", "question count (header)"),
    ("ancount", "answer count (header)"),
    ("nscount", "authority count (header)"),
    ("arcount", "additional count (header)"),
    ("size", "DNS message size in bytes"),
    ("min_ttl", "smallest answer TTL, null without answers"),
    ("case_differs", "true when the qname was sent with upper-case letters"),
    ("features", "name features: length, labels, longest_label, entropy, digits, hexchars, uppers, registered_domain, hash"),
    ("answers", "answer RRs: list of {name, type, type_name, class, ttl, data}; in multicast DNS "
                "(port 5353) also cache_flush: true where the class carries RFC 6762's cache-flush bit"),
    ("authority", "authority RRs, same shape"),
    ("additional", "additional RRs (OPT excluded, see edns), same shape"),
    ("edns", "null, or {udp_size, version, do, ext_rcode, options, ede_code, ecs_prefix}"),
    ("anomalies", "list of anomaly names"),
)


def field_reference_markdown() -> str:
    """The README's field reference, generated from the definitions above."""
    out = ["### `dnssensor dump` JSON fields", "", "| field | meaning |", "|---|---|"]
    out += [f"| `{name}` | {doc} |" for name, doc in RECORD_FIELDS]
    out += ["", "### Message batch columns (numpy)", "", "| column | dtype | meaning |", "|---|---|---|"]
    out += [f"| `{f.name}` | `{f.dtype}` | {f.doc} |" for f in MESSAGE_FIELDS if f.name != "pad"]
    out += ["", "### RR batch columns (numpy)", "", "| column | dtype | meaning |", "|---|---|---|"]
    out += [f"| `{f.name}` | `{f.dtype}` | {f.doc} |" for f in RR_FIELDS if f.name != "pad"]
    out += ["", "### Anomalies", "", "| bit | name | meaning |", "|---|---|---|"]
    out += [f"| {i} | `{name}` | {doc} |" for i, (name, doc) in enumerate(ANOMALIES)]
    return "\n".join(out) + "\n"
