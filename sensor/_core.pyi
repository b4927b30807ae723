"""Type stub for the compiled parsing core (ext/_core.pyx)."""
from collections.abc import Sequence

import numpy as np

ANOMALY_ORDER: tuple[str, ...]
COUNTER_NAMES: tuple[str, ...]
REGDOM_COLUMNS: tuple[str, str, str]
BAILIWICK_COLUMN: str
DERIVED_COLUMNS: tuple[str, str, str, str]
MESSAGE_ROW_SIZE: int
RR_ROW_SIZE: int
QNAME_CACHE_SETS: int
MESSAGE_DTYPE: np.dtype | None
RR_DTYPE: np.dtype | None

def bind_dtypes(message_dtype: np.dtype, rr_dtype: np.dtype) -> None: ...
def fnv1a64(data: bytes) -> int: ...

class Core:
    messages_array: np.ndarray
    rrs_array: np.ndarray
    def __init__(self, port_map: np.ndarray, psl_table: np.ndarray, type_names: dict[int, str],
                 tsig_error_names: dict[int, str],
                 max_questions: int, max_records: int, max_pointer_hops: int,
                 capacity: int = 4096) -> None: ...
    qname_cache_hits: int
    nmsg: int
    dedup_window_s: float
    hot_names: tuple[str, ...]
    count_bailiwick: bool
    """Whether the hot columns include BAILIWICK_COLUMN (on unless turned off)."""
    def set_port_map(self, port_map: np.ndarray) -> None:
        """The DNS ports: port_map[p] non-zero for each of them (65536 entries)."""
    def set_dedup(self, window_s: float, slots: int) -> None:
        """Drop UDP DNS frames identical to one seen within window_s, each frame's copy once
        (span-port duplicates); 0 turns it off. `slots`, a power of two, are remembered by hash."""
    def begin(self, capacity: int = 4096) -> None: ...
    def set_hot_columns(self, names: tuple[str, ...]) -> None:
        """Copy these message fields (1, 2, 4 or 8-byte scalars) out as contiguous columns,
        a few hundred rows at a time as add_frames() makes them (still in the caches), with
        DERIVED_COLUMNS; () turns them off. A list with any bad name is refused whole."""
    def finish(self) -> tuple[np.ndarray, np.ndarray, bytes, dict[str, int], dict[str, np.ndarray]]:
        """(messages, rrs, arena, counters, hot columns by name); the core starts empty."""
    def add_frames(self, blob: bytes, meta: np.ndarray, linktype: int, first_frame: int) -> list[int]: ...
    def add_message(self, payload: bytes, ts: float, frame: int, ip_version: int, src: bytes,
                    dst: bytes, sport: int, dport: int, transport: int,
                    extra_anomalies: int = 0, ip_ttl: int = 0) -> None: ...

def span_hashes(arena: bytes, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each arena slice, so names and rdata group as integers, not strings."""

def span_texts(arena: bytes, offsets: np.ndarray, lengths: np.ndarray) -> list[str]:
    """The text of each arena slice (int64 offsets and lengths) as a str, in one pass."""

def address_texts(addresses: np.ndarray) -> list[str]:
    """16-byte address keys (an (n, 16) uint8 table) as text, IPv4-mapped ones dotted."""

def first_occurrences(values: np.ndarray, bound: int) -> np.ndarray:
    """The index of each distinct value's first occurrence (int64 values in [0, bound)), in
    order of first appearance."""

def group_u64(keys: np.ndarray, ts: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Group equal 64-bit keys in one pass, in order of first appearance: (first row per group,
    group per row, rows per group[, min ts, max ts])."""

def group_order(inverse: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """np.argsort(inverse, kind="stable") for group numbers with known counts, by counting."""

def positions_among(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The positions of the values that are among `keys`, in order (flatnonzero of isin_u64);
    `values` may be strided (a column of a structured array)."""

def isin_u64(values: np.ndarray, keys: np.ndarray) -> np.ndarray: ...
def index_u64(values: np.ndarray, keys: np.ndarray) -> np.ndarray: ...
def hash_columns(columns: Sequence[np.ndarray | int]) -> np.ndarray:
    """One 64-bit key per row from 1 to 8 integer columns (sensor.track.hash_columns)."""
def answer_records(rrs: np.ndarray, arena: bytes, qr: np.ndarray, rcode: np.ndarray, ts: np.ndarray,
                   state: np.ndarray, excluded_state: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Answer records of NOERROR responses not in `excluded_state`, read through the
    messages' qr, rcode and ts columns: (record rows, keys, ts)."""
def network_index(words: np.ndarray, masks: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """Per address (two uint64 words), the first network (mask and prefix words) it is in, or -1."""
def nxdomain_records(qr: np.ndarray, rcode: np.ndarray, qdcount: np.ndarray, name_hash: np.ndarray,
                     qtype: np.ndarray, ts: np.ndarray, state: np.ndarray, excluded_state: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NXDOMAIN responses with a question, not in `excluded_state`, read through the
    messages' columns: (message rows, keys, ts)."""
def drop_rows(rows: np.ndarray, positions: np.ndarray) -> int:
    """Remove the rows (of a C-contiguous uint64 table) at `positions` (int64, ascending,
    each once) in place, the rest moved up in order; returns how many are left."""

def pending_rows(out: np.ndarray, key: np.ndarray, loose: np.ndarray, ts: np.ndarray, resolver: np.ndarray,
                 leg: np.ndarray, messages: np.ndarray) -> None:
    """Write sensor.track.PENDING_DTYPE rows (as six uint64 words each) of the messages
    `messages` into `out`, from per-message columns (resolver: two address words a row)."""

def stats_counts(qr: np.ndarray, rcode: np.ndarray, qtype: np.ndarray, size: np.ndarray, group: np.ndarray,
                 ngroups: int, state: np.ndarray, rtt: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-minute stats counters of each group, from the messages' qr, rcode, qtype and size columns."""
def minute_keys(minute: np.ndarray, words: np.ndarray, tag: np.ndarray | None = None) -> np.ndarray:
    """hash_columns(minute, words[:, 0], words[:, 1][, tag]) per message, in one pass."""
def message_windows(ts: np.ndarray, window_s: int) -> np.ndarray:
    """Per message (its ts column): the start of its window, ts // window_s * window_s."""
def regdom_columns(messages: np.ndarray, arena: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def track_columns(messages: np.ndarray, resolvers: np.ndarray, untrackable: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                             np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...

def minute_counts(keys: np.ndarray, qr: np.ndarray, rcode: np.ndarray,
                  size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups of equal keys (first row of each) and per group: queries, responses, NXDOMAIN
    and SERVFAIL responses, query bytes, response bytes."""

def gather_spans(arena: bytes, offsets: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Arena slices as a fixed-width bytes column (S<width>), each cut at `width`."""

def first_label_stats(arena: bytes, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per name in presentation form: rows (length, digits, hex characters) of its leftmost label."""

def service_label_counts(arena: bytes, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per name in presentation form: how many of its labels begin with an underscore."""

def inner_tld_counts(arena: bytes, offsets: np.ndarray, lengths: np.ndarray, regdom_offs: np.ndarray,
                     psl_table: np.ndarray) -> np.ndarray:
    """Per name in presentation form: how many labels between its first label and its
    registered domain (which starts regdom_offs[i] characters in) are top-level domains of
    the suffix table: a whole name under another, as search-domain expansion makes."""

def public_tlds(arena: bytes, offsets: np.ndarray, lengths: np.ndarray, psl_table: np.ndarray) -> np.ndarray:
    """Per name in presentation form: 1 when its last label is a top-level domain some rule
    of the suffix table (sensor.parse.psl.SuffixRules.table) ends with."""

def name_list_key(name: bytes) -> int:
    """The key of a name (presentation form, no escapes, no trailing dot) in a name-list
    table: the span_hash of each label mixed in from the last one leftwards."""

def name_list_table(keys: np.ndarray, own: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Name-list entries (uint64 key, uint32 own bits, uint32 below bits) as an
    open-addressing table of rows (key, own | below << 32), the bits of one key ORed together."""

def names_listed(arena: bytes, offsets: np.ndarray, lengths: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per name (uint32): the own bits of its row in `table` (name_list_table) ORed with the
    below bits of each parent's row; the walk stops at an escape."""

def dga_scores(arena: bytes, qname_off: np.ndarray, regdom_off: np.ndarray, qname_len: np.ndarray,
               table: np.ndarray) -> np.ndarray:
    """Per message: mean trigram score of the registered label (see sensor.features.dga)."""
def out_of_bailiwick(messages: np.ndarray, rrs: np.ndarray, arena: bytes) -> np.ndarray:
    """Per message: authority and additional records that nothing asked or answered explains
    (0 for multicast DNS)."""
    ...
def count_in_spans(arena: bytes, offsets: np.ndarray, lengths: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per arena slice: how many of its bytes have a non-zero entry in `table` (256 entries)."""
    ...

def match_events(key: np.ndarray, ts: np.ndarray, is_response: np.ndarray,
                 order: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Query/response matching over events taken in `order` (or as given, when already by
    time, queries first at equal times; None when not and no order was given): per event
    state (1 answered, 2 duplicate), rtt and multi, then the unmatched responses and the
    open queries, in the order taken."""

def race_lookup(query_loose: np.ndarray, query_key: np.ndarray, query_ts: np.ndarray,
                resp_loose: np.ndarray, resp_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For unmatched responses: whether a query with their question is outstanding (bool)
    and the key of the query each raced (uint64, the latest with its question at or before
    it, else the earliest after it; 0 when none). None unless queries and responses are
    each in time order."""

class KeyIndex:
    """A growing set of 64-bit keys, each numbered by its arrival (its row)."""
    def __init__(self, keys: np.ndarray | None = None) -> None: ...
    def __len__(self) -> int: ...
    @property
    def keys(self) -> np.ndarray:
        """The keys by row (a view, valid until the next add)."""
    def find(self, values: np.ndarray) -> np.ndarray:
        """Row of each value, -1 where it is not held."""
    def fold_times(self, values: np.ndarray, ts: np.ndarray, first: np.ndarray, last: np.ndarray,
                   count: np.ndarray) -> np.ndarray:
        """Count each held value into its row of first/last/count (by this index's rows), ts
        widening first and last; returns the positions of the values not held."""
    def add(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each value, position of each new key's first appearance): keys not held
        take the next rows in order of first appearance."""

def sum_row_runs(table: np.ndarray, rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per run of `rows` (from each start to the next): the sum of those rows of the int64
    table, as np.add.reduceat(table[rows], starts, axis=0)."""

def add_rows(table: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """table[rows[i]] += values[i] for every i (int64), rows repeating or not."""

def count_messages(table: np.ndarray, rows: np.ndarray, qr: np.ndarray, rcode: np.ndarray,
                   size: np.ndarray) -> None:
    """Add each message to its row of a six-column per-minute counters table."""
