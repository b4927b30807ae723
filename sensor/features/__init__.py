"""Per-message feature columns: what rules in rules/ can filter, group and aggregate on.

Built per batch from the parser's rows and the tracker's result, as numpy
arrays (no object per message). FEATURES documents each column once; the
README's rule reference is generated from it. Addresses and names appear as
64-bit hashes (group keys); their text is looked up only for the groups that
become verdicts.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from sensor import _core
from sensor.features.lists import NameList, NameListSet
from sensor.features.memo import NameMemo
from sensor.parse.batch import Batch
from sensor.parse.psl import load_rules
from sensor.track import ANSWERED, DUPLICATE, MISMATCHED, UNSOLICITED, TrackResult, hash_columns, address_words

FEATURES: dict[str, str] = {
    "ts": "capture time (epoch seconds)",
    "qr": "1 for a response, 0 for a query",
    "is_query": "the message is a query",
    "is_response": "the message is a response",
    "opcode": "header opcode",
    "rcode": "response code (extended); compare with NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...",
    "nxdomain": "a response with rcode NXDOMAIN",
    "servfail": "a response with rcode SERVFAIL",
    "qtype": "question type; compare with A, AAAA, TXT, NULL, ANY, ...",
    "size": "DNS message bytes",
    "tcp": "the message came over TCP (a spoofed source cannot complete a TCP handshake)",
    "ip_ttl": "IPv4 TTL or IPv6 hop limit: a responder's path length habit (spoofed packets often differ)",
    "ancount": "answer records",
    "nscount": "authority records",
    "arcount": "additional records",
    "aa": "authoritative answer flag",
    "tc": "truncated flag",
    "rd": "recursion desired flag",
    "ra": "recursion available flag",
    "edns_udp_size": "EDNS UDP payload size (0 without EDNS)",
    "qname_len": "question name length in characters",
    "labels": "labels in the question name",
    "longest_label": "longest label's length",
    "entropy": "Shannon entropy (bits per character) of the labels left of the registered domain",
    "digits": "digits in the question name",
    "hexchars": "hex characters in the question name",
    "uppers": "upper-case letters in the question name (0x20 randomisation shows here)",
    "left_len": "characters left of the registered domain: the part a tunnel can encode data in",
    "client": "group key: the querying side's address",
    "server": "group key: the answering side's address",
    "regdom": "group key: registered domain of the question (eTLD+1, Public Suffix List)",
    "qname": "group key: the question name",
    "answered": "a response matched to its outstanding query",
    "unsolicited": "a response matching no outstanding query",
    "mismatched": "a response over UDP for an outstanding question with the wrong id or port (spoofing)",
    "duplicate": "a further response to a query already answered",
    "raced_query": "for a mismatched response, a key of the outstanding query with its question that it "
                   "raced, to count with nunique (a spoofer's flood races one with many answers; answers "
                   "whose own queries the capture lost race one each); 0 for other messages",
    "multi_response": "a response to a query that was answered more than once (the first one too)",
    "upstream": "on the resolver's upstream leg (the resolver is the client)",
    "client_internal": "the client is inside the configured client networks",
    "client_external": "client networks are configured and the client is outside them",
    "server_is_resolver": "the answering side is one of the resolver's own addresses (configured or discovered)",
    "txid": "group key: the message id (with client and qname: one query and its responses)",
    "answer_hash": "a hash of the set of answer records (order-free): differing answers to one query differ",
    "anomalous": "the message carries any anomaly",
    "first_label_len": "length of the leftmost label (computed only when a rule uses it)",
    "out_of_bailiwick": "authority or additional records of a response that nothing asked or answered "
                        "explains (not above the names answered, not under the question's registered "
                        "domain, no NS/MX/SRV target): cache-poisoning payloads (computed only when a rule uses it)",
    "encoding_chars": "characters of encoded data in the question name (= + / * and escaped bytes), "
                      "never seen in host names (computed only when a rule uses it)",
    "first_label_digits": "digits in the leftmost label: reversed addresses (DNSBL, PTR) are all digits",
    "first_label_hex": "hex characters in the leftmost label: file-hash lookups are all hex",
    "service_labels": "labels of the question name that begin with an underscore: service and "
                      "attribute names a zone's owner chose (RFC 8552: _ldap._tcp, _domainkey, _dmarc, "
                      "a reputation service's _file), not data (computed only when a rule uses it)",
    "inner_tlds": "labels between the question name's first label and its registered domain that are "
                  "top-level domains: a whole name under another (api.github.com.corp.example.com: "
                  "search-domain expansion) (computed only when a rule uses it)",
    "public_tld": "the question name ends in a top-level domain of the Public Suffix List: a name "
                  "under one that does not exist is local (.corp, .lan) or data (computed only when a "
                  "rule uses it)",
    "dga_score": "lexical DGA score of the registered label (rules/models/, tools/train_dga.py); "
                 "dga_threshold is the model's own cut-off",
}
LAZY = ("first_label_len", "first_label_digits", "first_label_hex")
LAZY_ANSWERS = "answer_hash"
LAZY_ENCODING = "encoding_chars"
LAZY_BAILIWICK = "out_of_bailiwick"
LAZY_TLD = "public_tld"
LAZY_SERVICE = "service_labels"
LAZY_INNER_TLD = "inner_tlds"
ENCODING_BYTES = b"=+/*\\"
"""Characters of base64 (= + /), of globs, and the backslash of an escaped byte: data, never
a host name (mDNS instance names may hold spaces and punctuation, not these)."""

GROUP_KEYS = ("client", "server", "regdom", "qname", "qtype", "txid")
"""Columns a rule may group by (hashes or small integers)."""


MESSAGE_FIELDS = {
    "ts": "ts", "qr": "qr", "opcode": "opcode", "rcode": "rcode", "qtype": "qtype", "size": "size",
    "ip_ttl": "ip_ttl", "ancount": "ancount", "nscount": "nscount", "arcount": "arcount",
    "edns_udp_size": "edns_udp_size", "qname_len": "qname_len", "labels": "labels",
    "longest_label": "longest_label", "digits": "digits", "hexchars": "hexchars", "uppers": "uppers",
    "qname": "name_hash", "txid": "id", "entropy": "entropy",
}
"""Features that are a message field (feature -> field), as it is unless FIELD_DTYPES says."""

FIELD_DTYPES = {"entropy": np.float64}
"""Field features taken in another dtype than the row's: the entropy in float64 (float32 on
the row), as thresholds and aggregates compute."""

FIELD_GATHER_BELOW = 0.25
"""A field feature of a few messages (a filter's later terms, a rule's aggregates over the
messages that passed it) is read from those rows alone while they are fewer than this share
of the batch and no stage has copied the field out: each row read is a cache line of its
own, where copying the column out reads every row (65 536 rows of 152 bytes: 0.16 ms for a
quarter of them, 0.34 for the whole column)."""

_FLAG_BITS = {"aa": 0x0400, "tc": 0x0200, "rd": 0x0100, "ra": 0x0080}

DERIVED: dict[str, Callable[["Columns"], np.ndarray]] = {
    "is_query": lambda c: c["qr"] == 0,
    "is_response": lambda c: c["qr"] != 0,
    "nxdomain": lambda c: c["is_response"] & (c["rcode"] == 3),
    "servfail": lambda c: c["is_response"] & (c["rcode"] == 2),
    "tcp": lambda c: c.field("transport") == 6,
    **{name: (lambda c, bit=bit: (c.field("flags") & bit) != 0) for name, bit in _FLAG_BITS.items()},
    "left_len": lambda c: np.maximum(c.field("regdom_off").astype(np.int64) - 1, 0),
    "client": lambda c: c._track.client_hash,
    "server": lambda c: c._track.server_hash,
    "regdom": lambda c: c._batch.regdom_hash,
    "answered": lambda c: c._track.state == ANSWERED,
    "unsolicited": lambda c: c._track.state == UNSOLICITED,
    "mismatched": lambda c: c._track.state == MISMATCHED,
    "duplicate": lambda c: c._track.state == DUPLICATE,
    "multi_response": lambda c: c._track.multi,
    "raced_query": lambda c: c._track.raced,
    "upstream": lambda c: c._track.leg == 1,
    "client_internal": lambda c: c.client_network >= 0,
    "client_external": lambda c: (~c["client_internal"] if c._client_networks.networks
                                  else np.zeros(len(c._track.client), dtype=bool)),
    "anomalous": lambda c: c.field("anomalies") != 0,
    "server_is_resolver": lambda c: c._track.server_is_resolver,
}
"""Features worked out from fields and tracking, each the first time a rule reads it."""


class Columns(dict):
    """Feature columns, each made the first time a rule asks: a message field is copied
    out of the wide message rows once (a rule's comparison then reads 8 bytes a message,
    not a row), and what no rule reads is never made."""

    def __init__(self, batch: Batch, track: TrackResult, client_networks: "NetworkSet",
                 names: NameMemo | None = None, client_network: np.ndarray | None = None) -> None:
        super().__init__()
        self._batch = batch
        self._track = track
        self._client_networks = client_networks
        self._client_network = client_network    # client_networks.index of each client, once made
        self._server_addr: np.ndarray | None = None
        # Features of the name alone come from (and go to) the worker's memo of them.
        self._names = names if names is not None else NameMemo(len(batch))
        self._name_rows: np.ndarray | None = None
        self._made_list_bits: dict[str, np.ndarray] = {}    # per list directory, for the batch
        # Site data behind some features, filled by the rules that read them: list_<name> ->
        # NameList (rules/lists/), client_in_<tag> / server_in_<tag> -> AddressTag (rules/tags.toml).
        self.sources: dict = {}
        self.dga_model = None             # set by a rule that uses dga_score

    def field(self, name: str) -> np.ndarray:
        """A message field as a contiguous column (the batch copies each once)."""
        return self._batch.column(name)

    @property
    def client_network(self) -> np.ndarray:
        """Per message, the index of the first client network its client is in, -1 when none
        (looked up here unless the caller handed it over)."""
        if self._client_network is None:
            self._client_network = self._client_networks.index(self._track.client)
        return self._client_network

    @property
    def server_addr(self) -> np.ndarray:
        """Per message, the answering side's address (V16)."""
        if self._server_addr is None:
            m = self._batch.messages
            self._server_addr = np.where(self["is_query"], m["dst"], m["src"])
        return self._server_addr

    def __missing__(self, name: str) -> np.ndarray:
        make = self._batch_feature(name)
        if make is not None:
            self[name] = make()
            return self[name]
        work_out = self._name_feature(name)
        if work_out is None:
            raise KeyError(name)
        self[name] = self._names.column(name, self._message_name_rows(), work_out)
        return self[name]

    def _batch_feature(self, name: str) -> Callable[[], np.ndarray] | None:
        """How to make a feature that is made for the whole batch at once (a message
        field, a derived column, an address tag, the answer hashes, the bailiwick count),
        or None when `name` is no such feature."""
        field = MESSAGE_FIELDS.get(name)
        if field is not None:
            return lambda: _as_feature(name, self.field(field))
        derive = DERIVED.get(name)
        if derive is not None:
            return lambda: derive(self)
        source = self.sources.get(name)
        if isinstance(source, AddressTag):
            return lambda: source.column(name, self)
        if isinstance(source, NameList):
            return lambda: source.listed(self._list_bits(source.lists))
        if name == LAZY_ANSWERS:
            return lambda: _answer_hashes(self._batch)
        if name == LAZY_BAILIWICK:
            return lambda: self._batch.bailiwick_strays
        return None

    def _message_name_rows(self) -> np.ndarray:
        if self._name_rows is None:
            self._name_rows = self._names.rows(self.field("name_hash"))
        return self._name_rows

    def _field_of(self, field: str, rows: np.ndarray) -> np.ndarray:
        """A message field of some messages: read from their rows while they are fewer than
        FIELD_GATHER_BELOW of the batch and no stage has copied the field out, else from the
        field copied out once for the batch."""
        batch = self._batch
        if field not in batch.columns and len(rows) < FIELD_GATHER_BELOW * len(batch):
            return np.ascontiguousarray(batch.messages[field][rows])
        return batch.column(field)[rows]

    def _name_spans(self, messages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The arena spans (offsets, lengths) of some messages' question names (under a flood
        of new names every name feature asks for nearly all of them: copied out once)."""
        return self._field_of("qname_off", messages), self._field_of("qname_len", messages)

    def _list_bits(self, lists: NameListSet, rows: np.ndarray | None = None) -> np.ndarray:
        """Per message (of `rows`, or of the batch), the bits of the lists it is on: every
        list of a directory in one walk, remembered per name in the memo."""
        arena = self._batch.arena
        if rows is not None:
            return self._names.column(lists.memo_key, self._message_name_rows()[rows],
                                      lambda picked: lists.bits(arena, *self._name_spans(rows[picked])))
        bits = self._made_list_bits.get(lists.memo_key)
        if bits is None:
            bits = self._made_list_bits[lists.memo_key] = self._names.column(
                lists.memo_key, self._message_name_rows(), lambda messages: lists.bits(arena, *self._name_spans(messages)))
        return bits

    def select(self, rows: np.ndarray) -> "Selection":
        """The columns of some messages (their indexes) only: what a filter's later terms
        read once its first ones left few messages."""
        return Selection(self, rows)

    def rows_of(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Feature `name` of the messages `rows`: a feature of the name alone is worked out
        for their names only, a field read from their rows when they are few
        (FIELD_GATHER_BELOW); any other is made for the batch (once) and gathered."""
        if name in self:
            return self[name][rows]
        source = self.sources.get(name)
        if isinstance(source, NameList):
            return source.listed(self._list_bits(source.lists, rows))
        field = MESSAGE_FIELDS.get(name)
        if field is not None:
            return _as_feature(name, self._field_of(field, rows))
        if self._batch_feature(name) is not None:
            return self[name][rows]
        work_out = self._name_feature(name)
        if work_out is None:
            raise KeyError(name)
        return self._names.column(name, self._message_name_rows()[rows], lambda picked: work_out(rows[picked]))

    def _name_feature(self, name: str) -> Callable[[np.ndarray], np.ndarray] | None:
        """How to work out a feature of the question name alone for some messages (their
        indexes), or None when `name` is no such feature."""
        batch, arena, spans = self._batch, self._batch.arena, self._name_spans

        if name == "dga_score" and self.dga_model is not None:
            model = self.dga_model
            return lambda messages: model.scores(arena, batch.messages, messages)
        if name in self.sources:          # a pattern (a name list is read through its list bits)
            source = self.sources[name]
            return lambda messages: source.mask(arena, *spans(messages))
        if name == LAZY_ENCODING:
            def encoding_chars(messages: np.ndarray) -> np.ndarray:
                offsets, lengths = spans(messages)
                return _core.count_in_spans(arena, offsets, lengths.astype(np.uint32),
                                            _ENCODING_TABLE).astype(np.float64)
            return encoding_chars
        if name == LAZY_SERVICE:
            return lambda messages: _core.service_label_counts(arena, *spans(messages))
        if name == LAZY_INNER_TLD:
            return lambda messages: _core.inner_tld_counts(
                arena, *spans(messages), np.ascontiguousarray(batch.messages["regdom_off"][messages]),
                load_rules().table())
        if name == LAZY_TLD:
            return lambda messages: _core.public_tlds(arena, *spans(messages), load_rules().table()).view(bool)
        if name in LAZY:
            k = LAZY.index(name)
            return lambda messages: _core.first_label_stats(arena, *spans(messages))[k]
        return None


def _as_feature(name: str, values: np.ndarray) -> np.ndarray:
    """A field's values as the feature `name` takes them (FIELD_DTYPES)."""
    dtype = FIELD_DTYPES.get(name)
    return values if dtype is None else values.astype(dtype)


class Selection(Mapping):
    """Feature columns of some messages of a batch (Columns.select), each made the first
    time a term reads it."""

    def __init__(self, columns: Columns, rows: np.ndarray) -> None:
        self._columns = columns
        self.rows = rows
        self._made: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        made = self._made.get(name)
        if made is None:
            made = self._made[name] = self._columns.rows_of(name, self.rows)
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self._made)

    def __len__(self) -> int:
        return len(self._made)

    def select(self, rows: np.ndarray) -> "Selection":
        return Selection(self._columns, self.rows[rows])


_ENCODING_TABLE = np.zeros(256, dtype=np.uint8)
_ENCODING_TABLE[list(ENCODING_BYTES)] = 1


def _answer_hashes(batch: Batch) -> np.ndarray:
    """Per message: XOR of (type, data) hashes of its answer records; 0 without answers.
    A message's records are contiguous (rr_start, rr_count), so one reduceat does it."""
    m, rrs = batch.messages, batch.rrs
    out = np.zeros(len(m), dtype=np.uint64)
    has = m["rr_count"] > 0
    if not len(rrs) or not has.any():
        return out
    data = _core.span_hashes(batch.arena, np.ascontiguousarray(rrs["rdata_off"]),
                             np.ascontiguousarray(rrs["rdata_len"]))
    values = np.where(rrs["section"] == 1, hash_columns(data, rrs["type"]), np.uint64(0))
    starts = m["rr_start"][has].astype(np.int64)
    order = np.argsort(starts, kind="stable")
    # Each message's records are one block and the blocks tile the table, so the records
    # between one start and the next are exactly that message's.
    reduced = np.bitwise_xor.reduceat(values, starts[order])
    out_idx = np.flatnonzero(has)[order]
    out[out_idx] = reduced
    return out


@dataclass
class FeatureTable:
    columns: Columns
    batch: Batch

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def client_addr(self) -> np.ndarray:
        return self.columns._track.client

    @property
    def server_addr(self) -> np.ndarray:
        return self.columns.server_addr

    def regdom_text(self, i: int) -> str:
        m = self.batch.messages[i]
        off, n, reg = int(m["qname_off"]), int(m["qname_len"]), int(m["regdom_off"])
        return self.batch.arena[off + reg:off + n].decode("ascii")

    def qname_text(self, i: int) -> str:
        return self.batch.qname(i)


class AddressTag:
    """A named set of networks (rules/tags.toml): features client_in_<name>, server_in_<name>."""

    def __init__(self, name: str, networks: tuple[str, ...]) -> None:
        self.name = name
        self.networks = networks
        self.members = NetworkSet(networks)

    def column(self, feature: str, table_columns: "Columns") -> np.ndarray:
        side = table_columns._track.client if feature.startswith("client_in_") else table_columns.server_addr
        return self.members.mask(side)


class NetworkSet:
    """Membership of 16-byte addresses (IPv4 mapped) in a list of networks, vectorised: each
    network is a (mask, prefix) pair over the two 64-bit words of the address."""

    def __init__(self, networks: tuple[str, ...] | list[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]   # ValueError names the bad one
        masks, prefixes = [], []
        for n in self.networks:
            if n.version == 4:
                net = ipaddress.ip_network(f"::ffff:{n.network_address}/{96 + n.prefixlen}")
            else:
                net = n
            masks.append(net.netmask.packed)
            prefixes.append(net.network_address.packed)
        self._masks = np.frombuffer(b"".join(masks), dtype="<u8").reshape(-1, 2)
        self._prefixes = np.frombuffer(b"".join(prefixes), dtype="<u8").reshape(-1, 2)

    def mask(self, addrs: np.ndarray) -> np.ndarray:
        """Whether each address is in one of the networks."""
        return self.index(addrs) >= 0

    def index(self, addrs: np.ndarray) -> np.ndarray:
        """Index of the first network each address is in, -1 when none."""
        if not self.networks or not len(addrs):
            return np.full(len(addrs), -1, dtype=np.int64)
        return _core.network_index(address_words(addrs), self._masks, self._prefixes)

    def contains(self, raw: bytes) -> bool:
        return bool(self.mask(np.frombuffer(raw, dtype="V16"))[0])


def build(batch: Batch, track: TrackResult, client_networks: NetworkSet,
          names: NameMemo | None = None, client_network: np.ndarray | None = None) -> FeatureTable:
    """The feature table of a batch; its columns are made as the rules read them, the
    features of names alone through `names` (the worker's, kept across batches).
    `client_network` is client_networks.index of each message's client, where the caller
    has looked it up already."""
    return FeatureTable(Columns(batch, track, client_networks, names, client_network), batch)
