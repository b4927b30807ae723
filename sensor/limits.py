"""Every bound the parsing stages apply, named and documented in one place.

Hitting a limit never stops the sensor: the work beyond it is skipped and an
anomaly or a counter says so.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


HEAP_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""glibc's ceiling for the mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)."""
HEAP_TRIM_THRESHOLD_MAX = 2**31 - 1
"""mallopt() takes a C int."""
MAX_WORKERS = 256
"""Capture workers per interface (capture.workers, --workers): the sockets a PACKET_FANOUT
group takes (the kernel's PACKET_FANOUT_MAX)."""


@dataclass(frozen=True)
class Limits:
    # Per message (compiled parser).
    max_questions: int = 32
    """Questions parsed per message; real traffic has one, crafted DoS packets thousands."""
    max_records: int = 4096
    """Resource records parsed per message, all sections. Real responses reach 2048 (the
    netmeister size tests); a 64 KB message cannot hold more than ~5400 even with empty rdata."""
    max_pointer_hops: int = 64
    """Compression pointers followed in one name. Strictly backward pointers already exclude
    loops; this caps the work a long chain can cost (Zeek's max-compression-depth)."""

    dedup_slots: int = 4096
    """Frames remembered for dropping span-port duplicates (capture.dedup_window_ms), by hash
    slot; a power of two. The copy of a frame follows it within microseconds, long before
    4096 other frames have passed."""

    # IP fragment reassembly (per parser).
    max_fragment_datagrams: int = 4096
    """Datagrams under reassembly at once; the oldest is dropped beyond it (counter frag_limit)."""
    max_fragments_per_datagram: int = 128
    """Fragments kept for one datagram; 64 KB in 512-byte pieces, far beyond real DNS."""
    fragment_timeout_s: float = 30.0
    """A datagram still incomplete this long after its first fragment is dropped (RFC 791 uses
    15-120 s; drop stage frag_timeout). A quiet link's clock runs on: a worker checks at every flush."""

    # DNS over TCP reassembly (per parser).
    max_tcp_flows: int = 8192
    """Half-connections tracked at once; the least recently used is dropped beyond it."""
    max_tcp_buffer: int = 2 * 65537
    """Bytes buffered per direction: two maximum-size length-prefixed messages."""
    max_tcp_pending_segments: int = 64
    """Out-of-order segments held per direction while waiting for the missing bytes."""
    tcp_idle_timeout_s: float = 300.0
    """A half-connection with no segment for this long is forgotten (drop stage tcp_unfinished
    when it held part of a message)."""

    # Query/response tracking (per worker).
    max_pending_queries: int = 262144
    """Queries waiting for their response; beyond it the oldest are evicted (anomaly
    pending_evicted). 256 k covers 5 s of 50 k queries/s per worker."""
    query_timeout_s: float = 5.0
    """A query with no response this long is unanswered (stub resolvers retry after 1-5 s)."""

    # Aggregation between flushes (per worker) and in the writer.
    max_pdns_rows: int = 500000
    """Distinct passive-DNS rows held between two flushes (NXDOMAIN names apart); more are
    dropped and counted (drop stage pdns_overflow). Past it, places are shared out fairly
    among the registered domains asked for: a flood of new names under one domain is cut,
    the records of the others keep their places."""
    max_stats_groups: int = 4096
    """Distinct (minute, resolver, leg) rows held between two flushes; traffic beyond it is
    folded into the resolver 'other'."""
    max_clients_per_group: int = 100000
    """Client addresses remembered per stats row for its unique-client count; beyond it
    the count is a lower bound."""
    max_clients_per_minute: int = 50000
    """Clients with a row of their own in the `clients` table per minute and worker; the rest
    are added to the client 'other'. Between two flushes a worker holds about twice this
    many client rows a minute at most (plus one batch's): past that, each minute's busiest
    keep theirs and the rest are summed into 'other' (a flood from spoofed sources brings a
    new client with every query). The same holds for networks and domains below."""
    max_networks_per_minute: int = 1000
    """Client networks with a `breakdown` row of their own per minute and worker; the rest go to 'other'."""
    max_domains_per_minute: int = 200
    """Registered domains (the busiest by queries) with a `breakdown` row of their own per minute
    and worker; the rest go to 'other'. Series per domain are kept for the busiest ones only."""
    max_rule_groups: int = 50000
    """Groups (entity and window) per rule held between two flushes, and open in the writer;
    beyond it new groups are counted (drop stage rule_groups_overflow) instead of kept."""
    name_memo_names: int = 65536
    """Question names whose name-only features (lists, patterns, label counts, DGA score)
    a worker remembers across batches (sensor.features.memo): up to about 200 bytes each
    with every rule of rules/ on. Past it the memo starts over. A resolver's popular names
    are far fewer; a flood of names never seen gains nothing from a bigger one."""
    max_verdicts_per_rule: int = 1000
    """Verdicts one rule may write (create or update) in one flush; a rule firing for more
    entities than that at once is misconfigured or facing a storm, and the excess is counted
    (drop stage verdicts_capped) rather than flooding the store and the SIEM."""
    max_anomaly_sources: int = 10000
    """Clients whose malformed traffic is counted per window for anomaly verdicts."""
    writer_queue_batches: int = 64
    """Aggregates a worker keeps waiting for delivery to the writer; a worker whose backlog
    is full keeps merging into its next aggregate instead of dropping."""
    writer_queue_mib: int = 256
    """Megabytes of (pickled) aggregates a worker keeps waiting for delivery; the backlog is
    full at this size as at writer_queue_batches (one aggregate may take it past). Under a
    flood of names never seen before each aggregate holds up to max_pdns_rows new records
    with their text, and 64 of them held gigabytes."""

    # Capture reading.
    frames_per_read: int = 8192
    """Frames taken from libpcap in one read and parsed at once, while the
    copy libpcap just made is still in the CPU's caches (about 1 MB of frames)."""
    messages_per_batch: int = 65536
    """Parsed messages gathered into one batch before tracking, features and rules run
    over it: their fixed cost per batch is shared by this many messages. A partial
    batch is processed whenever the aggregate is taken (every flush), so it never waits
    longer than that."""

    # Process memory.
    heap_mmap_threshold: int = HEAP_MMAP_THRESHOLD_MAX
    """Allocations smaller than this come from the C heap, where a batch's memory is reused by
    the next one. glibc starts at 128 KiB and climbs towards this, its 64-bit ceiling, only as
    blocks are freed; until then frame blobs and batch columns (1-20 MB each) are fresh
    mappings that the kernel zero-fills page by page (10 k page faults per million messages
    parsed from a file instead of 2.7 k)."""
    heap_trim_threshold: int = 64 * 1024 * 1024
    """Free memory kept at the top of the heap before it goes back to the kernel: twice the
    mmap threshold, as glibc's own adjustment sets it, so about three batches' worth."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"limit {f.name} must be a positive number, got {value!r}")
        for name, ceiling, why in (("heap_mmap_threshold", HEAP_MMAP_THRESHOLD_MAX, "glibc's ceiling"),
                                   ("heap_trim_threshold", HEAP_TRIM_THRESHOLD_MAX, "a C int")):
            if getattr(self, name) > ceiling:
                raise ValueError(f"limit {name} must be at most {ceiling} ({why}), got {getattr(self, name)}")
        if not isinstance(self.dedup_slots, int) or self.dedup_slots & (self.dedup_slots - 1):
            raise ValueError(f"limit dedup_slots must be a power of two, got {self.dedup_slots!r}")


DEFAULT_LIMITS = Limits()
DEFAULT_PORTS: tuple[int, ...] = (53, 5353)
"""DNS and mDNS; others (8053, 1053, ...) are added by configuration or --port."""
