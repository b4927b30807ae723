# cython: language_level=3
"""Compiled parsing core: frames -> DNS message rows and RR rows.

One ``Core`` holds a batch under construction: a numpy array of message
rows, a numpy array of RR rows and a text arena holding every name and rdata
in presentation form. ``add_frames`` decodes a pcapy-ng ``next_batch`` blob
(link layer, IPv4/IPv6, UDP) and parses unfragmented UDP DNS in place; it
returns the frames that need reassembly (IP fragments, TCP), which Python
reassembles and hands back through ``add_message``.

Every wire read goes through ``Cursor``; nothing here allocates a Python
object per packet. ``sensor/parse/twin.py`` is the pure-Python reference
this file must agree with field for field.
"""
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t
from libc.string cimport memcpy, memset, memcmp, memmove
from libc.stdlib cimport realloc, free, calloc
from libc.math cimport log2, floor, fabs
from cpython.unicode cimport PyUnicode_DecodeASCII
from cpython.ref cimport PyObject, Py_DECREF, Py_XDECREF

import numpy as np

from dnswire cimport MessageRow, RRRow, Cursor, PacketInfo

cdef extern from "arpa/inet.h":
    const char *inet_ntop(int af, const void *src, char *dst, unsigned int size)
cdef extern from *:
    int ctz64 "__builtin_ctzll"(unsigned long long x) nogil
cdef extern from "stdlib.h":
    void *aligned_alloc(size_t alignment, size_t size) nogil

cdef extern from "sys/socket.h":
    int AF_INET6

cdef const char *V4_MAPPED_PREFIX = b"\0\0\0\0\0\0\0\0\0\0\xff\xff"   # ::ffff:0:0/96

# Anomaly bit positions; the order is ANOMALIES in sensor/schema.py (checked
# at import through ANOMALY_ORDER).
cdef enum:
    AN_TRUNCATED = 0
    AN_BAD_POINTER
    AN_LABEL_TOO_LONG
    AN_NAME_TOO_LONG
    AN_POINTER_LIMIT
    AN_RDLENGTH_MISMATCH
    AN_TRAILING_BYTES
    AN_TOO_MANY_RECORDS
    AN_HEADER_TOO_SHORT
    AN_QDCOUNT_NOT_ONE
    AN_INVALID_OPCODE
    AN_Z_BIT_SET
    AN_EDNS_BAD_OPTION
    AN_EDNS_MULTIPLE_OPT
    AN_EDNS_MISPLACED_OPT
    AN_BAD_RDATA
    AN_QNAME_NON_PRINTABLE
    AN_ANSWER_IN_QUERY
    AN_TTL_HIGH_BIT
    AN_UDP_LENGTH_MISMATCH
    AN_IP_TRUNCATED

ANOMALY_ORDER = (
    "truncated", "bad_pointer", "label_too_long", "name_too_long", "pointer_limit",
    "rdlength_mismatch", "trailing_bytes", "too_many_records", "header_too_short",
    "qdcount_not_one", "invalid_opcode", "z_bit_set", "edns_bad_option",
    "edns_multiple_opt", "edns_misplaced_opt", "bad_rdata", "qname_non_printable",
    "answer_in_query", "ttl_high_bit", "udp_length_mismatch", "ip_truncated",
)

# Frame counters kept per batch (names in COUNTER_NAMES, same order).
cdef enum:
    C_PACKETS = 0
    C_BYTES
    C_NOT_IP
    C_NOT_DNS
    C_LINK_TRUNCATED
    C_DNS_UDP
    C_SLOW_PATH
    C_EMPTY_PAYLOAD
    C_MESSAGES
    C_DUPLICATE_FRAMES
    N_COUNTERS

COUNTER_NAMES = (
    "packets", "bytes", "not_ip", "not_dns", "link_truncated", "dns_udp",
    "slow_path", "empty_payload", "messages", "duplicate_frames",
)

REGDOM_COLUMNS = ("regdom_start", "regdom_length", "regdom_hash")
"""Hot columns made with the fields (Core.set_hot_columns), as regdom_columns() makes
them: each question's registered domain as an arena span and its span_hash."""
BAILIWICK_COLUMN = "bailiwick_strays"
"""The hot column made with the fields that out_of_bailiwick() gives: a message's records
are in cache as it is parsed, where a pass over a finished batch fetched them again."""
DERIVED_COLUMNS = REGDOM_COLUMNS + (BAILIWICK_COLUMN,)

# Fixed bounds of the wire format (RFC 1035), not tunables.
DEF MAX_NAME_WIRE = 255          # a name's wire length, terminator included
DEF MAX_LABELS = 128             # 255 wire bytes hold at most 127 labels
DEF NAME_TEXT_CAP = 1024         # 255 bytes, each at most 4 chars ("\\DDD")
# Protocol constants.
DEF MDNS_PORT = 5353             # multicast DNS (RFC 6762): its own question-count rules
DEF OPCODE_IQUERY = 1
DEF OPCODE_DSO = 6
DEF RCODE_FORMERR = 1
DEF RCODE_NOTIMP = 4
DEF EDNS_OPTION_COOKIE = 2       # schema.EDNS_OPTION_BITS
DEF TSIG_ERROR_CODES = 24        # TSIG/TKEY error mnemonics run to BADCOOKIE (23)
DEF LOC_ALTITUDE_ORIGIN = 10000000   # RFC 1876: altitude 0 m is 100 000 m (in cm) on the wire
# Decode bounds: headers we walk through before giving up on a frame.
DEF MAX_VLAN_TAGS = 4            # QinQ is two; four covers stacked provider tags
DEF MAX_IPV6_EXT_HEADERS = 8     # RFC 8200 defines six kinds that may repeat
DEF MAX_ENCAP_DEPTH = 3          # VXLAN/Geneve in Geneve is the deepest seen in practice
DEF PSL_MAX_LABELS = 8           # longest PSL rule is 4 labels, +1 for wildcards, with margin
# Suffix flags in the low bits of each PSL table entry (sensor/parse/psl.py FLAG_*).
DEF PSL_RULE = 1
DEF PSL_WILDCARD = 2
DEF PSL_EXCEPTION = 4
DEF PSL_FLAG_BITS = 4
DEF PSL_FLAG_MASK = 15
# Names already rendered in the current message, by wire offset, so a pointer
# to one (nearly every owner name) copies its text instead of decoding again.
# A message with more distinct name suffixes simply decodes the rest.
DEF NAME_CACHE = 48

# Question names already decoded, by their exact wire bytes, with every feature
# the question row carries: traffic repeats names (each response repeats its
# query's, popular names recur), and a hit copies the text instead of decoding,
# classifying, hashing and walking the suffix list again. Only clean in-place
# names of at most QNAME_CACHE_WIRE wire bytes are kept (longer ones are mostly
# tunnel payloads, seen once). A name hashes to a set of two slots, side by side, and
# takes the one its set used less recently, so a name seen once no longer drives out
# the popular one it hashed to. With a slot a name, a fifth of bench/parse.py's 4 000
# recurring names shared theirs with another and drove it out each time: 89 % of its
# questions found their name, 95 % with two (the rest: sets that three or more of its
# names hash to, asked for in turn), and parsing the file took 250 ms instead of 261
# (the mean of six interleaved best-of-six runs each).
DEF QNAME_CACHE_SLOTS = 16384    # power of two; 128 bytes a slot, two a set
DEF QNAME_CACHE_LABELS = 32      # 64 wire bytes hold at most 31 labels
DEF QNAME_CACHE_WIRE = 64
DEF QNAME_CACHE_PAD = 40         # 128 - 24 header bytes - 64 wire bytes
DEF MAX_HOT_COLUMNS = 24         # message fields copied out as columns (Core.set_hot_columns)
DEF ROW_PREFETCH = 16            # track_columns: message rows ahead whose lines are fetched early
DEF SLOT_PREFETCH = 32           # match_events, KeyIndex: keys ahead whose hash slots are fetched early
DEF WRITE_AHEAD_ROWS = 16        # parse_into: message rows ahead whose lines are fetched before writing
DEF WRITE_AHEAD_RRS = 24         # parse_into: record rows ahead, likewise
DEF WRITE_AHEAD_ARENA = 1024     # parse_into: arena bytes ahead, likewise
DEF FRAME_PREFETCH = 4           # add_frames: frames ahead whose first bytes are fetched early
DEF HOT_CHUNK = 256              # rows copied out at a time: 38 KB, still in L1/L2

DEF FNV_OFFSET = 0xcbf29ce484222325
DEF FNV_PRIME = 0x100000001b3

cdef struct NameOut:
    char *text                        # written in place: the arena's reserved free tail
    uint32_t text_len
    uint32_t wire_len
    uint64_t hash                     # FNV-1a of the text (question names only)
    uint16_t label_text_start[MAX_LABELS]
    uint16_t label_raw_start[MAX_LABELS]
    uint16_t label_wire[MAX_LABELS]   # wire offset of each label read in place
    uint8_t inplace_labels             # labels before the first pointer
    uint8_t hops
    uint8_t raw[MAX_NAME_WIRE + 1]
    uint16_t raw_len
    uint16_t digits
    uint16_t hexchars
    uint16_t uppers
    uint8_t nlabels
    uint8_t longest
    bint nonprint
    bint text_full

cdef struct QnameEntry:
    # A hit reads the first line only for the usual name: the header, then the wire
    # bytes. The text and label offsets are not kept: a cached name is clean and in
    # place, so they come from the message's own bytes, already in cache.
    uint64_t name_hash
    float entropy
    uint16_t digits
    uint16_t hexchars
    uint16_t uppers
    uint16_t regdom_off
    uint8_t wire_len                  # 0: empty slot
    uint8_t nlabels
    uint8_t longest
    uint8_t recent                    # in a set's first slot: the slot (0, 1) used last
    uint8_t wire[QNAME_CACHE_WIRE]
    uint8_t pad[QNAME_CACHE_PAD]      # to a power-of-two stride: slots never straddle lines needlessly

cdef struct QnameProbe:
    # Where a message's question name would sit in the cache, worked out one message
    # ahead of its parse so that the slot's line is fetched while the message before
    # is parsed: the lookup was a cache miss, a tenth of the whole parse.
    const uint8_t *msg               # the message probed; NULL: none
    uint32_t wire_len
    int slot                         # the first slot of the name's set; QNAME_CACHE_SLOTS: it cannot be kept
    uint8_t nlabels
    uint8_t label_at[QNAME_CACHE_LABELS]   # wire offset of each label from the name's start

cdef extern from *:
    """
    #define DNS_PREFETCH(p) __builtin_prefetch((p), 0, 3)

    /* One byte of every `stride`, kept scalar: GCC's vectorised loop built each 16 bytes
       in two stack words and loaded them back as one, a load that no store can forward
       (a fifth of Core.extract_hot's time, measured). */
    #if defined(__GNUC__) && !defined(__clang__)
    __attribute__((optimize("no-tree-vectorize")))
    #endif
    static void gather_bytes(char *dst, const char *src, size_t stride, size_t n) {
        for (size_t i = 0; i < n; i++)
            dst[i] = src[i * stride];
    }
    """
    void DNS_PREFETCH(const void *p) noexcept nogil
    void gather_bytes(char *dst, const char *src, size_t stride, size_t n) noexcept nogil

cdef struct SeenFrame:
    uint64_t hash               # of addresses, ports and payload; 0: an empty slot
    double ts
    bint used                   # its copy was dropped already

cdef struct Arena:
    char *buf
    size_t len
    size_t cap
    PyObject *owner     # NULL: buf is malloc'd; else buf is this bytes object's, which it grows

cdef enum:
    ARENA_BYTES_PER_MESSAGE = 64     # text per message in a typical batch (names and rdata)

cdef extern from *:
    """
    /* Clear a message row with straight-line word stores: a memset (or a loop,
       which the compiler turns back into one) of this size became `rep stos`,
       whose start-up cost was a sixth of the whole message parse. */
    #define DNS_ZERO_WORDS_19(p) do { uint64_t *w_ = (uint64_t *)(p); \
        w_[0] = 0; w_[1] = 0; w_[2] = 0; w_[3] = 0; w_[4] = 0; w_[5] = 0; w_[6] = 0; \
        w_[7] = 0; w_[8] = 0; w_[9] = 0; w_[10] = 0; w_[11] = 0; w_[12] = 0; \
        w_[13] = 0; w_[14] = 0; w_[15] = 0; w_[16] = 0; w_[17] = 0; w_[18] = 0; } while (0)
    """
    void DNS_ZERO_WORDS_19(void *p) nogil


cdef inline void zero_row(MessageRow *row) noexcept nogil:
    DNS_ZERO_WORDS_19(row)


cdef inline void flag(uint64_t *a, int bit) noexcept nogil:
    a[0] |= (<uint64_t>1) << bit

# ---------------------------------------------------------------- cursor

cdef inline uint8_t rd8(Cursor *c) noexcept nogil:
    if c.pos + 1 > c.end:
        c.short = 1
        return 0
    c.pos += 1
    return c.msg[c.pos - 1]

cdef inline uint16_t rd16(Cursor *c) noexcept nogil:
    if c.pos + 2 > c.end:
        c.short = 1
        c.pos = c.end
        return 0
    c.pos += 2
    return (<uint16_t>c.msg[c.pos - 2] << 8) | c.msg[c.pos - 1]

cdef inline uint32_t rd32(Cursor *c) noexcept nogil:
    if c.pos + 4 > c.end:
        c.short = 1
        c.pos = c.end
        return 0
    cdef const uint8_t *p = c.msg + c.pos
    c.pos += 4
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline bint take(Cursor *c, uint32_t n) noexcept nogil:
    """Reserve n bytes at the cursor; False (and short) if the window lacks them."""
    if c.pos + n > c.end:
        c.short = 1
        c.pos = c.end
        return 0
    c.pos += n
    return 1

cdef inline uint16_t be16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

# ---------------------------------------------------------------- names

cdef inline uint64_t fnv_step(uint64_t h, uint8_t b) noexcept nogil:
    return (h ^ b) * <uint64_t>FNV_PRIME


# Per-byte class of a label character, so read_name's inner loop is table
# lookups instead of range tests.
cdef enum:
    CL_DIGIT = 1
    CL_HEX = 2
    CL_UPPER = 4
    CL_ESCAPE = 8       # '.' and backslash: written after a backslash
    CL_DECIMAL = 16     # not printable: written as a backslash and three digits

cdef uint8_t CHAR_CLASS[256]
cdef uint8_t LOWER[256]
# A byte's digit, hex and upper-case counts packed in 16-bit fields, so a name's
# three counts take one add per byte (a name has at most 255 bytes).
cdef uint64_t CLASS_COUNTS[256]
cdef double COUNT_LOG2[256]      # c * log2(c): a byte's share of a name's entropy
cdef double LOG2_OF[256]         # log2(n) of a name's byte count
# Each octet's decimal digits followed by a '.', and how many digits: a dotted quad
# is four 4-byte stores instead of a division chain per octet.
cdef char OCTET_DOT[256][4]
cdef uint8_t OCTET_DIGITS[256]
cdef const char *HEXL = b"0123456789abcdef"
cdef char HEX_PAIR[256][2]       # a byte as two lower-case hex digits (IPv6 words)


cdef inline int put_decimal8(char *t, uint8_t v) noexcept nogil:
    if v >= 100:
        t[0] = <char>(48 + v // 100)
        t[1] = <char>(48 + (v // 10) % 10)
        t[2] = <char>(48 + v % 10)
        return 3
    if v >= 10:
        t[0] = <char>(48 + v // 10)
        t[1] = <char>(48 + v % 10)
        return 2
    t[0] = <char>(48 + v)
    return 1


cdef void init_char_tables() noexcept:
    cdef int ch
    COUNT_LOG2[0] = 0.0
    LOG2_OF[0] = 0.0
    for ch in range(1, 256):
        COUNT_LOG2[ch] = <double>ch * log2(<double>ch)
        LOG2_OF[ch] = log2(<double>ch)
    for ch in range(256):
        OCTET_DIGITS[ch] = <uint8_t>put_decimal8(OCTET_DOT[ch], <uint8_t>ch)
        OCTET_DOT[ch][OCTET_DIGITS[ch]] = 46
        HEX_PAIR[ch][0] = HEXL[ch >> 4]
        HEX_PAIR[ch][1] = HEXL[ch & 15]
        CHAR_CLASS[ch] = 0
        LOWER[ch] = <uint8_t>ch
        if 48 <= ch <= 57:
            CHAR_CLASS[ch] = CL_DIGIT | CL_HEX
        elif 65 <= ch <= 90:
            CHAR_CLASS[ch] = CL_UPPER | (CL_HEX if ch <= 70 else 0)
            LOWER[ch] = <uint8_t>(ch + 32)
        elif 97 <= ch <= 102:
            CHAR_CLASS[ch] = CL_HEX
        if ch == 46 or ch == 92:
            CHAR_CLASS[ch] |= CL_ESCAPE
        elif ch <= 32 or ch >= 127:
            CHAR_CLASS[ch] |= CL_DECIMAL
        CLASS_COUNTS[ch] = ((CHAR_CLASS[ch] & CL_DIGIT)
                            | (<uint64_t>((CHAR_CLASS[ch] >> 1) & 1) << 16)
                            | (<uint64_t>((CHAR_CLASS[ch] >> 2) & 1) << 32))


init_char_tables()

cdef inline uint64_t span_hash(const uint8_t *p, uint32_t n) noexcept nogil:
    """A 64-bit hash of n bytes, a word at a time: how names, rdata and wire names
    are keyed inside the sensor (never stored). Eight bytes cost one multiply, where
    FNV-1a's byte-serial chain costs eight."""
    cdef uint64_t h = n * <uint64_t>0x9E3779B97F4A7C15, w
    cdef uint32_t lo, hi
    cdef bint long_span = n >= 8
    while n >= 8:
        memcpy(&w, p, 8)
        h = (h ^ w) * <uint64_t>0xFF51AFD7ED558CCD
        h ^= h >> 32
        p += 8
        n -= 8
    if n:
        # The last 1-7 bytes as one word, read in whole loads: gathering them on the
        # stack byte by byte stalls the word load that follows (store forwarding).
        if long_span:           # the 8 bytes ending here, less those already hashed
            memcpy(&w, p + n - 8, 8)
            w >>= (8 - n) * 8
        elif n >= 4:            # two overlapping words cover 4-7 bytes
            memcpy(&lo, p, 4)
            memcpy(&hi, p + n - 4, 4)
            w = lo | (<uint64_t>hi << 32)
        else:                   # 1-3 bytes: first, middle, last (the length is in h)
            w = p[0] | (<uint64_t>p[n >> 1] << 8) | (<uint64_t>p[n - 1] << 16)
        h = (h ^ w) * <uint64_t>0xFF51AFD7ED558CCD
        h ^= h >> 32
    h = (h ^ (h >> 29)) * <uint64_t>0xC4CEB9FE1A85EC53
    return h ^ (h >> 32)


cdef inline void regdom_span(const MessageRow *mr, uint32_t *off, uint32_t *length) noexcept nogil:
    """The arena span of a message's registered domain: the end of its question name from
    regdom_off (empty when regdom_off is not inside it)."""
    off[0] = mr.qname_off + mr.regdom_off
    length[0] = mr.qname_len - mr.regdom_off if mr.qname_len > mr.regdom_off else 0


cdef inline int put_escaped(char *t, uint8_t ch, uint8_t cls) noexcept nogil:
    """Write a byte that needs escaping in presentation form; return its width."""
    t[0] = 92
    if cls & CL_ESCAPE:
        t[1] = <char>ch
        return 2
    t[1] = <char>(48 + ch // 100)
    t[2] = <char>(48 + (ch // 10) % 10)
    t[3] = <char>(48 + ch % 10)
    return 4


DEF BYTES_01 = 0x0101010101010101
DEF BYTES_80 = 0x8080808080808080
DEF BYTES_7F = 0x7F7F7F7F7F7F7F7F
DEF PLAIN_PAD = 0x6161616161616161   # 'a' x 8: fills a word past the label's end

cdef inline bint word_has_byte(uint64_t w, uint64_t b) noexcept nogil:
    """Whether any of the eight bytes of w is b (exact: borrows only follow a match)."""
    w ^= b * <uint64_t>BYTES_01
    return ((w - <uint64_t>BYTES_01) & ~w & <uint64_t>BYTES_80) != 0


cdef inline uint64_t word_bytes_equal(uint64_t w, uint64_t b) noexcept nogil:
    """The top bit of each byte of w that is b (exact: no borrow crosses bytes)."""
    cdef uint64_t t = w ^ (b * <uint64_t>BYTES_01)
    return ~(((t & <uint64_t>BYTES_7F) + <uint64_t>BYTES_7F) | t) & <uint64_t>BYTES_80


cdef inline int name_dots(const uint8_t *p, uint32_t n, uint16_t *dots) noexcept nogil:
    """The positions of the dots of a name in presentation form, in order, found eight
    bytes at a time; -1 when the name has an escape (a backslash: its dots may be a label's
    own) or more than MAX_LABELS - 1 dots. The caller then walks it a byte at a time."""
    cdef uint32_t i = 0
    cdef uint64_t w, found
    cdef int count = 0
    while i < n:
        if n - i >= 8:
            memcpy(&w, p + i, 8)
        else:
            w = 0               # zero bytes are neither dots nor backslashes
            memcpy(&w, p + i, n - i)
        if word_bytes_equal(w, 92):
            return -1
        found = word_bytes_equal(w, 46)
        while found:
            if count == MAX_LABELS - 1:
                return -1
            dots[count] = <uint16_t>(i + (ctz64(found) >> 3))
            count += 1
            found &= found - 1
        i += 8
    return count


cdef inline bint word_is_plain(uint64_t w) noexcept nogil:
    """Whether eight name bytes are all written as themselves in presentation form:
    none below '!', at or above DEL, '.' or backslash (CL_ESCAPE, CL_DECIMAL)."""
    if w & <uint64_t>BYTES_80:
        return 0
    # with every byte below 0x80: some byte < 0x21 (exact for a limit up to 0x80)
    if ((w - 0x21 * <uint64_t>BYTES_01) & ~w & <uint64_t>BYTES_80) != 0:
        return 0
    return not (word_has_byte(w, 0x7F) or word_has_byte(w, 46) or word_has_byte(w, 92))


cdef inline uint64_t word_lowered(uint64_t w) noexcept nogil:
    """Eight bytes, each below 0x80, with 'A'-'Z' lower-cased (LOWER): no sum carries
    into the next byte."""
    cdef uint64_t at_least_a = w + (0x80 - 65) * <uint64_t>BYTES_01
    cdef uint64_t past_z = w + (0x80 - 91) * <uint64_t>BYTES_01
    return w | (((at_least_a & ~past_z) & <uint64_t>BYTES_80) >> 2)


cdef int read_name(Cursor *c, NameOut *o, uint64_t *anom, int max_hops, bint features) noexcept nogil:
    """Decode the name at the cursor into o (its text at o.text, which has room for
    NAME_TEXT_CAP bytes); advance past its in-place part.

    With `features`, also counts digits, hex and upper-case characters, keeps
    the lower-cased bytes and hashes the text (the question name only).

    Returns 0 when the cursor could be placed after the name (the name may be
    cut short by a flagged anomaly), -1 when it could not: the message cannot
    be parsed further.
    """
    # The loop works on locals and writes o once at the end: stores through the
    # text pointer could alias o, which would force every counter through memory.
    cdef const uint8_t *msg = c.msg
    cdef char *t = o.text
    cdef uint8_t *raw = o.raw
    cdef uint32_t p = c.pos
    cdef uint32_t limit = c.end
    cdef uint32_t biggest = c.pos      # pointers must go strictly below this
    cdef bint jumped = 0, text_full = 0, nonprint = 0
    cdef int hops = 0, w, j
    cdef uint8_t b, ch, cls, nlabels = 0, longest = 0, inplace = 0
    cdef uint32_t length, target, i, tl = 0, rl = 0, wire_len = 0
    cdef uint64_t counts = 0, h = <uint64_t>FNV_OFFSET, word, keep
    cdef uint32_t step, label_end
    cdef int result = 0
    while True:
        if p >= limit:
            if not jumped:
                c.short = 1
                c.pos = c.end
                result = -1
                break
            flag(anom, AN_TRUNCATED)
            break
        b = msg[p]
        if b == 0:
            p += 1
            wire_len += 1
            break
        if (b & 0xC0) == 0xC0:
            if p + 2 > limit:
                if not jumped:
                    c.short = 1
                    c.pos = c.end
                    result = -1
                    break
                flag(anom, AN_TRUNCATED)
                break
            target = (<uint32_t>(b & 0x3F) << 8) | msg[p + 1]
            if not jumped:
                jumped = 1
                c.pos = p + 2
                limit = c.msg_len
            if target >= biggest:
                flag(anom, AN_BAD_POINTER)
                break
            hops += 1
            if hops > max_hops:
                flag(anom, AN_POINTER_LIMIT)
                break
            biggest = target
            p = target
            continue
        if (b & 0xC0) != 0:
            flag(anom, AN_LABEL_TOO_LONG)
            if not jumped:
                result = -1
            break
        length = b
        if p + 1 + length > limit:
            if not jumped:
                c.short = 1
                c.pos = c.end
                result = -1
                break
            flag(anom, AN_TRUNCATED)
            break
        wire_len += 1 + length
        if wire_len + 1 > MAX_NAME_WIRE:
            if not text_full:
                flag(anom, AN_NAME_TOO_LONG)
                text_full = 1
            if jumped:
                break
        if not text_full:
            if nlabels > 0:
                t[tl] = 46   # '.'
                tl += 1
                if features:
                    h = fnv_step(h, 46)
            o.label_text_start[nlabels] = <uint16_t>tl
            o.label_raw_start[nlabels] = <uint16_t>rl
            if not jumped:
                o.label_wire[nlabels] = <uint16_t>p
                inplace = nlabels + 1
            nlabels += 1
            if length > longest:
                longest = <uint8_t>length
            if features:        # the question name's counts, raw bytes and hash
                for i in range(p + 1, p + 1 + length):
                    ch = msg[i]
                    cls = CHAR_CLASS[ch]
                    counts += CLASS_COUNTS[ch]
                    ch = LOWER[ch]
                    raw[rl] = ch
                    rl += 1
                    if not (cls & (CL_ESCAPE | CL_DECIMAL)):
                        t[tl] = <char>ch
                        tl += 1
                        h = fnv_step(h, ch)
                    else:
                        nonprint |= (cls & CL_DECIMAL) != 0
                        w = put_escaped(t + tl, ch, cls)
                        for j in range(w):
                            h = fnv_step(h, <uint8_t>t[tl + j])
                        tl += w
            else:
                # Eight bytes at a time while they are plain (one test and one store
                # for a word; a label's last word is read whole from the message and
                # padded with plain bytes past the label); a word with a byte to
                # escape, and a label at the message's very end, a byte at a time.
                i = p + 1
                label_end = p + 1 + length
                while i < label_end and i + 8 <= c.msg_len and tl + 8 <= NAME_TEXT_CAP:
                    memcpy(&word, msg + i, 8)
                    step = label_end - i
                    if step < 8:
                        keep = (<uint64_t>1 << (step * 8)) - 1
                        word = (word & keep) | (<uint64_t>PLAIN_PAD & ~keep)
                    else:
                        step = 8
                    if not word_is_plain(word):
                        break
                    word = word_lowered(word)
                    memcpy(t + tl, &word, 8)
                    tl += step
                    i += step
                for i in range(i, label_end):
                    ch = msg[i]
                    cls = CHAR_CLASS[ch]
                    ch = LOWER[ch]
                    if not (cls & (CL_ESCAPE | CL_DECIMAL)):
                        t[tl] = <char>ch
                        tl += 1
                    else:
                        nonprint |= (cls & CL_DECIMAL) != 0
                        tl += put_escaped(t + tl, ch, cls)
        p += 1 + length
    if result == 0 and not jumped:
        c.pos = p
    if nlabels == 0:
        t[0] = 46
        tl = 1
        h = fnv_step(<uint64_t>FNV_OFFSET, 46)
    o.text_len = tl
    o.wire_len = wire_len
    o.hash = h
    o.raw_len = <uint16_t>rl
    o.digits = <uint16_t>(counts & 0xFFFF)
    o.hexchars = <uint16_t>((counts >> 16) & 0xFFFF)
    o.uppers = <uint16_t>((counts >> 32) & 0xFFFF)
    o.nlabels = nlabels
    o.longest = longest
    o.inplace_labels = inplace
    o.hops = <uint8_t>hops
    o.nonprint = nonprint
    o.text_full = text_full
    return result

# ---------------------------------------------------------------- arena

cdef extern from "Python.h":
    PyObject *PyBytes_FromStringAndSize(const char *v, Py_ssize_t len)
    char *PyBytes_AS_STRING(PyObject *o)
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize)


cdef int ar_reserve(Arena *a, size_t n) except -1:
    cdef size_t cap
    cdef char *nb
    if a.len + n <= a.cap:
        return 0
    cap = a.cap * 2 if a.cap else 65536
    while cap < a.len + n:
        cap *= 2
    if a.owner != NULL:
        if _PyBytes_Resize(&a.owner, cap) < 0:      # the object is gone then, its text with it
            a.buf, a.len, a.cap = NULL, 0, 0
            raise MemoryError("text arena")
        a.buf = PyBytes_AS_STRING(a.owner)
    else:
        nb = <char *>realloc(a.buf, cap)
        if nb == NULL:
            raise MemoryError("text arena")
        a.buf = nb
    a.cap = cap
    return 0


cdef int ar_own(Arena *a, size_t cap) except -1:
    """Start an empty arena inside a new bytes object of `cap` bytes, which ar_take() hands
    out: a batch's text then goes out as it was written, where copying it out cost about
    4 % of making the batch."""
    a.owner = PyBytes_FromStringAndSize(NULL, max(cap, <size_t>64))
    if a.owner == NULL:
        a.buf, a.len, a.cap = NULL, 0, 0
        raise MemoryError("text arena")
    a.buf = PyBytes_AS_STRING(a.owner)
    a.len = 0
    a.cap = max(cap, <size_t>64)
    return 0


cdef bytes ar_take(Arena *a):
    """The arena's text as a bytes object (its own, cut to length), and a new arena of the
    same size in its place. An arena left without its object by a failed allocation
    (ar_reserve then grows a malloc'd buffer) gives a copy of its text and is owned again."""
    cdef size_t cap = a.cap
    if a.owner == NULL:
        text = a.buf[:a.len] if a.len else b""
        free(a.buf)
        a.buf, a.len, a.cap = NULL, 0, 0
        ar_own(a, max(cap, <size_t>65536))
        return text
    if a.len == 0:
        return b""
    if _PyBytes_Resize(&a.owner, a.len) < 0:
        a.buf, a.len, a.cap = NULL, 0, 0
        raise MemoryError("text arena")
    text = <bytes>a.owner               # a reference of its own
    Py_DECREF(text)                     # ... and the arena's is given up with the object
    a.owner = NULL
    ar_own(a, cap)
    return text


cdef inline int ar_put(Arena *a, const char *s, size_t n) except -1:
    ar_reserve(a, n)
    memcpy(a.buf + a.len, s, n)
    a.len += n
    return 0

cdef inline int ar_putc(Arena *a, char ch) except -1:
    ar_reserve(a, 1)
    a.buf[a.len] = ch
    a.len += 1
    return 0

cdef inline int put_uint(char *t, uint64_t v) noexcept nogil:
    """Write v in decimal at t (room for 20 digits); returns the digit count."""
    cdef char tmp[24]
    cdef int n = 0, i
    if v < 10:
        t[0] = <char>(48 + v)
        return 1
    while v:
        tmp[n] = <char>(48 + v % 10)
        v //= 10
        n += 1
    for i in range(n):
        t[i] = tmp[n - 1 - i]
    return n


cdef int ar_put_uint(Arena *a, uint64_t v) except -1:
    ar_reserve(a, 20)
    a.len += put_uint(a.buf + a.len, v)
    return 0

cdef const char *HEXU = b"0123456789ABCDEF"
cdef const char *B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
cdef const char *B32HEX = b"0123456789ABCDEFGHIJKLMNOPQRSTUV"

cdef int ar_put_hex(Arena *a, const uint8_t *p, size_t n) except -1:
    cdef size_t i
    ar_reserve(a, 2 * n)
    for i in range(n):
        a.buf[a.len] = HEXU[p[i] >> 4]
        a.buf[a.len + 1] = HEXU[p[i] & 15]
        a.len += 2
    return 0

cdef int ar_put_b64(Arena *a, const uint8_t *p, size_t n) except -1:
    cdef size_t i = 0
    cdef uint32_t v
    ar_reserve(a, 4 * (n // 3 + 1))
    while i + 3 <= n:
        v = (<uint32_t>p[i] << 16) | (<uint32_t>p[i + 1] << 8) | p[i + 2]
        a.buf[a.len] = B64[(v >> 18) & 63]
        a.buf[a.len + 1] = B64[(v >> 12) & 63]
        a.buf[a.len + 2] = B64[(v >> 6) & 63]
        a.buf[a.len + 3] = B64[v & 63]
        a.len += 4
        i += 3
    if n - i == 1:
        v = <uint32_t>p[i] << 16
        a.buf[a.len] = B64[(v >> 18) & 63]
        a.buf[a.len + 1] = B64[(v >> 12) & 63]
        a.buf[a.len + 2] = 61
        a.buf[a.len + 3] = 61
        a.len += 4
    elif n - i == 2:
        v = (<uint32_t>p[i] << 16) | (<uint32_t>p[i + 1] << 8)
        a.buf[a.len] = B64[(v >> 18) & 63]
        a.buf[a.len + 1] = B64[(v >> 12) & 63]
        a.buf[a.len + 2] = B64[(v >> 6) & 63]
        a.buf[a.len + 3] = 61
        a.len += 4
    return 0

cdef int ar_put_b32hex(Arena *a, const uint8_t *p, size_t n) except -1:
    """Base32hex without padding (RFC 4648 section 7; RFC 5155 presentation)."""
    cdef size_t i
    cdef uint64_t acc = 0
    cdef int bits = 0
    ar_reserve(a, (n * 8 + 4) // 5)
    for i in range(n):
        acc = (acc << 8) | p[i]
        bits += 8
        while bits >= 5:
            bits -= 5
            a.buf[a.len] = B32HEX[(acc >> bits) & 31]
            a.len += 1
    if bits:
        a.buf[a.len] = B32HEX[(acc << (5 - bits)) & 31]
        a.len += 1
    return 0

cdef int ar_put_text_bytes(Arena *a, const uint8_t *p, size_t n, bint quoted) except -1:
    """A character-string: printable ASCII as is, '"' and '\\' escaped, other bytes \\DDD."""
    cdef size_t i
    cdef uint8_t ch
    ar_reserve(a, 4 * n + 2)
    if quoted:
        a.buf[a.len] = 34
        a.len += 1
    for i in range(n):
        ch = p[i]
        if 32 <= ch < 127:
            if ch == 34 or ch == 92:
                a.buf[a.len] = 92
                a.len += 1
            a.buf[a.len] = <char>ch
            a.len += 1
        else:
            a.buf[a.len] = 92
            a.buf[a.len + 1] = <char>(48 + ch // 100)
            a.buf[a.len + 2] = <char>(48 + (ch // 10) % 10)
            a.buf[a.len + 3] = <char>(48 + ch % 10)
            a.len += 4
    if quoted:
        a.buf[a.len] = 34
        a.len += 1
    return 0



cdef inline int put_hex_trimmed(char *t, uint8_t b) noexcept nogil:
    """b in lower-case hex without a leading zero; returns the digits written (1 or 2)."""
    if b >= 16:
        memcpy(t, HEX_PAIR[b], 2)
        return 2
    t[0] = HEX_PAIR[b][1]
    return 1


cdef int ar_put_ip(Arena *a, const uint8_t *p, int family) except -1:
    """An address as inet_ntop writes it (RFC 5952 for IPv6), without its printf."""
    cdef char tmp[64]
    cdef char *t
    cdef int i, j = 0, w, best = -1, best_len = 0, run = 0
    cdef uint16_t words[8]
    ar_reserve(a, 48)
    t = a.buf + a.len
    if family == 4:
        for i in range(4):
            memcpy(t + j, OCTET_DOT[p[i]], 4)
            j += OCTET_DIGITS[p[i]] + 1
        a.len += j - 1          # the last octet's '.' is not part of it
        return 0
    for i in range(10):
        if p[i]:
            break
    else:
        # Leading zeros: the forms with an embedded IPv4 address (::ffff:a.b.c.d)
        # are libc's business.
        inet_ntop(AF_INET6, p, tmp, 64)
        i = 0
        while tmp[i]:
            i += 1
        return ar_put(a, tmp, i)
    for i in range(8):
        words[i] = (<uint16_t>p[2 * i] << 8) | p[2 * i + 1]
    for i in range(9):                       # longest zero run of two or more, first on ties
        if i < 8 and words[i] == 0:
            run += 1
        else:
            if run >= 2 and run > best_len:
                best = i - run
                best_len = run
            run = 0
    i = 0
    while i < 8:
        if i == best:
            t[j] = 58
            t[j + 1] = 58
            j += 2
            i += best_len
            continue
        if i and not (i == best + best_len and best >= 0):
            t[j] = 58
            j += 1
        # the word in hex without leading zeros, a byte's two digits at a time
        w = words[i]
        if w >> 8:
            j += put_hex_trimmed(t + j, <uint8_t>(w >> 8))
            memcpy(t + j, HEX_PAIR[w & 0xFF], 2)
            j += 2
        else:
            j += put_hex_trimmed(t + j, <uint8_t>w)
        i += 1
    a.len += j
    return 0


cdef int ar_put_time(Arena *a, uint32_t secs) except -1:
    """YYYYMMDDHHMMSS in UTC (RFC 4034 section 3.2), civil date from day count."""
    cdef int64_t days = secs // 86400
    cdef int64_t rem = secs % 86400
    cdef int64_t z = days + 719468
    cdef int64_t era = z // 146097
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef int64_t y = yoe + era * 400
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    cdef int64_t d = doy - (153 * mp + 2) // 5 + 1
    cdef int64_t m = mp + 3 if mp < 10 else mp - 9
    cdef char tmp[14]
    cdef int64_t vals[6]
    cdef int widths[6]
    cdef int i, j, k = 0
    cdef int64_t v
    if m <= 2:
        y += 1
    vals[0] = y; vals[1] = m; vals[2] = d
    vals[3] = rem // 3600; vals[4] = (rem // 60) % 60; vals[5] = rem % 60
    widths[0] = 4; widths[1] = 2; widths[2] = 2; widths[3] = 2; widths[4] = 2; widths[5] = 2
    for i in range(6):
        v = vals[i]
        for j in range(widths[i] - 1, -1, -1):
            tmp[k + j] = <char>(48 + v % 10)
            v //= 10
        k += widths[i]
    return ar_put(a, tmp, 14)


cdef int ar_put_decimal(Arena *a, uint64_t v, int frac_digits) except -1:
    """v / 10**frac_digits with exactly frac_digits decimals (LOC's seconds and metres)."""
    cdef uint64_t scale = 1
    cdef int i
    cdef char tmp[4]
    for i in range(frac_digits):
        scale *= 10
    ar_put_uint(a, v // scale)
    ar_putc(a, 46)
    v %= scale
    for i in range(frac_digits - 1, -1, -1):
        tmp[i] = <char>(48 + v % 10)
        v //= 10
    return ar_put(a, tmp, frac_digits)


cdef inline bint loc_precision_valid(uint8_t x) noexcept nogil:
    return (x >> 4) <= 9 and (x & 15) <= 9


cdef int ar_put_loc_precision(Arena *a, uint8_t x) except -1:
    """RFC 1876 size/precision, mantissa x 10^exponent cm, in metres as BIND writes it."""
    cdef uint64_t value = x >> 4
    cdef int exponent = x & 15
    cdef int i
    if exponent >= 2:
        for i in range(exponent - 2):
            value *= 10
        ar_put_uint(a, value)
    else:
        ar_put(a, b"0.", 2)
        if exponent == 1:
            value *= 10
        ar_putc(a, <char>(48 + value // 10))
        ar_putc(a, <char>(48 + value % 10))
    return ar_putc(a, 109)


cdef int ar_put_loc_angle(Arena *a, uint32_t raw, uint32_t max_degrees, char positive, char negative) except -2:
    """RFC 1876 latitude/longitude (thousandths of an arc second off 2^31) as
    'D M S.fff H'; 1 when beyond max_degrees."""
    cdef uint64_t v
    cdef char hemisphere
    if raw >= 0x80000000:
        v = raw - 0x80000000
        hemisphere = positive
    else:
        v = 0x80000000 - raw
        hemisphere = negative
    if v > <uint64_t>max_degrees * 3600000:
        return 1
    ar_put_uint(a, v // 3600000)
    ar_putc(a, 32)
    ar_put_uint(a, (v // 60000) % 60)
    ar_putc(a, 32)
    ar_put_decimal(a, v % 60000, 3)
    ar_putc(a, 32)
    ar_putc(a, hemisphere)
    return 0


cdef int ar_put_eui(Arena *a, const uint8_t *p, size_t n) except -1:
    """RFC 7043: hex pairs joined by '-'."""
    cdef size_t i
    ar_reserve(a, 3 * n)
    for i in range(n):
        if i:
            a.buf[a.len] = 45
            a.len += 1
        a.buf[a.len] = HEXL[p[i] >> 4]
        a.buf[a.len + 1] = HEXL[p[i] & 15]
        a.len += 2
    return 0

# ---------------------------------------------------------------- core

cdef int check_suffix_table(Py_ssize_t size) except -1:
    """Raise unless a suffix table's size is a power of two (its probe masks with size - 1)."""
    if size == 0 or size & (size - 1):
        raise ValueError("psl_table size must be a power of two")
    return 0


cdef inline uint8_t psl_entry_flags(const uint64_t *table, uint64_t mask, uint64_t reversed_hash) noexcept nogil:
    """The PSL_* flags of one suffix (by the FNV-1a hash of its labels reversed) in a suffix
    table (sensor.parse.psl.SuffixRules.table, `mask` its size less one), 0 when absent."""
    cdef uint64_t key = reversed_hash >> PSL_FLAG_BITS
    cdef uint64_t slot = key & mask
    cdef uint64_t entry = table[slot]
    while entry != 0:
        if (entry >> PSL_FLAG_BITS) == key:
            return <uint8_t>(entry & PSL_FLAG_MASK)
        slot = (slot + 1) & mask
        entry = table[slot]
    return 0


cdef inline bint question_count_allowed(const MessageRow *row) noexcept nogil:
    """As the twin's question_count_allowed (read there why), once the OPT is read."""
    if row.sport == MDNS_PORT or row.dport == MDNS_PORT:
        return 1
    if row.qdcount > 1:
        return 0
    return (row.opcode == OPCODE_IQUERY or row.opcode == OPCODE_DSO
            or (row.qr == 1 and (row.rcode == RCODE_FORMERR or row.rcode == RCODE_NOTIMP))
            or (row.edns_options & EDNS_OPTION_COOKIE) != 0)


@cython.final
cdef class Core:
    """A batch under construction; see the module docstring."""
    cdef readonly object messages_array
    cdef readonly object rrs_array
    cdef MessageRow *msgs
    cdef RRRow *rrs
    cdef readonly size_t nmsg          # messages in the batch under construction
    cdef size_t msg_cap, nrr, rr_cap
    cdef size_t rr_rows_last            # record rows the last finished batch held
    cdef Arena arena
    cdef uint64_t counters[N_COUNTERS]
    cdef uint8_t port_bits[8192]    # the DNS ports, one bit each (set_port_map)
    cdef const uint64_t[::1] psl_table
    cdef uint64_t psl_mask
    cdef int max_questions
    cdef int max_records
    cdef int max_pointer_hops
    cdef NameOut name
    cdef uint16_t cache_wire[NAME_CACHE]
    cdef uint32_t cache_off[NAME_CACHE]
    cdef uint16_t cache_len[NAME_CACHE]
    cdef uint8_t cache_hops[NAME_CACHE]
    cdef uint8_t cache_labels[NAME_CACHE]
    cdef int ncache
    cdef uint32_t shared_off        # put_name(share=1): the span of a name already in the arena
    cdef uint16_t shared_len
    cdef uint32_t hist[256]         # byte histogram for entropy; all zero between uses
    cdef QnameEntry *qcache
    cdef readonly uint64_t qname_cache_hits
    # Span-port duplicates (set_dedup): the frames seen last, by hash slot
    cdef SeenFrame *seen
    cdef uint64_t seen_mask
    cdef readonly double dedup_window_s
    cdef const char *type_mnemonic[300]
    cdef uint8_t type_mnemonic_len[300]
    cdef const char *tsig_error_mnemonic[TSIG_ERROR_CODES]
    cdef uint8_t tsig_error_mnemonic_len[TSIG_ERROR_CODES]
    cdef list _keep
    # Hot columns (set_hot_columns): fields copied out of the rows add_frames() makes,
    # HOT_CHUNK rows at a time while they are still in the CPU's caches, and the registered
    # domain's span and hash
    cdef int nhot
    cdef uint32_t hot_offset[MAX_HOT_COLUMNS]
    cdef uint8_t hot_size[MAX_HOT_COLUMNS]
    cdef char *hot_data[MAX_HOT_COLUMNS + 4]     # the fields', then DERIVED_COLUMNS'
    cdef readonly tuple hot_names
    cdef list hot_arrays
    cdef size_t nextracted           # rows of the batch whose hot columns are filled
    cdef public bint count_bailiwick  # make BAILIWICK_COLUMN with the hot columns

    def __cinit__(self):
        self.arena.owner = NULL
        ar_own(&self.arena, 65536)
        memset(self.hist, 0, sizeof(self.hist))
        self.qcache = <QnameEntry *>aligned_alloc(64, QNAME_CACHE_SLOTS * sizeof(QnameEntry))
        if self.qcache == NULL:
            raise MemoryError()
        memset(self.qcache, 0, QNAME_CACHE_SLOTS * sizeof(QnameEntry))
        self.qname_cache_hits = 0
        self.seen = NULL
        self.dedup_window_s = 0
        self.nhot = 0
        self.hot_names = ()
        self.hot_arrays = []
        self.nextracted = 0
        self.count_bailiwick = 1

    def __dealloc__(self):
        if self.arena.owner != NULL:
            Py_XDECREF(self.arena.owner)
        else:
            free(self.arena.buf)
        free(self.qcache)
        free(self.seen)

    def set_port_map(self, port_map):
        """The DNS ports: port_map[p] non-zero for each (65536 entries). Kept as a bitmap,
        8 KB, which stays in the first-level cache where a byte per port (64 KB) did not:
        a random client port's lookup missed it once a frame."""
        cdef const uint8_t[::1] ports = np.ascontiguousarray(port_map, dtype=np.uint8)
        cdef Py_ssize_t p
        if ports.shape[0] != 65536:
            raise ValueError("port_map must have 65536 entries")
        memset(self.port_bits, 0, sizeof(self.port_bits))
        for p in range(65536):
            if ports[p]:
                self.port_bits[p >> 3] |= <uint8_t>(1 << (p & 7))

    cdef inline bint dns_port(self, uint16_t port) noexcept nogil:
        return (self.port_bits[port >> 3] >> (port & 7)) & 1

    def set_dedup(self, double window_s, size_t slots):
        """Drop a UDP DNS frame identical (addresses, ports, payload) to one seen at most
        window_s before it, once per frame seen: a span port that copies both directions
        of a link delivers every packet twice. 0 turns it off. `slots` (a power of two)
        frames are remembered, by hash."""
        if window_s < 0 or slots == 0 or slots & (slots - 1):
            raise ValueError("window_s must be >= 0 and slots a power of two")
        free(self.seen)
        self.seen = NULL
        self.dedup_window_s = 0
        if window_s == 0:
            return
        self.seen = <SeenFrame *>calloc(slots, sizeof(SeenFrame))
        if self.seen == NULL:
            raise MemoryError()
        self.seen_mask = slots - 1
        self.dedup_window_s = window_s

    cdef bint seen_twice(self, const uint8_t *payload, const PacketInfo *pi, double ts) noexcept:
        """Whether this frame is the copy of one remembered (and forgotten as used)."""
        cdef uint64_t h = span_hash(payload, pi.payload_len)
        cdef SeenFrame *e
        h ^= span_hash(pi.src, 16) * <uint64_t>0x9E3779B97F4A7C15
        h ^= span_hash(pi.dst, 16) * <uint64_t>0xC2B2AE3D27D4EB4F
        h ^= ((<uint64_t>pi.sport << 16) | pi.dport) * <uint64_t>0x165667B19E3779F9
        e = &self.seen[(h >> 17) & self.seen_mask]
        if e.hash == h and not e.used and fabs(ts - e.ts) <= self.dedup_window_s:
            e.used = 1
            return 1
        e.hash = h
        e.ts = ts
        e.used = 0
        return 0

    def __init__(self, port_map, psl_table, dict type_names, dict tsig_error_names, int max_questions,
                 int max_records, int max_pointer_hops, int capacity=4096):
        self.set_port_map(port_map)
        self.psl_table = np.ascontiguousarray(psl_table, dtype=np.uint64)
        check_suffix_table(self.psl_table.shape[0])
        self.psl_mask = self.psl_table.shape[0] - 1
        self.max_questions = max_questions
        self.max_records = max_records
        self.max_pointer_hops = max_pointer_hops
        self._keep = []
        self.fill_mnemonics(self.type_mnemonic, self.type_mnemonic_len, 300, type_names)
        self.fill_mnemonics(self.tsig_error_mnemonic, self.tsig_error_mnemonic_len, TSIG_ERROR_CODES,
                            tsig_error_names)
        self.begin(capacity)
        # Each batch's arena starts at the size the one before grew to: start at a typical
        # batch's text.
        ar_reserve(&self.arena, <size_t>capacity * ARENA_BYTES_PER_MESSAGE)

    cdef int fill_mnemonics(self, const char **texts, uint8_t *lengths, int size, dict names) except -1:
        """texts[code] for each code below size that names has (kept alive in _keep), NULL else."""
        cdef int code
        for code in range(size):
            texts[code] = NULL
            lengths[code] = 0
        for code, mnemonic in names.items():
            if 0 <= code < size:
                raw = mnemonic.encode()
                self._keep.append(raw)
                texts[code] = raw
                lengths[code] = len(raw)
        return 0

    def begin(self, size_t capacity=4096):
        """Start a new, empty batch with room for `capacity` messages."""
        # Rows are written whole before they are read: no need to zero them.
        self.messages_array = np.empty(max(capacity, <size_t>16), dtype=MESSAGE_DTYPE)
        self.msgs = <MessageRow *><size_t>self.messages_array.ctypes.data
        self.msg_cap = self.messages_array.shape[0]
        self.nmsg = 0
        # Two record rows a message, or what the last batch held and an eighth more where
        # that was more: traffic of responses only, or of referrals with their glue,
        # outgrew two a message in every batch, and each time the table was copied into
        # one twice its size (an eighth of the time spent parsing responses only).
        self.rrs_array = np.empty(max(capacity * 2, self.rr_rows_last + self.rr_rows_last // 8,
                                      <size_t>64), dtype=RR_DTYPE)
        self.rrs = <RRRow *><size_t>self.rrs_array.ctypes.data
        self.rr_cap = self.rrs_array.shape[0]
        self.nrr = 0
        self.arena.len = 0
        memset(self.counters, 0, sizeof(self.counters))
        self.new_hot_arrays(self.msg_cap)
        self.nextracted = 0

    cdef int grow_msgs(self, size_t need) except -1:
        cdef size_t cap = self.msg_cap
        while cap < need:
            cap *= 2
        arr = np.empty(cap, dtype=MESSAGE_DTYPE)
        arr[:self.nmsg] = self.messages_array[:self.nmsg]
        self.messages_array = arr
        self.msgs = <MessageRow *><size_t>arr.ctypes.data
        self.msg_cap = cap
        held = self.hot_arrays
        self.new_hot_arrays(cap)
        for old, new in zip(held, self.hot_arrays):
            new[:self.nextracted] = old[:self.nextracted]
        return 0

    # ------------------------------------------------------------ hot columns

    def set_hot_columns(self, names):
        """Copy these message fields out of the rows as contiguous columns, HOT_CHUNK rows at
        a time as add_frames() makes them (still in the CPU's caches then, where a column
        copied out of a finished batch pulls every 152-byte row back through them), and the
        registered domain's arena span and hash (REGDOM_COLUMNS) and the records no question
        or answer explains (BAILIWICK_COLUMN); finish() hands them out.
        The batch under construction gets them too; () turns them off."""
        names = tuple(names)
        if len(names) > MAX_HOT_COLUMNS:
            raise ValueError("at most %d hot columns" % MAX_HOT_COLUMNS)
        layout = []                     # all checked before any is taken: a refusal changes nothing
        for name in names:
            if name not in MESSAGE_DTYPE.names:
                raise ValueError("%r is not a message field" % (name,))
            dt, offset = MESSAGE_DTYPE.fields[name][:2]
            if dt.subdtype is not None or dt.itemsize not in (1, 2, 4, 8):
                raise ValueError("%r is not a 1, 2, 4 or 8-byte scalar field" % (name,))
            layout.append((offset, dt.itemsize))
        cdef int c
        for c, (offset, size) in enumerate(layout):
            self.hot_offset[c] = offset
            self.hot_size[c] = size
        self.nhot = len(names)
        self.hot_names = names
        self.new_hot_arrays(self.msg_cap)
        self.nextracted = 0

    cdef int new_hot_arrays(self, size_t cap) except -1:
        """Empty hot columns with room for `cap` messages (none while they are off)."""
        cdef int c
        self.hot_arrays = []
        if self.nhot == 0:
            return 0
        for c in range(self.nhot):
            self.hot_arrays.append(np.empty(cap, dtype=MESSAGE_DTYPE.fields[self.hot_names[c]][0]))
        self.hot_arrays += [np.empty(cap, dtype=np.uint32), np.empty(cap, dtype=np.uint32),
                            np.empty(cap, dtype=np.uint64), np.empty(cap, dtype=np.float64)]
        for c in range(self.nhot + 4):
            self.hot_data[c] = <char *><size_t>self.hot_arrays[c].ctypes.data
        return 0

    cdef void extract_hot(self) noexcept:
        """Fill the hot columns for the rows made since the last call."""
        cdef size_t i, start = self.nextracted, end = self.nmsg
        cdef const char *src
        cdef char *dst
        cdef int c
        cdef uint32_t off, length
        cdef uint32_t *reg_off
        cdef uint32_t *reg_len
        cdef uint64_t *reg_hash
        cdef double *strays
        if self.nhot == 0 or start >= end:
            return
        for c in range(self.nhot):
            src = <const char *>self.msgs + self.hot_offset[c]
            dst = self.hot_data[c]
            # a constant size per loop: each copy is one load and one store
            if self.hot_size[c] == 8:
                for i in range(start, end):
                    memcpy(dst + 8 * i, src + i * sizeof(MessageRow), 8)
            elif self.hot_size[c] == 4:
                for i in range(start, end):
                    memcpy(dst + 4 * i, src + i * sizeof(MessageRow), 4)
            elif self.hot_size[c] == 2:
                for i in range(start, end):
                    memcpy(dst + 2 * i, src + i * sizeof(MessageRow), 2)
            else:
                gather_bytes(dst + start, src + start * sizeof(MessageRow), sizeof(MessageRow), end - start)
        reg_off = <uint32_t *>self.hot_data[self.nhot]
        reg_len = <uint32_t *>self.hot_data[self.nhot + 1]
        reg_hash = <uint64_t *>self.hot_data[self.nhot + 2]
        for i in range(start, end):
            regdom_span(&self.msgs[i], &off, &length)
            if <size_t>off + length > self.arena.len:      # never made so; kept out of reach
                off, length = 0, 0
            reg_off[i] = off
            reg_len[i] = length
            reg_hash[i] = span_hash(<const uint8_t *>self.arena.buf + off, length)
        if self.count_bailiwick:
            strays = <double *>self.hot_data[self.nhot + 3]
            for i in range(start, end):
                strays[i] = (message_strays(<const uint8_t *>self.arena.buf, &self.msgs[i], self.rrs)
                             if any_to_explain(&self.msgs[i], self.rrs) else 0)
        self.nextracted = end

    cdef int grow_rrs(self) except -1:
        cdef size_t cap = self.rr_cap * 2
        arr = np.empty(cap, dtype=RR_DTYPE)
        arr[:self.nrr] = self.rrs_array[:self.nrr]
        self.rrs_array = arr
        self.rrs = <RRRow *><size_t>arr.ctypes.data
        self.rr_cap = cap
        return 0

    def finish(self):
        """Return (messages, rrs, arena bytes, counters dict, hot columns dict: field or
        DERIVED_COLUMNS name -> column) and leave the core empty."""
        self.extract_hot()
        msgs = self.messages_array[:self.nmsg]
        rrs = self.rrs_array[:self.nrr]
        arena = ar_take(&self.arena)
        self.rr_rows_last = self.nrr
        counters = {COUNTER_NAMES[i]: self.counters[i] for i in range(N_COUNTERS)}
        columns = {name: column[:self.nmsg]
                   for name, column in zip(self.hot_names + DERIVED_COLUMNS, self.hot_arrays)
                   if self.count_bailiwick or name != BAILIWICK_COLUMN}
        # The arrays handed out stay valid: the next batch gets fresh ones.
        self.begin(self.msg_cap)
        return msgs, rrs, arena, counters, columns

    # ------------------------------------------------------------ frames

    def add_frames(self, const uint8_t[::1] blob, const uint32_t[:, ::1] meta,
                   int linktype, uint64_t first_frame):
        """Decode a next_batch() blob; return the indexes of frames needing reassembly."""
        cdef Py_ssize_t n = meta.shape[0], i
        cdef PacketInfo infos[2]
        cdef PacketInfo *pi
        cdef QnameProbe probes[2]
        cdef const uint8_t *payloads[2]
        cdef double stamps[2]
        cdef uint64_t frames[2]
        cdef int cur = 0
        cdef bint waiting = 0
        cdef uint32_t off, caplen
        cdef int r
        cdef list slow = []
        cdef bint dedup = self.seen != NULL
        if meta.shape[1] != 4:
            raise ValueError("meta must have 4 columns (sec, usec, offset, caplen)")
        if self.nmsg + <size_t>n > self.msg_cap:
            self.grow_msgs(self.nmsg + n)
        # Each message is parsed once the next one is decoded and its question name's
        # cache slot requested (QnameProbe): two messages in flight, the older parsed.
        for i in range(n):
            off = meta[i, 2]
            caplen = meta[i, 3]
            if <size_t>off + caplen > <size_t>blob.shape[0]:
                raise ValueError("frame %d lies outside the blob" % i)
            if i + FRAME_PREFETCH < n and <size_t>meta[i + FRAME_PREFETCH, 2] + 128 <= <size_t>blob.shape[0]:
                # the headers and question of a frame a few ahead: decoding a frame began
                # with a wait for its first bytes
                DNS_PREFETCH(&blob[0] + meta[i + FRAME_PREFETCH, 2])
                DNS_PREFETCH(&blob[0] + meta[i + FRAME_PREFETCH, 2] + 64)
            self.counters[C_PACKETS] += 1
            self.counters[C_BYTES] += caplen
            pi = &infos[cur]
            r = self.decode_frame(&blob[0] + off if caplen else NULL, caplen, linktype, pi)
            if r <= 0:
                continue
            if pi.slow:
                self.counters[C_SLOW_PATH] += 1
                slow.append(i)
                continue
            self.counters[C_DNS_UDP] += 1
            if pi.payload_len == 0:
                self.counters[C_EMPTY_PAYLOAD] += 1
                continue
            payloads[cur] = &blob[0] + off + pi.payload_off
            stamps[cur] = meta[i, 0] + meta[i, 1] * 1e-6
            if dedup and self.seen_twice(payloads[cur], pi, stamps[cur]):
                self.counters[C_DUPLICATE_FRAMES] += 1
                continue
            frames[cur] = first_frame + i
            self.probe_qname(payloads[cur], pi.payload_len, &probes[cur])
            cur = 1 - cur
            if waiting:
                self.parse_into(payloads[cur], infos[cur].payload_len, stamps[cur], frames[cur], &infos[cur],
                                &probes[cur])
                if self.nhot and self.nmsg - self.nextracted >= HOT_CHUNK:
                    self.extract_hot()
            waiting = 1
        if waiting:
            cur = 1 - cur
            self.parse_into(payloads[cur], infos[cur].payload_len, stamps[cur], frames[cur], &infos[cur],
                            &probes[cur])
        self.extract_hot()
        return slow

    def add_message(self, const uint8_t[::1] payload, double ts, uint64_t frame,
                    int ip_version, const uint8_t[::1] src, const uint8_t[::1] dst,
                    int sport, int dport, int transport, uint64_t extra_anomalies=0, int ip_ttl=0):
        """Parse one reassembled DNS message (no TCP length prefix) into the batch."""
        cdef PacketInfo pi
        if src.shape[0] != 16 or dst.shape[0] != 16:
            raise ValueError("addresses must be 16 bytes (IPv4 mapped into IPv6)")
        memcpy(pi.src, &src[0], 16)
        memcpy(pi.dst, &dst[0], 16)
        pi.sport = sport
        pi.dport = dport
        pi.ip_version = ip_version
        pi.ip_ttl = <uint8_t>ip_ttl
        pi.transport = transport
        pi.anomalies = extra_anomalies
        if self.nmsg + 1 > self.msg_cap:
            self.grow_msgs(self.nmsg + 1)
        if payload.shape[0] == 0:
            self.counters[C_EMPTY_PAYLOAD] += 1
            return
        self.parse_into(&payload[0], payload.shape[0], ts, frame, &pi, NULL)

    cdef int decode_frame(self, const uint8_t *pkt, uint32_t caplen, int linktype,
                          PacketInfo *pi) noexcept:
        """Link layer of one frame; returns 1 when a DNS payload was found."""
        cdef uint32_t off = 0
        cdef uint32_t fam
        if linktype == 1:
            return self.decode_ether(pkt, caplen, 0, pi, 0)
        if linktype == 0 or linktype == 108:
            if caplen < 4:
                self.counters[C_LINK_TRUNCATED] += 1
                return 0
            if linktype == 108:
                fam = (<uint32_t>pkt[0] << 24) | (<uint32_t>pkt[1] << 16) | (<uint32_t>pkt[2] << 8) | pkt[3]
            else:
                fam = (<uint32_t>pkt[3] << 24) | (<uint32_t>pkt[2] << 16) | (<uint32_t>pkt[1] << 8) | pkt[0]
                if fam > 0xFFFF:
                    fam = (<uint32_t>pkt[0] << 24) | (<uint32_t>pkt[1] << 16) | (<uint32_t>pkt[2] << 8) | pkt[3]
            if fam == 2:
                return self.decode_ipv4(pkt, caplen, 4, pi, 0)
            if fam == 24 or fam == 28 or fam == 30 or fam == 10:
                return self.decode_ipv6(pkt, caplen, 4, pi, 0)
            self.counters[C_NOT_IP] += 1
            return 0
        if linktype == 12 or linktype == 14 or linktype == 101:
            if caplen < 1:
                self.counters[C_LINK_TRUNCATED] += 1
                return 0
            if pkt[0] >> 4 == 4:
                return self.decode_ipv4(pkt, caplen, 0, pi, 0)
            if pkt[0] >> 4 == 6:
                return self.decode_ipv6(pkt, caplen, 0, pi, 0)
            self.counters[C_NOT_IP] += 1
            return 0
        if linktype == 228:
            return self.decode_ipv4(pkt, caplen, 0, pi, 0)
        if linktype == 229:
            return self.decode_ipv6(pkt, caplen, 0, pi, 0)
        if linktype == 113:
            if caplen < 16:
                self.counters[C_LINK_TRUNCATED] += 1
                return 0
            return self.decode_ethertype(pkt, caplen, 16, be16(pkt + 14), pi, 0)
        if linktype == 276:
            if caplen < 20:
                self.counters[C_LINK_TRUNCATED] += 1
                return 0
            return self.decode_ethertype(pkt, caplen, 20, be16(pkt), pi, 0)
        if linktype == 10:
            # FDDI: frame control, two MACs, then an LLC/SNAP header carrying the ethertype.
            if caplen < 21 or pkt[13] != 0xAA or pkt[14] != 0xAA or pkt[15] != 3:
                self.counters[C_NOT_IP] += 1
                return 0
            return self.decode_ethertype(pkt, caplen, 21, be16(pkt + 19), pi, 0)
        self.counters[C_NOT_IP] += 1
        return 0

    cdef int decode_ether(self, const uint8_t *pkt, uint32_t caplen, uint32_t off,
                          PacketInfo *pi, int depth) noexcept:
        cdef uint16_t ethertype
        cdef int tags = 0
        if off + 14 > caplen:
            self.counters[C_LINK_TRUNCATED] += 1
            return 0
        ethertype = be16(pkt + off + 12)
        off += 14
        while (ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100) and tags < MAX_VLAN_TAGS:
            if off + 4 > caplen:
                self.counters[C_LINK_TRUNCATED] += 1
                return 0
            ethertype = be16(pkt + off + 2)
            off += 4
            tags += 1
        return self.decode_ethertype(pkt, caplen, off, ethertype, pi, depth)

    cdef int decode_ethertype(self, const uint8_t *pkt, uint32_t caplen, uint32_t off,
                              uint16_t ethertype, PacketInfo *pi, int depth) noexcept:
        if ethertype == 0x0800:
            return self.decode_ipv4(pkt, caplen, off, pi, depth)
        if ethertype == 0x86DD:
            return self.decode_ipv6(pkt, caplen, off, pi, depth)
        self.counters[C_NOT_IP] += 1
        return 0

    cdef int decode_ipv4(self, const uint8_t *pkt, uint32_t caplen, uint32_t off,
                         PacketInfo *pi, int depth) noexcept:
        cdef uint32_t ihl, total, avail, frag
        if off + 20 > caplen or (pkt[off] >> 4) != 4:
            self.counters[C_LINK_TRUNCATED if off + 20 > caplen else C_NOT_IP] += 1
            return 0
        ihl = (pkt[off] & 15) * 4
        total = be16(pkt + off + 2)
        avail = caplen - off
        pi.anomalies = 0
        if ihl < 20 or total < ihl or off + ihl > caplen:
            self.counters[C_NOT_IP] += 1
            return 0
        if total > avail:
            flag(&pi.anomalies, AN_IP_TRUNCATED)
            total = avail
        memset(pi.src, 0, 10)
        pi.src[10] = 0xFF
        pi.src[11] = 0xFF
        memcpy(pi.src + 12, pkt + off + 12, 4)
        memset(pi.dst, 0, 10)
        pi.dst[10] = 0xFF
        pi.dst[11] = 0xFF
        memcpy(pi.dst + 12, pkt + off + 16, 4)
        pi.ip_version = 4
        pi.ip_ttl = pkt[off + 8]
        frag = be16(pkt + off + 6)
        if frag & 0x3FFF:
            if pkt[off + 9] == 17 or pkt[off + 9] == 6:
                pi.slow = 1
                return 1
            self.counters[C_NOT_DNS] += 1
            return 0
        return self.decode_l4(pkt, off + ihl, off + total, pkt[off + 9], pi, depth)

    cdef int decode_ipv6(self, const uint8_t *pkt, uint32_t caplen, uint32_t off,
                         PacketInfo *pi, int depth) noexcept:
        cdef uint32_t plen, end, p
        cdef uint8_t nh
        cdef int hops = 0
        if off + 40 > caplen or (pkt[off] >> 4) != 6:
            self.counters[C_LINK_TRUNCATED if off + 40 > caplen else C_NOT_IP] += 1
            return 0
        pi.anomalies = 0
        plen = be16(pkt + off + 4)
        nh = pkt[off + 6]
        memcpy(pi.src, pkt + off + 8, 16)
        memcpy(pi.dst, pkt + off + 24, 16)
        pi.ip_version = 6
        pi.ip_ttl = pkt[off + 7]
        p = off + 40
        if plen == 0 or plen > caplen - p:
            if plen != 0:
                flag(&pi.anomalies, AN_IP_TRUNCATED)
            plen = caplen - p
        end = p + plen
        while hops < MAX_IPV6_EXT_HEADERS:
            if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140:
                if p + 2 > end:
                    self.counters[C_LINK_TRUNCATED] += 1
                    return 0
                nh, p = pkt[p], p + (pkt[p + 1] + 1) * 8
            elif nh == 51:
                if p + 2 > end:
                    self.counters[C_LINK_TRUNCATED] += 1
                    return 0
                nh, p = pkt[p], p + (pkt[p + 1] + 2) * 4
            elif nh == 44:
                if p + 8 > end:
                    self.counters[C_LINK_TRUNCATED] += 1
                    return 0
                pi.slow = 1
                return 1
            else:
                break
            hops += 1
            if p > end:
                self.counters[C_LINK_TRUNCATED] += 1
                return 0
        return self.decode_l4(pkt, p, end, nh, pi, depth)

    cdef int decode_l4(self, const uint8_t *pkt, uint32_t p, uint32_t end, uint8_t proto,
                       PacketInfo *pi, int depth) noexcept:
        cdef uint16_t sport, dport, ulen
        cdef uint32_t avail = end - p, optlen
        pi.slow = 0
        if proto == 17:
            if avail < 8:
                self.counters[C_LINK_TRUNCATED] += 1
                return 0
            sport = be16(pkt + p)
            dport = be16(pkt + p + 2)
            if not (self.dns_port(sport) or self.dns_port(dport)):
                if depth < MAX_ENCAP_DEPTH:
                    if dport == 4789 and avail >= 16:
                        return self.decode_ether(pkt, end, p + 16, pi, depth + 1)
                    if dport == 6081 and avail >= 16:
                        optlen = (pkt[p + 8] & 0x3F) * 4
                        if avail >= 16 + optlen:
                            if be16(pkt + p + 10) == 0x6558:
                                return self.decode_ether(pkt, end, p + 16 + optlen, pi, depth + 1)
                            return self.decode_ethertype(pkt, end, p + 16 + optlen,
                                                         be16(pkt + p + 10), pi, depth + 1)
                self.counters[C_NOT_DNS] += 1
                return 0
            ulen = be16(pkt + p + 4)
            if ulen < 8:
                self.counters[C_NOT_DNS] += 1
                return 0
            if ulen > avail:
                if not (pi.anomalies >> AN_IP_TRUNCATED) & 1:
                    flag(&pi.anomalies, AN_UDP_LENGTH_MISMATCH)
                ulen = avail
            elif ulen < avail:
                flag(&pi.anomalies, AN_UDP_LENGTH_MISMATCH)
            pi.sport = sport
            pi.dport = dport
            pi.transport = 17
            pi.payload_off = p + 8
            pi.payload_len = ulen - 8
            return 1
        if proto == 6:
            if avail < 20:
                self.counters[C_LINK_TRUNCATED] += 1
                return 0
            sport = be16(pkt + p)
            dport = be16(pkt + p + 2)
            if not (self.dns_port(sport) or self.dns_port(dport)):
                self.counters[C_NOT_DNS] += 1
                return 0
            optlen = (pkt[p + 12] >> 4) * 4
            if optlen < 20 or optlen > avail:
                self.counters[C_LINK_TRUNCATED] += 1
                return 0
            pi.slow = 1
            return 1
        self.counters[C_NOT_DNS] += 1
        return 0

    # ------------------------------------------------------------ DNS

    cdef inline uint8_t psl_flags(self, uint64_t reversed_hash) noexcept:
        """The PSL_* flags of one suffix (by the hash of its labels reversed), 0 when absent."""
        return psl_entry_flags(&self.psl_table[0], self.psl_mask, reversed_hash)

    cdef int registered_label(self, NameOut *o) noexcept:
        """Index of the first label of the registered domain (eTLD+1).

        Walks from the last label leftwards, hashing each label once into the
        reversed-suffix hash and probing once per label; the leftmost match
        wins (an exception, else a rule, else a wildcard on the suffix to its
        right), and the walk stops at the first suffix no rule ends with."""
        cdef int n = o.nlabels, i, ps, start
        cdef uint32_t k, end
        cdef uint64_t h = <uint64_t>FNV_OFFSET
        cdef uint8_t f, right = 0
        if n == 0 or o.text_full:
            return 0
        start = n - PSL_MAX_LABELS if n > PSL_MAX_LABELS else 0
        ps = n - 1
        end = o.text_len
        i = n - 1
        while i >= start:
            if i < n - 1:
                h = fnv_step(h, 46)       # '.'
            for k in range(o.label_text_start[i], end):
                h = fnv_step(h, <uint8_t>o.text[k])
            f = self.psl_flags(h)
            if f & PSL_EXCEPTION:
                ps = i + 1
            elif f & PSL_RULE:
                ps = i
            elif right & PSL_WILDCARD:
                ps = i
            if f == 0:
                break
            right = f
            end = o.label_text_start[i] - 1     # the '.' before label i
            i -= 1
        return ps - 1 if ps >= 1 else 0

    cdef void remember_name(self, uint32_t text_off) noexcept:
        """Offer each in-place suffix of the clean name just read (its text at
        text_off in the arena) to later pointers of this message."""
        cdef NameOut *o = &self.name
        cdef int i, k
        for i in range(o.inplace_labels):
            if self.ncache >= NAME_CACHE:
                return
            k = self.ncache
            self.cache_wire[k] = o.label_wire[i]
            self.cache_off[k] = text_off + o.label_text_start[i]
            self.cache_len[k] = <uint16_t>(o.text_len - o.label_text_start[i])
            self.cache_hops[k] = o.hops
            self.cache_labels[k] = <uint8_t>(o.nlabels - i)
            self.ncache += 1

    cdef int put_name(self, Cursor *c, uint64_t *anom, bint share=0) except -2:
        """Append the name at the cursor to the arena; -1 when the cursor is lost.
        With `share`, a name this message already decoded is not copied: returns 1
        with its text's span in shared_off and shared_len (a record's owner name,
        whose span need not follow the text before it)."""
        cdef uint32_t p = c.pos, target, off
        cdef uint64_t found = 0
        cdef int i
        if p + 2 <= c.end and (c.msg[p] & 0xC0) == 0xC0:
            target = (<uint32_t>(c.msg[p] & 0x3F) << 8) | c.msg[p + 1]
            if target < p:
                # A clean name decoded from `target` decodes the same way through
                # this pointer: same backward rule, one more hop.
                for i in range(self.ncache):
                    if self.cache_wire[i] == target:
                        if self.cache_hops[i] >= self.max_pointer_hops:
                            break
                        self.name.nlabels = self.cache_labels[i]
                        c.pos = p + 2
                        if share:
                            self.shared_off = self.cache_off[i]
                            self.shared_len = self.cache_len[i]
                            return 1
                        ar_reserve(&self.arena, self.cache_len[i])
                        memcpy(self.arena.buf + self.arena.len,
                               self.arena.buf + self.cache_off[i], self.cache_len[i])
                        self.arena.len += self.cache_len[i]
                        return 0
        off = <uint32_t>self.arena.len
        ar_reserve(&self.arena, NAME_TEXT_CAP + 8)
        self.name.text = self.arena.buf + off
        i = read_name(c, &self.name, &found, self.max_pointer_hops, 0)
        anom[0] |= found
        if i < 0:
            return -1
        self.arena.len += self.name.text_len
        if found == 0:
            self.remember_name(off)
        return 0

    cdef int put_type(self, uint16_t t) except -1:
        if t < 300 and self.type_mnemonic[t] != NULL:
            return ar_put(&self.arena, self.type_mnemonic[t], self.type_mnemonic_len[t])
        if t == 32768:
            return ar_put(&self.arena, b"TA", 2)
        if t == 32769:
            return ar_put(&self.arena, b"DLV", 3)
        ar_put(&self.arena, b"TYPE", 4)
        return ar_put_uint(&self.arena, t)

    cdef int put_tsig_error(self, uint16_t code) except -1:
        if code < TSIG_ERROR_CODES and self.tsig_error_mnemonic[code] != NULL:
            return ar_put(&self.arena, self.tsig_error_mnemonic[code], self.tsig_error_mnemonic_len[code])
        return ar_put_uint(&self.arena, code)

    cdef int put_sized_b64(self, Cursor *c) except -2:
        """A 16-bit length, then that many bytes: 'length base64' (base64 left out when empty)."""
        cdef uint16_t n = rd16(c)
        if c.short or c.pos + n > c.end:
            c.short = 1
            return 1
        ar_put_uint(&self.arena, n)
        if n:
            ar_putc(&self.arena, 32)
            ar_put_b64(&self.arena, c.msg + c.pos, n)
        c.pos += n
        return 0

    cdef int put_code_error_data(self, Cursor *c) except -2:
        """TSIG's original id or TKEY's mode, the error, then sized data: 'n ERROR length base64'."""
        ar_put_uint(&self.arena, rd16(c))
        ar_putc(&self.arena, 32)
        self.put_tsig_error(rd16(c))
        ar_putc(&self.arena, 32)
        if c.short:
            return 1
        return self.put_sized_b64(c)

    cdef int put_type_bitmap(self, Cursor *c) except -2:
        cdef uint8_t window, blen, byte
        cdef int i, bit
        while c.pos < c.end:
            window = rd8(c)
            blen = rd8(c)
            if c.short or blen == 0 or blen > 32:
                return 1
            if c.pos + blen > c.end:
                c.short = 1
                return 1
            for i in range(blen):
                byte = c.msg[c.pos + i]
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        ar_putc(&self.arena, 32)
                        self.put_type(<uint16_t>(window * 256 + i * 8 + bit))
            c.pos += blen
        return 0

    cdef int put_svc_key(self, uint16_t key) except -1:
        if key == 0:
            return ar_put(&self.arena, b"mandatory", 9)
        if key == 1:
            return ar_put(&self.arena, b"alpn", 4)
        if key == 2:
            return ar_put(&self.arena, b"no-default-alpn", 15)
        if key == 3:
            return ar_put(&self.arena, b"port", 4)
        if key == 4:
            return ar_put(&self.arena, b"ipv4hint", 8)
        if key == 5:
            return ar_put(&self.arena, b"ech", 3)
        if key == 6:
            return ar_put(&self.arena, b"ipv6hint", 8)
        if key == 7:
            return ar_put(&self.arena, b"dohpath", 7)
        ar_put(&self.arena, b"key", 3)
        return ar_put_uint(&self.arena, key)

    cdef int put_svcb(self, Cursor *c, uint64_t *anom) except -2:
        cdef uint16_t key, vlen, k
        cdef uint32_t vend, i
        cdef uint8_t l
        ar_put_uint(&self.arena, rd16(c))
        ar_putc(&self.arena, 32)
        if c.short or self.put_name(c, anom) < 0:
            return 1
        while c.pos < c.end:
            key = rd16(c)
            vlen = rd16(c)
            if c.short or c.pos + vlen > c.end:
                return 1
            vend = c.pos + vlen
            ar_putc(&self.arena, 32)
            self.put_svc_key(key)
            if key == 2:
                if vlen != 0:
                    c.pos = c.end
                    return 1
                continue
            ar_putc(&self.arena, 61)
            if key == 0:
                if vlen % 2:
                    c.pos = c.end
                    return 1
                i = 0
                while c.pos < vend:
                    if i:
                        ar_putc(&self.arena, 44)
                    self.put_svc_key(rd16(c))
                    i += 1
            elif key == 1:
                i = 0
                while c.pos < vend:
                    l = c.msg[c.pos]
                    if l == 0 or c.pos + 1 + l > vend:
                        c.pos = c.end
                        return 1
                    if i:
                        ar_putc(&self.arena, 44)
                    ar_put_text_bytes(&self.arena, c.msg + c.pos + 1, l, 0)
                    c.pos += 1 + l
                    i += 1
            elif key == 3:
                if vlen != 2:
                    c.pos = c.end
                    return 1
                ar_put_uint(&self.arena, rd16(c))
            elif key == 4 or key == 6:
                k = 4 if key == 4 else 16
                if vlen == 0 or vlen % k:
                    c.pos = c.end
                    return 1
                i = 0
                while c.pos < vend:
                    if i:
                        ar_putc(&self.arena, 44)
                    ar_put_ip(&self.arena, c.msg + c.pos, 4 if key == 4 else 6)
                    c.pos += k
                    i += 1
            elif key == 5:
                ar_put_b64(&self.arena, c.msg + c.pos, vlen)
                c.pos = vend
            else:
                ar_put_hex(&self.arena, c.msg + c.pos, vlen)
                c.pos = vend
        return 0

    cdef int put_opt(self, Cursor *c, MessageRow *row, uint32_t ttl, uint16_t rclass) except -2:
        """EDNS OPT record: fills the row's EDNS columns and renders the options."""
        cdef uint16_t code, olen, family
        cdef uint8_t src_prefix, scope
        cdef uint8_t addr[16]
        cdef uint32_t alen, vend
        cdef bint first = 1
        cdef char *t
        cdef int n
        row.edns = 1
        row.edns_udp_size = rclass
        row.edns_version = (ttl >> 16) & 0xFF
        row.edns_do = (ttl >> 15) & 1
        row.rcode = (row.rcode & 0xF) | (((ttl >> 24) & 0xFF) << 4)
        # The fixed head in one reservation: every OPT record has it.
        ar_reserve(&self.arena, 48)
        t = self.arena.buf + self.arena.len
        memcpy(t, b"udp=", 4)
        n = 4 + put_uint(t + 4, rclass)
        memcpy(t + n, b" version=", 9)
        n += 9 + put_uint(t + n + 9, row.edns_version)
        memcpy(t + n, b" do=", 4)
        t[n + 4] = <char>(48 + row.edns_do)
        memcpy(t + n + 5, b" ext_rcode=", 11)
        n += 16 + put_uint(t + n + 16, (ttl >> 24) & 0xFF)
        self.arena.len += n
        while c.pos < c.end:
            code = rd16(c)
            olen = rd16(c)
            if c.short or c.pos + olen > c.end:
                flag(&row.anomalies, AN_EDNS_BAD_OPTION)
                c.short = 0
                c.pos = c.end
                return 0
            vend = c.pos + olen
            ar_putc(&self.arena, 32)
            if code == 8:
                row.edns_options |= 1
                family = rd16(c)
                src_prefix = rd8(c)
                scope = rd8(c)
                alen = vend - c.pos if c.pos <= vend else 0
                if (olen < 4 or not (family == 1 or family == 2)
                        or src_prefix > (32 if family == 1 else 128)
                        or alen != <uint32_t>((src_prefix + 7) // 8)):
                    flag(&row.anomalies, AN_EDNS_BAD_OPTION)
                    c.short = 0
                    c.pos = vend - olen
                    ar_put(&self.arena, b"ecs=", 4)
                    ar_put_hex(&self.arena, c.msg + c.pos, olen)
                    c.pos = vend
                    continue
                row.ecs_prefix = src_prefix
                memset(addr, 0, 16)
                memcpy(addr, c.msg + c.pos, alen)
                c.pos = vend
                ar_put(&self.arena, b"ecs=", 4)
                ar_put_ip(&self.arena, addr, 4 if family == 1 else 6)
                ar_putc(&self.arena, 47)
                ar_put_uint(&self.arena, src_prefix)
                ar_putc(&self.arena, 47)
                ar_put_uint(&self.arena, scope)
            elif code == 10:
                row.edns_options |= 2
                ar_put(&self.arena, b"cookie=", 7)
                ar_put_hex(&self.arena, c.msg + c.pos, olen)
            elif code == 3:
                row.edns_options |= 4
                ar_put(&self.arena, b"nsid=", 5)
                ar_put_hex(&self.arena, c.msg + c.pos, olen)
            elif code == 15:
                row.edns_options |= 8
                ar_put(&self.arena, b"ede=", 4)
                if olen < 2:
                    flag(&row.anomalies, AN_EDNS_BAD_OPTION)
                    ar_put_hex(&self.arena, c.msg + c.pos, olen)
                else:
                    row.ede_code = be16(c.msg + c.pos)
                    ar_put_uint(&self.arena, <uint32_t>row.ede_code)
                    if olen > 2:
                        ar_putc(&self.arena, 58)
                        ar_put_text_bytes(&self.arena, c.msg + c.pos + 2, olen - 2, 1)
            elif code == 12:
                row.edns_options |= 16
                ar_put(&self.arena, b"padding=", 8)
                ar_put_uint(&self.arena, olen)
            elif code == 11:
                row.edns_options |= 32
                ar_put(&self.arena, b"keepalive", 9)
                if olen == 2:
                    ar_putc(&self.arena, 61)
                    ar_put_uint(&self.arena, be16(c.msg + c.pos))
                elif olen != 0:
                    flag(&row.anomalies, AN_EDNS_BAD_OPTION)
            else:
                row.edns_options |= 64
                ar_put(&self.arena, b"opt", 3)
                ar_put_uint(&self.arena, code)
                ar_putc(&self.arena, 61)
                ar_put_hex(&self.arena, c.msg + c.pos, olen)
            c.pos = vend
        return 0

    cdef int put_rdata(self, Cursor *c, uint16_t rtype, uint64_t *anom) except -2:
        """Render rdata in presentation form; 0 ok, 1 content invalid (short reads set c.short)."""
        cdef uint32_t n = c.end - c.pos
        cdef uint32_t i
        cdef uint8_t l
        cdef uint64_t signed_hi
        cdef Arena *a = &self.arena
        if rtype == 1:
            if n != 4:
                c.short = 1
                return 1
            ar_put_ip(a, c.msg + c.pos, 4)
            c.pos += 4
        elif rtype == 28:
            if n != 16:
                c.short = 1
                return 1
            ar_put_ip(a, c.msg + c.pos, 6)
            c.pos += 16
        elif rtype == 2 or rtype == 5 or rtype == 12 or rtype == 39 or (3 <= rtype <= 4) or (7 <= rtype <= 9):
            if self.put_name(c, anom) < 0:
                return 1
        elif rtype == 15 or rtype == 18 or rtype == 21 or rtype == 36:
            ar_put_uint(a, rd16(c))
            ar_putc(a, 32)
            if c.short or self.put_name(c, anom) < 0:
                return 1
        elif rtype == 6 or rtype == 17:
            # SOA and RP both start with two names (RP is only those)
            if self.put_name(c, anom) < 0:
                return 1
            ar_putc(a, 32)
            if self.put_name(c, anom) < 0:
                return 1
            if rtype == 6:
                for i in range(5):
                    ar_putc(a, 32)
                    ar_put_uint(a, rd32(c))
        elif rtype == 16 or rtype == 99 or rtype == 13:
            i = 0
            while c.pos < c.end:
                l = c.msg[c.pos]
                if c.pos + 1 + l > c.end:
                    c.short = 1
                    return 1
                if i:
                    ar_putc(a, 32)
                ar_put_text_bytes(a, c.msg + c.pos + 1, l, 1)
                c.pos += 1 + l
                i += 1
        elif rtype == 33:
            for i in range(3):
                ar_put_uint(a, rd16(c))
                ar_putc(a, 32)
            if c.short or self.put_name(c, anom) < 0:
                return 1
        elif rtype == 35:
            ar_put_uint(a, rd16(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd16(c))
            for i in range(3):
                ar_putc(a, 32)
                l = rd8(c)
                if c.short or c.pos + l > c.end:
                    c.short = 1
                    return 1
                ar_put_text_bytes(a, c.msg + c.pos, l, 1)
                c.pos += l
            ar_putc(a, 32)
            if self.put_name(c, anom) < 0:
                return 1
        elif rtype == 257:
            ar_put_uint(a, rd8(c))
            ar_putc(a, 32)
            l = rd8(c)
            if c.short or c.pos + l > c.end:
                c.short = 1
                return 1
            ar_put_text_bytes(a, c.msg + c.pos, l, 0)
            c.pos += l
            ar_putc(a, 32)
            ar_put_text_bytes(a, c.msg + c.pos, c.end - c.pos, 1)
            c.pos = c.end
        elif rtype == 25 or rtype == 48 or rtype == 60:
            ar_put_uint(a, rd16(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd8(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd8(c))
            if c.short:
                return 1
            ar_putc(a, 32)
            ar_put_b64(a, c.msg + c.pos, c.end - c.pos)
            c.pos = c.end
        elif rtype == 43 or rtype == 59 or rtype == 32768 or rtype == 32769:
            ar_put_uint(a, rd16(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd8(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd8(c))
            if c.short:
                return 1
            ar_putc(a, 32)
            ar_put_hex(a, c.msg + c.pos, c.end - c.pos)
            c.pos = c.end
        elif rtype == 44 or rtype == 52 or rtype == 53:
            for i in range(2 if rtype == 44 else 3):
                ar_put_uint(a, rd8(c))
                ar_putc(a, 32)
            if c.short:
                return 1
            ar_put_hex(a, c.msg + c.pos, c.end - c.pos)
            c.pos = c.end
        elif rtype == 46 or rtype == 24:
            self.put_type(rd16(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd8(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd8(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd32(c))
            ar_putc(a, 32)
            ar_put_time(a, rd32(c))
            ar_putc(a, 32)
            ar_put_time(a, rd32(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd16(c))
            ar_putc(a, 32)
            if c.short or self.put_name(c, anom) < 0:
                return 1
            ar_putc(a, 32)
            ar_put_b64(a, c.msg + c.pos, c.end - c.pos)
            c.pos = c.end
        elif rtype == 47:
            if self.put_name(c, anom) < 0:
                return 1
            return self.put_type_bitmap(c)
        elif rtype == 50 or rtype == 51:
            ar_put_uint(a, rd8(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd8(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd16(c))
            ar_putc(a, 32)
            l = rd8(c)
            if c.short or c.pos + l > c.end:
                c.short = 1
                return 1
            if l == 0:
                ar_putc(a, 45)
            else:
                ar_put_hex(a, c.msg + c.pos, l)
            c.pos += l
            if rtype == 50:
                l = rd8(c)
                if c.short or c.pos + l > c.end:
                    c.short = 1
                    return 1
                ar_putc(a, 32)
                ar_put_b32hex(a, c.msg + c.pos, l)
                c.pos += l
                return self.put_type_bitmap(c)
        elif rtype == 64 or rtype == 65:
            return self.put_svcb(c, anom)
        elif rtype == 29:
            return self.put_loc(c)
        elif rtype == 108 or rtype == 109:
            if n != (6 if rtype == 108 else 8):
                c.short = 1
                return 1
            ar_put_eui(a, c.msg + c.pos, n)
            c.pos = c.end
        elif rtype == 250:
            if self.put_name(c, anom) < 0:
                return 1
            # time signed (48 bits), fudge, MAC, original id, error, other data
            ar_putc(a, 32)
            signed_hi = rd16(c)
            ar_put_uint(a, (signed_hi << 32) | rd32(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd16(c))
            ar_putc(a, 32)
            if c.short or self.put_sized_b64(c):
                return 1
            ar_putc(a, 32)
            if self.put_code_error_data(c):
                return 1
        elif rtype == 249:
            if self.put_name(c, anom) < 0:
                return 1
            # inception, expiration, mode, error, key data, other data
            ar_putc(a, 32)
            ar_put_time(a, rd32(c))
            ar_putc(a, 32)
            ar_put_time(a, rd32(c))
            ar_putc(a, 32)
            if self.put_code_error_data(c):
                return 1
            ar_putc(a, 32)
            if self.put_sized_b64(c):
                return 1
        elif rtype == 256:
            ar_put_uint(a, rd16(c))
            ar_putc(a, 32)
            ar_put_uint(a, rd16(c))
            if c.short:
                return 1
            ar_putc(a, 32)
            ar_put_text_bytes(a, c.msg + c.pos, c.end - c.pos, 1)
            c.pos = c.end
        else:
            self.put_generic(c)
        return 0

    cdef int put_loc(self, Cursor *c) except -2:
        """RFC 1876 version 0, as BIND writes it: 'D M S.fff N D M S.fff E altm sizem hpm vpm'.
        Other versions are unknown formats: RFC 3597 form, no anomaly."""
        cdef Arena *a = &self.arena
        cdef uint8_t size, hp, vp
        cdef uint32_t lat, lon, alt
        if c.pos < c.end and c.msg[c.pos] != 0:
            return self.put_generic(c)
        if c.end - c.pos != 16:
            c.short = 1
            return 1
        c.pos += 1
        size = rd8(c)
        hp = rd8(c)
        vp = rd8(c)
        lat = rd32(c)
        lon = rd32(c)
        alt = rd32(c)
        if not (loc_precision_valid(size) and loc_precision_valid(hp) and loc_precision_valid(vp)):
            return 1
        if ar_put_loc_angle(a, lat, 90, 78, 83):
            return 1
        ar_putc(a, 32)
        if ar_put_loc_angle(a, lon, 180, 69, 87):
            return 1
        ar_putc(a, 32)
        # altitude in cm above 100 000 m below the WGS 84 reference spheroid
        if alt < LOC_ALTITUDE_ORIGIN:
            ar_putc(a, 45)
            ar_put_decimal(a, LOC_ALTITUDE_ORIGIN - alt, 2)
        else:
            ar_put_decimal(a, alt - LOC_ALTITUDE_ORIGIN, 2)
        ar_putc(a, 109)
        ar_putc(a, 32)
        ar_put_loc_precision(a, size)
        ar_putc(a, 32)
        ar_put_loc_precision(a, hp)
        ar_putc(a, 32)
        ar_put_loc_precision(a, vp)
        return 0

    cdef int put_generic(self, Cursor *c) except -1:
        """RFC 3597 form: \\# <length> <hex>."""
        cdef uint32_t n = c.end - c.pos
        ar_put(&self.arena, b"\\# ", 3)
        ar_put_uint(&self.arena, n)
        if n:
            ar_putc(&self.arena, 32)
            ar_put_hex(&self.arena, c.msg + c.pos, n)
        c.pos = c.end
        return 0

    cdef int parse_into(self, const uint8_t *p, uint32_t n, double ts, uint64_t frame,
                        PacketInfo *pi, QnameProbe *probe) except -1:
        cdef MessageRow *row = &self.msgs[self.nmsg]
        cdef Cursor c
        cdef RRRow *rr
        cdef uint16_t counts[3]
        cdef int section, k, q, total = 0
        cdef uint16_t rtype, rclass, rdlen
        cdef uint32_t ttl, name_off, rd_start, mark, name_start = 0
        cdef int names_mark
        cdef int r, slot = 0
        cdef uint64_t found
        cdef bint opt_seen = 0, stop = 0
        # The lines of the message row, record rows and arena bytes a few messages on,
        # fetched before they are written. Each is a stream of stores into memory the batch
        # has just taken (in no cache), interleaved with the others and the frames, and a
        # store waiting for its line held the parse up: a sixth of parse_into's samples sat
        # on one load, of section counts just stored in the row. About 62 arena bytes and
        # 1.85 record rows (52 bytes) a message on the bench capture: two lines of each, and
        # the row's three. Parsing it: 243-248 ms instead of 266-276 (interleaved rounds,
        # best two of six passes each). Written out here: as a cdef function of its own,
        # the C compiler took it for one without effect and dropped the call.
        cdef char *ahead
        if self.nmsg + WRITE_AHEAD_ROWS < self.msg_cap:
            ahead = <char *>&self.msgs[self.nmsg + WRITE_AHEAD_ROWS]
            DNS_PREFETCH(ahead)
            DNS_PREFETCH(ahead + 64)
            DNS_PREFETCH(ahead + 128)
        if self.nrr + WRITE_AHEAD_RRS + 5 <= self.rr_cap:         # 5 rows: 140 bytes
            ahead = <char *>&self.rrs[self.nrr + WRITE_AHEAD_RRS]
            DNS_PREFETCH(ahead)
            DNS_PREFETCH(ahead + 64)
        if self.arena.len + WRITE_AHEAD_ARENA + 128 <= self.arena.cap:
            ahead = self.arena.buf + self.arena.len + WRITE_AHEAD_ARENA
            DNS_PREFETCH(ahead)
            DNS_PREFETCH(ahead + 64)
        self.nmsg += 1
        self.ncache = 0
        self.counters[C_MESSAGES] += 1
        zero_row(row)
        row.ts = ts
        row.frame = frame
        memcpy(row.src, pi.src, 16)
        memcpy(row.dst, pi.dst, 16)
        row.sport = pi.sport
        row.dport = pi.dport
        row.ip_version = pi.ip_version
        row.ip_ttl = pi.ip_ttl
        row.transport = pi.transport
        row.anomalies = pi.anomalies
        row.size = n
        row.min_ttl = -1
        row.ede_code = -1
        row.rr_start = <uint32_t>self.nrr
        row.qname_off = <uint32_t>self.arena.len
        c.msg = p
        c.msg_len = n
        c.pos = 0
        c.end = n
        c.short = 0
        if n < 12:
            flag(&row.anomalies, AN_HEADER_TOO_SHORT)
            flag(&row.anomalies, AN_TRUNCATED)
            row.id = rd16(&c)
            row.flags = rd16(&c)
            row.qr = row.flags >> 15
            row.opcode = (row.flags >> 11) & 15
            row.rcode = row.flags & 15
            return 0
        row.id = rd16(&c)
        row.flags = rd16(&c)
        row.qdcount = rd16(&c)
        row.ancount = rd16(&c)
        row.nscount = rd16(&c)
        row.arcount = rd16(&c)
        row.qr = row.flags >> 15
        row.opcode = (row.flags >> 11) & 15
        row.rcode = row.flags & 15
        if row.flags & 0x40:
            flag(&row.anomalies, AN_Z_BIT_SET)
        if row.opcode == 3 or row.opcode > 6:
            flag(&row.anomalies, AN_INVALID_OPCODE)
        # Only a standard query: an UPDATE's prerequisites, a NOTIFY's SOA and an
        # inverse query's record all sit in the answer section of the request.
        if row.qr == 0 and row.opcode == 0 and row.ancount > 0:
            flag(&row.anomalies, AN_ANSWER_IN_QUERY)
        # questions
        for q in range(row.qdcount):
            if q >= self.max_questions:
                flag(&row.anomalies, AN_TOO_MANY_RECORDS)
                stop = 1
                break
            found = 0
            if q == 0:
                slot = self.cached_qname(&c, row, probe)
                if slot < 0:
                    rtype = rd16(&c)
                    rclass = rd16(&c)
                    if c.short:
                        flag(&row.anomalies, AN_TRUNCATED)
                        stop = 1
                        break
                    row.qtype = rtype
                    row.qclass = rclass & 0x7FFF
                    continue
                name_start = c.pos
            # Read straight into the arena; only the first question's text is kept.
            ar_reserve(&self.arena, NAME_TEXT_CAP + 8)
            self.name.text = self.arena.buf + self.arena.len
            r = read_name(&c, &self.name, &found, self.max_pointer_hops, q == 0)
            row.anomalies |= found
            if r < 0:
                flag(&row.anomalies, AN_TRUNCATED)
                stop = 1
                break
            if q == 0:
                self.qname_features(row)
                if found == 0:
                    self.remember_name(row.qname_off)
                    self.keep_qname(slot, c.msg + name_start, row)
            rtype = rd16(&c)
            rclass = rd16(&c)
            if c.short:
                flag(&row.anomalies, AN_TRUNCATED)
                stop = 1
                break
            if q == 0:
                row.qtype = rtype
                row.qclass = rclass & 0x7FFF
        counts[0] = row.ancount
        counts[1] = row.nscount
        counts[2] = row.arcount
        for section in range(3):
            if stop:
                break
            for k in range(counts[section]):
                if total >= self.max_records:
                    flag(&row.anomalies, AN_TOO_MANY_RECORDS)
                    stop = 1
                    break
                name_off = <uint32_t>self.arena.len
                r = self.put_name(&c, &row.anomalies, 1)
                if r < 0:
                    flag(&row.anomalies, AN_TRUNCATED)
                    self.arena.len = name_off
                    stop = 1
                    break
                rtype = rd16(&c)
                rclass = rd16(&c)
                ttl = rd32(&c)
                rdlen = rd16(&c)
                if c.short or c.pos + rdlen > n:
                    flag(&row.anomalies, AN_TRUNCATED)
                    self.arena.len = name_off
                    stop = 1
                    break
                total += 1
                if self.nrr >= self.rr_cap:
                    self.grow_rrs()
                    row = &self.msgs[self.nmsg - 1]
                rr = &self.rrs[self.nrr]
                self.nrr += 1
                rr.msg = <uint32_t>(self.nmsg - 1)
                if r == 1:
                    rr.name_off = self.shared_off
                    rr.name_len = self.shared_len
                else:
                    rr.name_off = name_off
                    rr.name_len = <uint16_t>(self.arena.len - name_off)
                rr.type = rtype
                rr.rclass = rclass
                rr.ttl = ttl
                rr.section = section + 1
                rr.pad = 0
                rr.rdata_off = <uint32_t>self.arena.len
                rd_start = c.pos
                c.end = c.pos + rdlen
                if rtype == 41:
                    if opt_seen:
                        flag(&row.anomalies, AN_EDNS_MULTIPLE_OPT)
                    if section != 2 or self.name.nlabels != 0:
                        flag(&row.anomalies, AN_EDNS_MISPLACED_OPT)
                    if not opt_seen:
                        self.put_opt(&c, row, ttl, rclass)
                    else:
                        self.put_generic(&c)
                    opt_seen = 1
                else:
                    if section == 0:
                        if row.min_ttl < 0 or ttl < row.min_ttl:
                            row.min_ttl = ttl
                    if ttl > 0x7FFFFFFF:
                        flag(&row.anomalies, AN_TTL_HIGH_BIT)
                    mark = <uint32_t>self.arena.len
                    names_mark = self.ncache
                    if rdlen == 0 and row.opcode == 5 and (rclass == 254 or rclass == 255):
                        # An UPDATE's prerequisites ("RRset exists", "RRset does not exist")
                        # and deletions of whole RRsets carry no rdata (RFC 2136 2.4, 2.5)
                        self.put_generic(&c)
                    else:
                        r = self.put_rdata(&c, rtype, &row.anomalies)
                        if r != 0 or c.short or c.pos != c.end:
                            flag(&row.anomalies, AN_BAD_RDATA if (r == 1 and not c.short and c.pos == c.end) else AN_RDLENGTH_MISMATCH)
                            # The rdata becomes hex over the same arena bytes: names read from
                            # it are gone, and later pointers to them must decode afresh.
                            self.arena.len = mark
                            self.ncache = names_mark
                            c.pos = rd_start
                            c.short = 0
                            self.put_generic(&c)
                rr.rdata_len = <uint32_t>(self.arena.len - rr.rdata_off)
                c.pos = rd_start + rdlen
                c.end = n
                c.short = 0
        if not stop and c.pos < n:
            flag(&row.anomalies, AN_TRAILING_BYTES)
        if row.qdcount != 1 and not question_count_allowed(row):
            flag(&row.anomalies, AN_QDCOUNT_NOT_ONE)
        row.rr_count = <uint32_t>(self.nrr - row.rr_start)
        return 0

    cdef void probe_qname(self, const uint8_t *msg, uint32_t msg_len, QnameProbe *pr) noexcept:
        """Where the question name of this message (at offset 12) would be cached, and
        a request for its two slots' lines; pr.slot (the set's first slot) is
        QNAME_CACHE_SLOTS when the name cannot be kept (compressed, too long, the root,
        or cut short)."""
        cdef uint32_t start = 12, p = 12, n
        cdef uint8_t b, nlabels = 0
        pr.msg = msg
        pr.slot = QNAME_CACHE_SLOTS
        while True:
            if p >= msg_len or p - start >= QNAME_CACHE_WIRE:
                return
            b = msg[p]
            if b == 0:
                break
            if b & 0xC0:
                return
            pr.label_at[nlabels] = <uint8_t>(p - start)
            nlabels += 1
            p += 1 + b
        n = p + 1 - start
        if n > QNAME_CACHE_WIRE or nlabels == 0:      # the root is never kept (keep_qname)
            return
        pr.wire_len = n
        pr.nlabels = nlabels
        pr.slot = <int>(span_hash(msg + start, n) & (QNAME_CACHE_SLOTS // 2 - 1)) * 2
        DNS_PREFETCH(&self.qcache[pr.slot])
        DNS_PREFETCH(&self.qcache[pr.slot + 1])

    cdef int cached_qname(self, Cursor *c, MessageRow *row, QnameProbe *probe) except -2:
        """Fill the row's question name and its features from the cache when the
        name at the cursor (the first question, at offset 12) is there, and step past
        it: returns -1. Otherwise returns the slot the name goes to, the one of its set
        used less recently (QNAME_CACHE_SLOTS when it cannot be kept), leaving the cursor
        where it was. probe: the name's probe_qname(), or NULL to work it out here."""
        cdef const uint8_t *msg = c.msg
        cdef uint32_t start = c.pos, n, off, i
        cdef uint8_t nlabels
        cdef QnameProbe here
        cdef int slot, k
        cdef QnameEntry *e
        cdef char *t
        if probe == NULL or probe.msg != msg:
            self.probe_qname(msg, c.end, &here)
            probe = &here
        if probe.slot >= QNAME_CACHE_SLOTS:
            return QNAME_CACHE_SLOTS
        slot = probe.slot
        n = probe.wire_len
        nlabels = probe.nlabels
        e = &self.qcache[slot]
        if e.wire_len == n and memcmp(e.wire, msg + start, n) == 0:
            if e.recent != 0:
                e.recent = 0
        else:
            e = &self.qcache[slot + 1]
            if e.wire_len != n or memcmp(e.wire, msg + start, n) != 0:
                return slot + 1 - self.qcache[slot].recent     # the slot used less recently
            if self.qcache[slot].recent != 1:
                self.qcache[slot].recent = 1
        self.qname_cache_hits += 1
        # The text: the wire bytes lower-cased, each length byte after the first a dot.
        # A cached name has no bytes to escape, so its text is a copy of the wire bytes
        # that needs lower-casing only where the name has capitals (one in a few).
        off = <uint32_t>self.arena.len
        ar_reserve(&self.arena, n)
        t = self.arena.buf + off
        memcpy(t, msg + start + 1, n - 2)
        if e.uppers:
            for i in range(n - 2):
                t[i] = <char>LOWER[<uint8_t>t[i]]
        for k in range(1, nlabels):
            t[probe.label_at[k] - 1] = 46
        self.arena.len += n - 2
        # The suffixes later pointers of this message may name (as remember_name).
        for k in range(nlabels):
            if self.ncache >= NAME_CACHE:
                break
            i = self.ncache
            self.cache_wire[i] = <uint16_t>(start + probe.label_at[k])
            self.cache_off[i] = off + probe.label_at[k]
            self.cache_len[i] = <uint16_t>(n - 2 - probe.label_at[k])
            self.cache_hops[i] = 0
            self.cache_labels[i] = <uint8_t>(nlabels - k)
            self.ncache += 1
        row.qname_off = off
        row.qname_len = <uint16_t>(n - 2)
        row.name_hash = e.name_hash
        row.labels = e.nlabels
        row.longest_label = e.longest
        row.digits = e.digits
        row.hexchars = e.hexchars
        row.uppers = e.uppers
        row.case_differs = e.uppers > 0
        row.regdom_off = e.regdom_off
        row.entropy = e.entropy
        c.pos = start + n
        return -1

    cdef void keep_qname(self, int slot, const uint8_t *wire, MessageRow *row) noexcept:
        """Put the clean question name just decoded into its cache slot when it
        is in place and has no escaped characters (its text is then its wire
        bytes lower-cased, less the first length byte and the terminator)."""
        cdef NameOut *o = &self.name
        cdef QnameEntry *e
        if (slot >= QNAME_CACHE_SLOTS or o.nlabels == 0 or o.hops != 0
                or o.text_len + 2 != o.wire_len or o.wire_len > QNAME_CACHE_WIRE):
            return
        e = &self.qcache[slot]
        self.qcache[slot & ~1].recent = slot & 1
        e.wire_len = <uint8_t>o.wire_len
        memcpy(e.wire, wire, o.wire_len)
        e.nlabels = o.nlabels
        e.name_hash = row.name_hash
        e.entropy = row.entropy
        e.digits = row.digits
        e.hexchars = row.hexchars
        e.uppers = row.uppers
        e.regdom_off = row.regdom_off
        e.longest = row.longest_label

    cdef int qname_features(self, MessageRow *row) noexcept:
        """Keep the question name just read (its text at the arena's tail) and its features."""
        cdef NameOut *o = &self.name
        cdef uint32_t *hist = self.hist
        cdef uint64_t present[4]        # which byte values occur, as a 256-bit set
        cdef uint64_t bits
        cdef int reg, i, word, ndistinct = 0
        cdef uint32_t nraw
        cdef uint8_t ch
        cdef double ent = 0.0, total
        row.qname_off = <uint32_t>self.arena.len
        row.qname_len = <uint16_t>o.text_len
        self.arena.len += o.text_len
        row.name_hash = o.hash
        row.labels = o.nlabels
        row.longest_label = o.longest
        row.digits = o.digits
        row.hexchars = o.hexchars
        row.uppers = o.uppers
        row.case_differs = o.uppers > 0
        if o.nonprint:
            flag(&row.anomalies, AN_QNAME_NON_PRINTABLE)
        reg = self.registered_label(o)
        row.regdom_off = o.label_text_start[reg] if o.nlabels else 0
        nraw = o.label_raw_start[reg] if o.nlabels else 0
        if nraw:
            present[0] = present[1] = present[2] = present[3] = 0
            for i in range(<int>nraw):
                ch = o.raw[i]
                ndistinct += hist[ch] == 0
                hist[ch] += 1
                present[ch >> 6] |= (<uint64_t>1) << (ch & 63)
            # H = log2(n) - sum(c log2 c) / n, the terms added in ascending byte
            # order as the twin does (float sums are order-sensitive); the set's
            # bits come out in that order.
            total = 0.0
            for word in range(4):
                bits = present[word]
                while bits:
                    ch = <uint8_t>(word * 64 + ctz64(bits))
                    total += COUNT_LOG2[hist[ch]]
                    hist[ch] = 0
                    bits &= bits - 1
            if ndistinct > 1:
                ent = LOG2_OF[nraw] - total / nraw
        row.entropy = <float>ent
        return 0


MESSAGE_ROW_SIZE = sizeof(MessageRow)
if MESSAGE_ROW_SIZE != 19 * 8:
    raise ImportError("MessageRow is %d bytes; zero_row clears 19 words: update both" % MESSAGE_ROW_SIZE)
RR_ROW_SIZE = sizeof(RRRow)
QNAME_CACHE_SETS = QNAME_CACHE_SLOTS // 2      # span_hash(wire name) % this: its set (tests)
if sizeof(QnameEntry) != 128:
    raise ImportError("QnameEntry is %d bytes, not 128: update QNAME_CACHE_PAD" % sizeof(QnameEntry))

# Set by sensor.parse at import, after the sizes above were checked against
# the numpy dtypes generated from sensor/schema.py.
MESSAGE_DTYPE = None
RR_DTYPE = None


def bind_dtypes(message_dtype, rr_dtype):
    global MESSAGE_DTYPE, RR_DTYPE
    if message_dtype.itemsize != sizeof(MessageRow) or rr_dtype.itemsize != sizeof(RRRow):
        raise RuntimeError(
            "schema dtypes (%d, %d bytes) do not match the compiled rows (%d, %d bytes)"
            % (message_dtype.itemsize, rr_dtype.itemsize, sizeof(MessageRow), sizeof(RRRow)))
    MESSAGE_DTYPE = message_dtype
    RR_DTYPE = rr_dtype


def fnv1a64(bytes data):
    """The hash of names (and, over a suffix's labels reversed, the PSL table's key)."""
    cdef uint64_t h = <uint64_t>FNV_OFFSET
    cdef uint8_t b
    for b in data:
        h = fnv_step(h, b)
    return h


def span_hashes(const uint8_t[::1] arena, const uint32_t[::1] offsets, const uint32_t[::1] lengths):
    """span_hash of each arena slice, so names and rdata group as integers, not strings."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef uint32_t end
    cdef const uint8_t *base = &arena[0] if arena.shape[0] else NULL
    if lengths.shape[0] != n:
        raise ValueError("offsets and lengths differ in length")
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    for i in range(n):
        end = offsets[i] + lengths[i]
        if end > <uint32_t>arena.shape[0] or end < offsets[i]:
            raise ValueError("span outside the arena")
        o[i] = span_hash(base + offsets[i], lengths[i])
    return out


def span_texts(const uint8_t[::1] arena, const int64_t[::1] offsets, const int64_t[::1] lengths):
    """The text of each arena slice as a str, in one pass: no bytes object in between.
    The arena's text is ASCII (odd bytes are escaped); anything else raises."""
    cdef Py_ssize_t n = offsets.shape[0], i, size = arena.shape[0]
    cdef const char *base = <const char *>&arena[0] if size else NULL
    cdef list out
    if lengths.shape[0] != n:
        raise ValueError("offsets and lengths differ in length")
    for i in range(n):
        if offsets[i] < 0 or lengths[i] < 0 or offsets[i] + lengths[i] > size:
            raise ValueError("span outside the arena")
    out = [None] * n
    for i in range(n):
        out[i] = PyUnicode_DecodeASCII(base + offsets[i], lengths[i], NULL) if lengths[i] else ""
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def address_texts(const uint8_t[:, ::1] addresses):
    """16-byte address keys (one per row) as text, IPv4-mapped ones in dotted form: what
    sensor.parse.batch.address_text gives for one, for a whole table at once."""
    cdef Py_ssize_t n = addresses.shape[0], i
    if n and addresses.shape[1] != 16:
        raise ValueError("addresses must be 16 bytes each")
    cdef Arena text
    text.buf, text.len, text.cap, text.owner = NULL, 0, 0, NULL
    cdef const uint8_t *p
    out = [None] * n
    try:
        for i in range(n):
            p = &addresses[i, 0]
            text.len = 0
            if memcmp(p, V4_MAPPED_PREFIX, 12) == 0:
                ar_put_ip(&text, p + 12, 4)
            else:
                ar_put_ip(&text, p, 6)
            out[i] = PyUnicode_DecodeASCII(text.buf, text.len, NULL)
    finally:
        free(text.buf)
    return out


cdef inline uint64_t key_spread(uint64_t k) noexcept nogil:
    """A key's bits spread over the word: a table's slot takes the low ones (key_slot), a
    bitmap's bit the high ones (key_filter_bit)."""
    return (k ^ (k >> 29)) * <uint64_t>0xBF58476D1CE4E5B9


cdef inline uint64_t key_slot(uint64_t k, uint64_t mask) noexcept nogil:
    return key_spread(k) & mask


cdef inline uint64_t key_filter_bit(uint64_t k, int shift) noexcept nogil:
    """A key's bit in a bitmap of 2 ** (64 - shift) bits."""
    return key_spread(k) >> shift


cdef object new_slots(Py_ssize_t rows_at_most):
    """An open-addressing table for up to `rows_at_most` keys, at most half full: a slot is
    two words, the key and its row + 1 (0: empty), so a probe reads one cache line."""
    cdef Py_ssize_t cap = 16
    while cap < 2 * rows_at_most:
        cap *= 2
    return np.zeros((cap, 2), dtype=np.uint64)


cdef inline void prefetch_slot(const uint64_t *slots, uint64_t mask, uint64_t k) noexcept nogil:
    """Ask for the line of k's first slot now, SLOT_PREFETCH keys ahead of its probe: for
    tables sized by a batch's rows (megabytes, past the L2 cache), and for KeyIndex's, held
    across batches, whose lines the batch's own columns drive out of the L2 cache between
    two calls (passive DNS folded 51 ms a million messages instead of 54, the clients
    table 10 instead of 11). A grouping's table, made and used within one call, stays in
    cache: fetching ahead in group_u64 gained nothing measurable."""
    DNS_PREFETCH(&slots[2 * key_slot(k, mask)])


cdef inline uint64_t probe(const uint64_t *slots, uint64_t mask, uint64_t k) noexcept nogil:
    """The slot holding k, or the empty slot where it would go."""
    cdef uint64_t slot = key_slot(k, mask)
    while slots[2 * slot + 1] != 0 and slots[2 * slot] != k:
        slot = (slot + 1) & mask
    return slot


# Slots a grouping starts with (128 KiB, an L2 cache's share): grouping tables grow with the
# groups found, not the rows given. Most callers fold many rows into few groups (answer
# records into distinct records, messages into minutes); a table sized for every row was
# mostly empty, cleared for nothing and probed across megabytes.
DEF GROUP_SLOTS_START = 8192


cdef uint64_t *grown_slots(uint64_t *slots, uint64_t cap, const uint64_t[::1] keys,
                           const int64_t[::1] first, int64_t ngroups) noexcept nogil:
    """A table of `cap` slots holding the groups so far (group g: keys[first[g]]), the old
    one freed; NULL when memory ran out (the old one is freed then too)."""
    free(slots)
    slots = <uint64_t *>calloc(2 * cap, sizeof(uint64_t))
    if slots == NULL:
        return NULL
    cdef uint64_t mask = cap - 1, slot, k
    cdef int64_t g
    for g in range(ngroups):
        k = keys[first[g]]
        slot = probe(slots, mask, k)
        slots[2 * slot] = k
        slots[2 * slot + 1] = g + 1
    return slots


@cython.boundscheck(False)
@cython.wraparound(False)
def first_occurrences(const int64_t[::1] values, int64_t bound):
    """The index of each distinct value's first occurrence, in order of first appearance,
    for values in [0, bound) (row numbers): a table of `bound` marks instead of group_u64's
    hashing."""
    cdef Py_ssize_t n = values.shape[0], i, out = 0
    cdef int64_t v
    if bound < 0:
        raise ValueError("bound must not be negative")
    seen_arr = np.zeros(bound, dtype=np.uint8)
    first_arr = np.empty(n, dtype=np.int64)
    cdef uint8_t[::1] seen = seen_arr
    cdef int64_t[::1] first = first_arr
    for i in range(n):
        v = values[i]
        if v < 0 or v >= bound:
            raise ValueError("value %d outside [0, %d)" % (v, bound))
        if not seen[v]:
            seen[v] = 1
            first[out] = i
            out += 1
    return first_arr[:out]


@cython.boundscheck(False)
@cython.wraparound(False)
def group_u64(const uint64_t[::1] keys, const double[::1] ts=None):
    """Group equal 64-bit keys in one pass (open addressing), in order of first appearance.

    Returns (first row of each group, group of each row, rows per group) and, with
    `ts`, the smallest and largest ts per group: what np.unique plus reductions give,
    without sorting.
    """
    cdef Py_ssize_t n = keys.shape[0], i
    cdef bint with_ts = ts is not None
    if with_ts and ts.shape[0] != n:
        raise ValueError("keys and ts differ in length")
    inverse_arr = np.empty(n, dtype=np.int64)
    first_arr = np.empty(n, dtype=np.int64)
    counts_arr = np.empty(n, dtype=np.int64)
    tmin_arr = np.empty(n if with_ts else 0, dtype=np.float64)
    tmax_arr = np.empty(n if with_ts else 0, dtype=np.float64)
    cdef int64_t[::1] inverse = inverse_arr
    cdef int64_t[::1] first = first_arr
    cdef int64_t[::1] counts = counts_arr
    cdef double[::1] tmin = tmin_arr
    cdef double[::1] tmax = tmax_arr
    cdef int64_t g, ngroups = 0
    cdef uint64_t k, slot, cap = 16
    cdef double t
    while cap < 2 * <uint64_t>min(n, GROUP_SLOTS_START):
        cap *= 2
    cdef uint64_t *slots = <uint64_t *>calloc(2 * cap, sizeof(uint64_t))
    cdef uint64_t mask = cap - 1
    if slots == NULL:
        raise MemoryError()
    with nogil:
        for i in range(n):
            k = keys[i]
            slot = probe(slots, mask, k)
            if slots[2 * slot + 1] == 0:
                g = ngroups
                ngroups += 1
                slots[2 * slot] = k
                slots[2 * slot + 1] = g + 1
                first[g] = i
                counts[g] = 0
                if with_ts:
                    tmin[g] = ts[i]
                    tmax[g] = ts[i]
                if <uint64_t>ngroups * 2 > cap:       # at most half full
                    cap *= 2
                    mask = cap - 1
                    slots = grown_slots(slots, cap, keys, first, ngroups)
                    if slots == NULL:
                        break
            else:
                g = slots[2 * slot + 1] - 1
                if with_ts:
                    t = ts[i]
                    if t < tmin[g]:
                        tmin[g] = t
                    if t > tmax[g]:
                        tmax[g] = t
            inverse[i] = g
            counts[g] += 1
    if slots == NULL:
        raise MemoryError()
    free(slots)
    if with_ts:
        return (first_arr[:ngroups], inverse_arr, counts_arr[:ngroups], tmin_arr[:ngroups],
                tmax_arr[:ngroups])
    return first_arr[:ngroups], inverse_arr, counts_arr[:ngroups]


@cython.boundscheck(False)
@cython.wraparound(False)
def minute_counts(const uint64_t[::1] keys, const uint8_t[:] qr, const uint16_t[:] rcode,
                  const uint32_t[:] size):
    """Group equal keys (as group_u64) and count per group, in one pass: queries, responses,
    NXDOMAIN and SERVFAIL responses, query bytes, response bytes (the store's per-minute
    counters, in that order). Returns (first row of each group, counts[groups, 6])."""
    cdef Py_ssize_t n = keys.shape[0]
    if qr.shape[0] != n or rcode.shape[0] != n or size.shape[0] != n:
        raise ValueError("columns differ in length")
    first, inverse, _ = group_u64(keys)
    counts = np.zeros((len(first), 6), dtype=np.int64)
    count_messages(counts, inverse, qr, rcode, size)
    return first, counts


@cython.boundscheck(False)
@cython.wraparound(False)
def gather_spans(const uint8_t[::1] arena, const int64_t[::1] offsets, const int64_t[::1] lengths,
                 int width):
    """Arena slices as a fixed-width bytes column (numpy S<width>), each cut at `width`
    and zero-padded; a negative length counts as empty."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef int64_t off, length
    if lengths.shape[0] != n:
        raise ValueError("offsets and lengths differ in length")
    if width <= 0:
        raise ValueError("width must be positive")
    out = np.zeros(n, dtype=f"S{width}")
    if n == 0:
        return out
    cdef uint8_t[:, ::1] o = out.view(np.uint8).reshape(n, width)
    for i in range(n):
        off = offsets[i]
        length = lengths[i]
        if length <= 0:
            continue
        if length > width:
            length = width
        if off < 0 or off + length > arena.shape[0]:
            raise ValueError("span outside the arena")
        memcpy(&o[i, 0], &arena[off], <size_t>length)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def group_order(const int64_t[::1] inverse, const int64_t[::1] counts):
    """The rows of each group together, groups in their numbering's order and rows in
    their original order within one (np.argsort(inverse, kind="stable"), by counting)."""
    cdef Py_ssize_t n = inverse.shape[0], g = counts.shape[0], i
    next_arr = np.empty(g, dtype=np.int64)
    cdef int64_t[::1] nxt = next_arr
    cdef int64_t total = 0, k
    for i in range(g):
        nxt[i] = total
        total += counts[i]
    if total != n:
        raise ValueError("counts do not add up to the rows")
    order_arr = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] order = order_arr
    for i in range(n):
        k = inverse[i]
        if k < 0 or k >= g:
            raise ValueError("group out of range")
        order[nxt[k]] = i
        nxt[k] += 1
    return order_arr


DEF FILTER_BITS_PER_KEY = 16
# keys_bitmap: at 16 bits a key, about one value in sixteen that is among none of the keys
# passes the bitmap to a probe of their table.
DEF SMALL_SIDE_RATIO = 8
# index_u64: keys per value above which the table is made of the values. A table of a
# hundred thousand held keys is cleared and written at random for each lookup of a few
# thousand; one of the few thousand stays in cache while the keys stream past it.
DEF VALUE_TABLE_SPREAD = 8
# ... and is made this many times as sparse as new_slots() makes a table: most keys are
# not among the values, and a miss stops at its first slot far more often (2 000 values
# among 100 000 keys: 240 us, where a table half full took 1.7 ms and one of the keys 0.8).
# With SMALL_SIDE_RATIO as large, it is never larger than a table of the keys would be.


cdef object keys_table(const uint64_t[::1] keys):
    """An open-addressing table (new_slots) of the keys, each slot holding a key and the row
    of its first occurrence + 1."""
    cdef Py_ssize_t m = keys.shape[0], i
    slots_arr = new_slots(m)
    cdef uint64_t *slots = <uint64_t *><size_t>slots_arr.ctypes.data
    cdef uint64_t mask = <uint64_t>(slots_arr.shape[0] - 1), slot
    for i in range(m):
        slot = probe(slots, mask, keys[i])
        if slots[2 * slot + 1] == 0:
            slots[2 * slot] = keys[i]
            slots[2 * slot + 1] = i + 1
    return slots_arr


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object keys_bitmap(const uint64_t[::1] keys, int *shift):
    """A bitmap of the keys, FILTER_BITS_PER_KEY bits a key (key_filter_bit with *shift),
    for a lookup to test before it probes their table: a table of a batch's keys (two words
    a key) is larger than L2 and each probe a cache miss, where the bitmap stays in L2, and
    under a flood most values looked up (new entities, unanswered queries) are among none
    of the keys."""
    cdef Py_ssize_t m = keys.shape[0], i
    cdef uint64_t h
    shift[0] = 64 - 6
    while (<uint64_t>1 << (64 - shift[0])) < <uint64_t>(FILTER_BITS_PER_KEY * m):
        shift[0] -= 1
    bitmap_arr = np.zeros(((<uint64_t>1 << (64 - shift[0])) + 63) // 64, dtype=np.uint64)
    cdef uint64_t[::1] bitmap = bitmap_arr
    for i in range(m):
        h = key_filter_bit(keys[i], shift[0])
        bitmap[h >> 6] |= <uint64_t>1 << (h & 63)
    return bitmap_arr


def index_u64(const uint64_t[::1] values, const uint64_t[::1] keys):
    """Row of each value in `keys` (its first occurrence), -1 when absent: a lookup through
    one hash table instead of sorting the keys for searchsorted. The table is of the keys,
    or, where they outnumber the values SMALL_SIDE_RATIO times (a batch's keys looked up
    among all those held), of the values, the keys then read once in order: a slot then
    holds a value and 1 until a key matches it, then that key's row + 2."""
    cdef Py_ssize_t n = values.shape[0], m = keys.shape[0], i
    out_arr = np.full(n, -1, dtype=np.int64)
    if n == 0 or m == 0:
        return out_arr
    cdef bint by_values = m > SMALL_SIDE_RATIO * n
    slots_arr = new_slots(VALUE_TABLE_SPREAD * n) if by_values else keys_table(keys)
    cdef uint64_t *slots = <uint64_t *><size_t>slots_arr.ctypes.data
    cdef uint64_t mask = <uint64_t>(slots_arr.shape[0] - 1)
    cdef int64_t[::1] out = out_arr
    cdef uint64_t slot
    if by_values:
        for i in range(n):
            slot = probe(slots, mask, values[i])
            slots[2 * slot] = values[i]
            slots[2 * slot + 1] = 1
        for i in range(m):
            slot = probe(slots, mask, keys[i])
            if slots[2 * slot + 1] == 1:
                slots[2 * slot + 1] = i + 2
        for i in range(n):
            out[i] = <int64_t>slots[2 * probe(slots, mask, values[i]) + 1] - 2
        return out_arr
    cdef int shift
    bitmap_arr = keys_bitmap(keys, &shift)
    cdef uint64_t[::1] bitmap = bitmap_arr
    cdef uint64_t h
    for i in range(n):
        h = key_filter_bit(values[i], shift)
        if (bitmap[h >> 6] >> (h & 63)) & 1:
            out[i] = <int64_t>slots[2 * probe(slots, mask, values[i]) + 1] - 1
    return out_arr


@cython.boundscheck(False)
@cython.wraparound(False)
def positions_among(const uint64_t[:] values, const uint64_t[::1] keys):
    """The positions of the values that are among `keys`, in order: np.flatnonzero of
    isin_u64, in one pass over the values read in place (a column of a structured array:
    the tracker's pending queries, up to limits.max_pending_queries of them looked up for
    each batch), each through a bitmap of the keys before their table. Values outnumbered
    SMALL_SIDE_RATIO times by the keys go through index_u64's table of the values."""
    cdef Py_ssize_t n = values.shape[0], m = keys.shape[0], i, found = 0
    out_arr = np.empty(n, dtype=np.int64)
    if n == 0 or m == 0:
        return out_arr[:0]
    if m > SMALL_SIDE_RATIO * n:
        # few values (a batch's keys against the few queries pending): index_u64's table
        # of them, the keys read once
        return np.flatnonzero(isin_u64(np.ascontiguousarray(values), keys))
    slots_arr = keys_table(keys)
    cdef uint64_t *slots = <uint64_t *><size_t>slots_arr.ctypes.data
    cdef uint64_t mask = <uint64_t>(slots_arr.shape[0] - 1), h
    cdef int64_t[::1] out = out_arr
    # Most values are among none of the keys (pending queries a batch does not answer: under
    # a flood of unanswered queries, all of them): keys_bitmap turns them away.
    cdef int shift
    bitmap_arr = keys_bitmap(keys, &shift)
    cdef uint64_t[::1] bitmap = bitmap_arr
    with nogil:
        for i in range(n):
            h = key_filter_bit(values[i], shift)
            if (bitmap[h >> 6] >> (h & 63)) & 1 and slots[2 * probe(slots, mask, values[i]) + 1]:
                out[found] = i
                found += 1
    return out_arr[:found]


def isin_u64(const uint64_t[::1] values, const uint64_t[::1] keys):
    """Whether each value is among `keys`: np.isin for 64-bit keys through one hash table
    of the keys, without the sorts (and the two np.unique calls) np.isin makes."""
    return index_u64(values, keys) >= 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int check_name_spans(Py_ssize_t arena_len, const uint32_t[::1] offsets,
                          const uint16_t[::1] lengths) except -1:
    """Raise unless there is a length for each offset and every span lies in the arena."""
    cdef Py_ssize_t i
    if lengths.shape[0] != offsets.shape[0]:
        raise ValueError("offsets and lengths differ in length")
    for i in range(offsets.shape[0]):
        if <size_t>offsets[i] + lengths[i] > <size_t>arena_len:
            raise ValueError("span outside the arena")
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def first_label_stats(const uint8_t[::1] arena, const uint32_t[::1] offsets, const uint16_t[::1] lengths):
    """Per name in presentation form: (length, digits, hex characters) of its leftmost label."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef uint32_t k, end
    cdef uint8_t ch
    cdef int64_t length, digits, hexes
    check_name_spans(arena.shape[0], offsets, lengths)
    out = np.zeros((3, n), dtype=np.int64)
    cdef int64_t[:, ::1] o = out
    for i in range(n):
        end = offsets[i] + lengths[i]
        length = digits = hexes = 0
        k = offsets[i]
        if lengths[i] == 1 and arena[k] == 46:       # the root
            continue
        while k < end:
            ch = arena[k]
            if ch == 46:
                break
            if ch == 92 and k + 1 < end:             # an escaped character counts as one
                k += 1
                ch = arena[k]
                if 48 <= ch <= 57 and k + 2 < end:   # \DDD
                    k += 2
                    ch = 0
            length += 1
            if 48 <= ch <= 57:
                digits += 1
                hexes += 1
            elif 97 <= ch <= 102:
                hexes += 1
            k += 1
        o[0, i] = length
        o[1, i] = digits
        o[2, i] = hexes
    return out


def service_label_counts(const uint8_t[::1] arena, const uint32_t[::1] offsets, const uint16_t[::1] lengths):
    """Per name in presentation form: how many of its labels begin with an underscore."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef uint32_t k, end
    cdef bint label_start
    check_name_spans(arena.shape[0], offsets, lengths)
    out = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] o = out
    cdef uint16_t dots[MAX_LABELS]
    cdef int ndots, d, count
    cdef const uint8_t *name
    for i in range(n):
        name = &arena[0] + offsets[i]
        ndots = name_dots(name, lengths[i], dots) if lengths[i] else 0
        if ndots >= 0:          # no escape: the labels begin at 0 and after each dot
            count = name[0] == 95 if lengths[i] else 0
            for d in range(ndots):
                count += dots[d] + 1 < lengths[i] and name[dots[d] + 1] == 95
            o[i] = <uint8_t>(count if count < 255 else 255)
            continue
        end = offsets[i] + lengths[i]
        label_start = 1
        k = offsets[i]
        while k < end:
            if arena[k] == 92:            # an escaped byte: never a label's first underscore
                label_start = 0
                k += 2
                continue
            if label_start and arena[k] == 95 and o[i] < 255:
                o[i] += 1
            label_start = arena[k] == 46
            k += 1
    return out


cdef inline bint psl_has_label(const uint64_t *table, uint64_t mask, const uint8_t *p, uint32_t n) noexcept nogil:
    """Whether the one label p[:n] is a suffix some rule of the table ends with (a TLD)."""
    cdef uint64_t h = <uint64_t>FNV_OFFSET
    cdef uint32_t k
    for k in range(n):
        h = fnv_step(h, p[k])
    return psl_entry_flags(table, mask, h) != 0


def inner_tld_counts(const uint8_t[::1] arena, const uint32_t[::1] offsets, const uint16_t[::1] lengths,
                     const uint16_t[::1] regdom_offs, const uint64_t[::1] psl_table):
    """Per name in presentation form: how many labels between its first label and its
    registered domain (which starts regdom_offs[i] characters in) are top-level domains of
    the suffix table: a whole name under another, as search-domain expansion makes."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef uint64_t mask = psl_table.shape[0] - 1
    cdef uint32_t k, start, stop, label
    cdef bint escaped
    check_name_spans(arena.shape[0], offsets, lengths)
    if regdom_offs.shape[0] != n:
        raise ValueError("offsets and regdom_offs differ in length")
    check_suffix_table(psl_table.shape[0])
    out = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] o = out
    for i in range(n):
        start = offsets[i]
        if regdom_offs[i] > lengths[i]:
            raise ValueError("registered domain outside the name")
        stop = start + regdom_offs[i]     # the dot before the registered domain, + 1
        # Skip the first label (a host or a random prefix), then test each whole label
        # that ends before the registered domain; one holding an escape is no TLD.
        k = start
        label = stop
        escaped = 0
        while k < stop:
            if arena[k] == 92:
                escaped = 1
                k += 2
                continue
            if arena[k] == 46:
                if label < k and not escaped and o[i] < 255 and psl_has_label(
                        &psl_table[0], mask, &arena[label], k - label):
                    o[i] += 1
                label = k + 1
                escaped = 0
            k += 1
    return out


def public_tlds(const uint8_t[::1] arena, const uint32_t[::1] offsets, const uint16_t[::1] lengths,
                const uint64_t[::1] psl_table):
    """Per name in presentation form: 1 when its last label is a top-level domain some rule
    of the suffix table (sensor.parse.psl.SuffixRules.table) ends with."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef uint64_t mask = psl_table.shape[0] - 1
    cdef uint32_t k, end, tld
    cdef uint8_t ch
    cdef bint escaped
    check_name_spans(arena.shape[0], offsets, lengths)
    check_suffix_table(psl_table.shape[0])
    out = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] o = out
    for i in range(n):
        end = offsets[i] + lengths[i]
        # The last label starts after the last unescaped dot; a label holding an escaped
        # byte is no TLD.
        k = tld = offsets[i]
        escaped = 0
        while k < end:
            ch = arena[k]
            k += 1
            if ch == 92:
                escaped = 1
                k += 1                    # \X, or the first digit of \DDD (no dot among them)
            elif ch == 46:
                tld = k
                escaped = 0
        if tld < end and not escaped:
            o[i] = psl_has_label(&psl_table[0], mask, &arena[tld], end - tld)
    return out


cdef const char *DGA_SYMBOLS = b"^abcdefghijklmnopqrstuvwxyz0123456789-"
DEF DGA_ALPHABET = 39                 # len(DGA_SYMBOLS) + 1 for any other character


@cython.boundscheck(False)
@cython.wraparound(False)
def dga_scores(const uint8_t[::1] arena, const uint32_t[::1] qname_off, const uint16_t[::1] regdom_off,
               const uint16_t[::1] qname_len, const float[::1] table):
    """Per message: the mean trigram score of the registered label ("^label$"), from a
    table indexed (a * 39 + b) * 39 + c over sensor.features.dga.SYMBOLS; 0 without a label."""
    cdef Py_ssize_t n = qname_off.shape[0], i
    cdef uint32_t start, end, k
    cdef int a, b, x, c, count
    cdef double total
    cdef uint8_t ch
    cdef int symbol[256]
    if regdom_off.shape[0] != n or qname_len.shape[0] != n:
        raise ValueError("columns differ in length")
    if table.shape[0] != DGA_ALPHABET * DGA_ALPHABET * DGA_ALPHABET:
        raise ValueError("table must have 39**3 entries")
    for c in range(256):
        symbol[c] = DGA_ALPHABET - 1
    for c in range(1, DGA_ALPHABET - 1):
        symbol[<uint8_t>DGA_SYMBOLS[c]] = c
    out = np.zeros(n, dtype=np.float64)
    cdef double[::1] o = out
    for i in range(n):
        start = qname_off[i] + regdom_off[i]
        end = qname_off[i] + qname_len[i]
        if end > <uint32_t>arena.shape[0] or start >= end:
            continue
        if end - start == 1 and arena[start] == 46:     # the root
            continue
        k = start
        while k < end and arena[k] != 46:
            k += 1
        end = k
        # the sequence is boundary, label characters, boundary: trigram (a, b, x) at each x
        a = 0
        b = symbol[arena[start]]
        total = 0.0
        count = 0
        for k in range(start + 1, end + 1):
            x = symbol[arena[k]] if k < end else 0
            total += table[(a * DGA_ALPHABET + b) * DGA_ALPHABET + x]
            count += 1
            a = b
            b = x
        o[i] = total / count if count else 0.0
    return out


cdef inline bint at_or_below(const uint8_t *a, uint32_t child, uint32_t child_len,
                             uint32_t parent, uint32_t parent_len) noexcept nogil:
    """The name at `child` equals the name at `parent` or lies below it (text form, lower case)."""
    cdef uint32_t j, start
    if parent_len == 0 or (parent_len == 1 and a[parent] == 46):   # the root is above everything
        return True
    if parent_len > child_len:
        return False
    start = child + child_len - parent_len
    for j in range(parent_len):
        if a[start + j] != a[parent + j]:
            return False
    return parent_len == child_len or a[start - 1] == 46


cdef inline void rdata_target(const uint8_t *a, uint32_t off, uint32_t length,
                              uint32_t *t_off, uint32_t *t_len) noexcept nogil:
    """The name an NS, CNAME, DNAME, PTR, MX or SRV record points at: its last field."""
    cdef uint32_t k = off + length
    while k > off and a[k - 1] != 32:
        k -= 1
    t_off[0] = k
    t_len[0] = off + length - k


cdef inline bint names_a_target(uint16_t rtype) noexcept nogil:
    return rtype == 2 or rtype == 5 or rtype == 39 or rtype == 12 or rtype == 15 or rtype == 33


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bint authority_explained(const uint8_t *a, const RRRow *rr, uint32_t r, uint32_t first,
                              uint32_t last, uint32_t qo, uint32_t ql, uint32_t ro, uint32_t rl) noexcept nogil:
    """An authority record owned by the question name, an answer's owner or target, or a
    parent of one of them, or under the question's registered domain; NSEC, NSEC3 and RRSIG
    by any name of a zone above the question (denial proofs)."""
    cdef uint32_t no = rr[r].name_off, nl = rr[r].name_len, s, to, tl
    cdef uint16_t t = rr[r].type
    if at_or_below(a, no, nl, ro, rl) or at_or_below(a, qo, ql, no, nl):
        return True
    if t == 47 or t == 50 or t == 46:
        s = no
        while s < no + nl and a[s] != 46:
            s += 1
        if s < no + nl and at_or_below(a, qo, ql, s + 1, no + nl - s - 1):
            return True
    s = first
    while s < last and rr[s].section == 1:
        if at_or_below(a, rr[s].name_off, rr[s].name_len, no, nl):
            return True
        if names_a_target(rr[s].type):
            rdata_target(a, rr[s].rdata_off, rr[s].rdata_len, &to, &tl)
            if at_or_below(a, to, tl, no, nl):
                return True
        s += 1
    return False


DEF MDNS_PORT = 5353


cdef inline bint needs_explaining(const RRRow *r) noexcept nogil:
    """An authority or additional record that carries data: OPT (41), TSIG (250) and
    SIG(0) (24) are the transport's, answers are what was asked."""
    return r.section != 1 and r.type != 41 and r.type != 250 and r.type != 24


cdef inline bint any_to_explain(const MessageRow *mr, const RRRow *rr) noexcept nogil:
    """Whether a message the core made has a record that needs explaining: its records are
    in wire order, answers first, so only those after the last answer are looked at (for
    most responses none, or the OPT record alone)."""
    cdef uint32_t r = mr.rr_start + mr.rr_count
    while r > mr.rr_start:
        r -= 1
        if rr[r].section == 1:
            return False
        if needs_explaining(&rr[r]):
            return True
    return False


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int64_t message_strays(const uint8_t *a, const MessageRow *mr, const RRRow *rr) noexcept nogil:
    """out_of_bailiwick's count for one message, whose records (rr[rr_start:rr_start +
    rr_count]) and every span of theirs and of its question lie in the table and in the
    arena text `a`: checked by the caller, or made so by the core."""
    cdef uint32_t first = mr.rr_start, last = mr.rr_start + mr.rr_count, r, s
    cdef uint32_t qo, ql, ro, rl, to, tl, no, nl
    cdef bint ok
    cdef int64_t strays = 0
    if mr.sport == MDNS_PORT or mr.dport == MDNS_PORT:
        return 0
    qo, ql = mr.qname_off, mr.qname_len
    ro = qo + mr.regdom_off if mr.regdom_off < ql else qo
    rl = ql - mr.regdom_off if mr.regdom_off < ql else ql
    for r in range(first, last):
        if not needs_explaining(&rr[r]):
            continue
        no, nl = rr[r].name_off, rr[r].name_len
        if rr[r].section == 2:
            ok = authority_explained(a, rr, r, first, last, qo, ql, ro, rl)
        else:
            # glue: under the registered domain, under an authority owner that is
            # itself explained, or the target of a record that names a host
            ok = at_or_below(a, no, nl, ro, rl)
            s = first
            while not ok and s < last:
                if rr[s].section == 2 and at_or_below(a, no, nl, rr[s].name_off, rr[s].name_len):
                    ok = authority_explained(a, rr, s, first, last, qo, ql, ro, rl)
                if not ok and rr[s].section < 3 and names_a_target(rr[s].type):
                    rdata_target(a, rr[s].rdata_off, rr[s].rdata_len, &to, &tl)
                    ok = tl == nl and at_or_below(a, no, nl, to, tl)
                s += 1
        if not ok:
            strays += 1
    return strays


@cython.boundscheck(False)
@cython.wraparound(False)
def out_of_bailiwick(messages, rrs, const uint8_t[::1] arena):
    """Per message: authority and additional records that nothing asked or answered explains.

    An authority record must own the question name, an answer's owner or target, or one of
    their parents, or sit under the question's registered domain (NSEC3 proofs). An
    additional record must sit under the registered domain or an authority owner (glue), or
    be the target of an NS, MX, SRV, CNAME, DNAME or PTR record. NSEC, NSEC3 and RRSIG in
    the authority section may be owned by any name of a zone above the question (denial
    proofs). OPT, TSIG and SIG(0) are transport, not data. Escaped dots inside labels are
    taken as separators. Multicast DNS (port 5353) is left out: its responders announce
    whatever they hold, so bailiwick does not apply. One pass over the record rows: a
    message's wide row is read only when one of its records needs explaining, so queries
    and plain answers cost no read of theirs."""
    cdef Py_ssize_t n = len(messages), nr = len(rrs), i
    cdef const MessageRow *msgs = message_rows(messages)
    cdef const RRRow *rr = <const RRRow *>_row_data(rrs, RR_DTYPE, "record")
    cdef const MessageRow *mr
    cdef uint64_t size = arena.shape[0]
    cdef const uint8_t *base = &arena[0] if size else NULL     # no span has a byte to read then
    cdef uint32_t r, first, last
    cdef Py_ssize_t bad_message = -1, bad_record = -1, j = 0
    out = np.zeros(n, dtype=np.float64)
    cdef double[::1] o = out
    with nogil:
        while j < nr:
            if not needs_explaining(&rr[j]):
                j += 1
                continue
            if rr[j].msg >= <uint64_t>n:
                bad_record = j
                break
            i = rr[j].msg
            mr = &msgs[i]
            # Checked here, as each message is reached: a pass of its own over every row
            # first cost as much as the work.
            if (<uint64_t>mr.rr_start + mr.rr_count > <uint64_t>nr or mr.rr_start > <uint64_t>j
                    or <uint64_t>mr.rr_start + mr.rr_count <= <uint64_t>j
                    or <uint64_t>mr.qname_off + mr.qname_len > size):
                bad_message = i
                break
            first = mr.rr_start
            last = first + mr.rr_count
            j = last                    # the message's records are one block: the next is past it
            for r in range(first, last):
                if (<uint64_t>rr[r].name_off + rr[r].name_len > size
                        or <uint64_t>rr[r].rdata_off + rr[r].rdata_len > size):
                    bad_record = r
                    break
            if bad_record >= 0:
                break
            o[i] = message_strays(base, mr, rr)
    if bad_message >= 0:
        raise ValueError("message %d outside the record table or the arena" % bad_message)
    if bad_record >= 0:
        raise ValueError("record %d outside the arena or belongs to no message" % bad_record)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def count_in_spans(const uint8_t[::1] arena, const uint32_t[::1] offsets, const uint32_t[::1] lengths,
                   const uint8_t[::1] table):
    """Per arena slice: how many of its bytes have a non-zero entry in `table` (256 entries)."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef uint32_t k, end
    cdef int64_t c
    if lengths.shape[0] != n or table.shape[0] != 256:
        raise ValueError("offsets and lengths differ in length, or the table is not 256 entries")
    for i in range(n):
        end = offsets[i] + lengths[i]
        if end > <uint32_t>arena.shape[0] or end < offsets[i]:
            raise ValueError("span outside the arena")
    out = np.zeros(n, dtype=np.int64)
    cdef int64_t[::1] o = out
    with nogil:
        for i in range(n):
            c = 0
            for k in range(offsets[i], offsets[i] + lengths[i]):
                c += table[arena[k]] != 0
            o[i] = c
    return out


# ---------------------------------------------------------------- fused row passes
# Passes that read the batch's wide rows once, where numpy would pull each field
# out into its own column first (a 152-byte stride per 2-byte field).

DEF KEY_SEED = 0x243F6A8885A308D3
DEF KEY_MIX = 0x9E3779B97F4A7C15
DEF KEY_FINISH = 0xBF58476D1CE4E5B9


cdef inline uint64_t key_mix(uint64_t h, uint64_t x) noexcept nogil:
    """One column into a row key: sensor.track.hash_columns' step (mix_u64)."""
    h = (h ^ x) * <uint64_t>KEY_MIX
    return h ^ (h >> 31)


cdef inline uint64_t key_finish(uint64_t h) noexcept nogil:
    return (h ^ (h >> 29)) * <uint64_t>KEY_FINISH


# Name lists (sensor.features.lists): one open-addressing table for every list of a rules
# directory (at most 32), rows of (key, bits). A name's key mixes the span_hash of each of
# its labels from the last one leftwards, so one pass from a name's end keys every parent on
# the way, and a label costs a multiply a word where a byte-serial hash cost one a byte (a
# flood of new names is looked up on every list). A row's low 32 bits are its own bits, the
# lists that hold the name itself; the high 32 its below bits, the lists that hold every
# name below it. Key 0 marks an empty row (a key that mixes to 0 is stored as 1).
DEF LIST_ROW_KEY = 0
DEF LIST_ROW_BITS = 1


cdef inline uint64_t list_key(uint64_t path) noexcept nogil:
    cdef uint64_t k = key_finish(path)
    return k if k else 1


cdef inline Py_ssize_t list_row(const uint64_t[:, ::1] table, uint64_t mask, uint64_t key) noexcept nogil:
    """The row holding `key`, -1 when none does."""
    cdef uint64_t slot = key & mask
    while table[slot, LIST_ROW_KEY] != 0:
        if table[slot, LIST_ROW_KEY] == key:
            return <Py_ssize_t>slot
        slot = (slot + 1) & mask
    return -1


cdef inline uint64_t list_path_step(uint64_t path, const uint8_t *label, uint32_t n) noexcept nogil:
    """A name's key so far with its next label leftwards mixed in: the one step that keys
    names both as a table is made (name_list_key) and as names are looked up (list_level)."""
    return key_mix(path, span_hash(label, n))


cdef inline uint32_t list_level(const uint64_t[:, ::1] table, uint64_t mask, uint64_t *path,
                                const uint8_t *label, uint32_t n, bint whole) noexcept nogil:
    """Mix the next label leftwards into a name's key (*path) and return the bits its row
    gives: the own bits where the label begins the whole name, else a parent's below bits."""
    path[0] = list_path_step(path[0], label, n)
    cdef Py_ssize_t row = list_row(table, mask, list_key(path[0]))
    if row < 0:
        return 0
    return <uint32_t>table[row, LIST_ROW_BITS] if whole else <uint32_t>(table[row, LIST_ROW_BITS] >> 32)


def name_list_key(bytes name):
    """The key of a name (presentation form, no escapes, no trailing dot) in a name-list table."""
    cdef const uint8_t *p = name
    cdef Py_ssize_t end = len(name), k
    cdef uint64_t h = <uint64_t>KEY_SEED
    while True:
        k = end
        while k > 0 and p[k - 1] != 46:
            k -= 1
        h = list_path_step(h, p + k, <uint32_t>(end - k))
        if k == 0:
            return list_key(h)
        end = k - 1


@cython.boundscheck(False)
@cython.wraparound(False)
def name_list_table(const uint64_t[::1] keys, const uint32_t[::1] own, const uint32_t[::1] below):
    """The table of entries (key, own bits, below bits), the bits of one key ORed together:
    a power-of-two number of rows (key, own | below << 32), at least twice the entries."""
    cdef Py_ssize_t n = keys.shape[0], i
    cdef uint64_t size = 4, mask, slot, key
    if own.shape[0] != n or below.shape[0] != n:
        raise ValueError("keys, own and below differ in length")
    while size < <uint64_t>(2 * n + 2):
        size *= 2
    out = np.zeros((size, 2), dtype=np.uint64)
    cdef uint64_t[:, ::1] t = out
    mask = size - 1
    for i in range(n):
        key = keys[i] if keys[i] else 1
        slot = key & mask
        while t[slot, LIST_ROW_KEY] != 0 and t[slot, LIST_ROW_KEY] != key:
            slot = (slot + 1) & mask
        t[slot, LIST_ROW_KEY] = key
        t[slot, LIST_ROW_BITS] |= own[i] | (<uint64_t>below[i] << 32)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def names_listed(const uint8_t[::1] arena, const uint32_t[::1] offsets, const uint16_t[::1] lengths,
                 const uint64_t[:, ::1] table):
    """Per name (an arena span in presentation form): the bits of the lists it is on (uint32):
    the own bits of the name's row, and the below bits of each parent's (the text after a
    label boundary). The walk stops at an escape: list names have none, so no text left of
    one can match."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef uint32_t start, end, k, j, label_end
    cdef uint64_t h, mask
    cdef uint32_t bits
    cdef const uint8_t *base
    if lengths.shape[0] != n:
        raise ValueError("offsets and lengths differ in length")
    if table.shape[1] != 2 or table.shape[0] == 0 or table.shape[0] & (table.shape[0] - 1):
        raise ValueError("a name-list table has a power-of-two number of rows of 2")
    mask = table.shape[0] - 1
    out = np.zeros(n, dtype=np.uint32)
    cdef uint32_t[::1] o = out
    base = &arena[0] if arena.shape[0] else NULL
    cdef uint16_t dots[MAX_LABELS]
    cdef int ndots, d
    for i in range(n):
        start = offsets[i]
        end = start + lengths[i]
        if end > <uint32_t>arena.shape[0]:
            raise ValueError("span outside the arena")
        if end == start:
            continue
        h = <uint64_t>KEY_SEED
        bits = 0
        ndots = name_dots(base + start, end - start, dots)
        if ndots >= 0:          # no escape: its labels lie between its dots
            label_end = end
            for d in range(ndots - 1, -1, -1):
                k = start + dots[d] + 1
                bits |= list_level(table, mask, &h, base + k, label_end - k, 0)
                label_end = k - 1
            o[i] = bits | list_level(table, mask, &h, base + start, label_end - start, 1)
            continue
        label_end = end
        while True:
            # label [k, label_end): back to the dot before it, or to the name's start
            k = label_end
            while k > start and base[k - 1] != 46 and base[k - 1] != 92:
                k -= 1
            if k > start:
                if base[k - 1] == 92:           # an escape: nothing from here leftwards can match
                    break
                j = k - 1
                while j > start and base[j - 1] == 92:
                    j -= 1
                if (k - 1 - j) & 1:              # an escaped dot: part of a label
                    break
            bits |= list_level(table, mask, &h, base + k, label_end - k, k == start)
            if k == start:
                break
            label_end = k - 1
        o[i] = bits
    return out


DEF MAX_KEY_COLUMNS = 8
# Columns one hash_columns call mixes into its keys (the widest use: a window and two
# addresses of two words each).


def hash_columns(columns):
    """One 64-bit key per row from several integer columns (the first a 1-D array, the
    others of its length or broadcast to it): h = KEY_SEED, then per column
    h = (h ^ x) * KEY_MIX, h ^= h >> 31, and last h = (h ^ h >> 29) * KEY_FINISH, with x the
    column's value as numpy's astype(uint64) gives it (signed values wrap). Each column is
    read in place (any stride, 1 to 8 bytes): no temporary per column."""
    cdef Py_ssize_t k = len(columns), j, i
    if k == 0 or k > MAX_KEY_COLUMNS:
        raise ValueError("hash_columns takes 1 to %d columns" % MAX_KEY_COLUMNS)
    cdef Py_ssize_t n = len(columns[0])
    cdef const char *base[MAX_KEY_COLUMNS]
    cdef Py_ssize_t stride[MAX_KEY_COLUMNS]
    cdef int width[MAX_KEY_COLUMNS]
    cdef bint signed[MAX_KEY_COLUMNS]
    arrays = []             # keeps converted columns alive while their pointers are read
    for j in range(k):
        a = np.asarray(columns[j])
        if a.shape != (n,):
            a = np.broadcast_to(a, (n,))
        if a.dtype.kind not in "biu" or a.dtype.itemsize not in (1, 2, 4, 8) or not a.dtype.isnative:
            a = a.astype(np.uint64)
        arrays.append(a)
        base[j] = <const char *><size_t>a.ctypes.data
        stride[j] = a.strides[0]
        width[j] = a.dtype.itemsize
        signed[j] = a.dtype.kind == "i"
    keys_arr = np.empty(n, dtype=np.uint64)
    cdef uint64_t *h = <uint64_t *><size_t>keys_arr.ctypes.data
    cdef const uint64_t *words
    cdef const char *p
    cdef uint64_t x
    cdef bint whole_words = True
    for j in range(k):
        whole_words = whole_words and width[j] == 8 and stride[j] == 8
    if whole_words:
        # every column contiguous 64-bit words (minutes, hashes), as most are: one pass
        # over the rows (two columns of 64 k rows: 91 us, where a pass per column took 121)
        for i in range(n):
            x = <uint64_t>KEY_SEED
            for j in range(k):
                x = key_mix(x, (<const uint64_t *>base[j])[i])
            h[i] = key_finish(x)
        return keys_arr
    for i in range(n):
        h[i] = <uint64_t>KEY_SEED
    # Otherwise column by column: a contiguous 64-bit column still mixes in a loop the
    # compiler vectorises; one loop over the rows choosing each column's width was slower.
    for j in range(k):
        if width[j] == 8 and stride[j] == 8:
            words = <const uint64_t *>base[j]
            for i in range(n):
                h[i] = key_mix(h[i], words[i])
            continue
        p = base[j]
        for i in range(n):
            if width[j] == 8:
                x = (<const uint64_t *>p)[0]
            elif width[j] == 4:
                x = <uint64_t>(<const int32_t *>p)[0] if signed[j] else (<const uint32_t *>p)[0]
            elif width[j] == 2:
                x = <uint64_t>(<const int16_t *>p)[0] if signed[j] else (<const uint16_t *>p)[0]
            else:
                x = <uint64_t>(<const int8_t *>p)[0] if signed[j] else (<const uint8_t *>p)[0]
            h[i] = key_mix(h[i], x)
            p += stride[j]
    for i in range(n):
        h[i] = key_finish(h[i])
    return keys_arr


cdef size_t _row_data(object rows, object dtype, str what) except? 0:
    """Address of a structured array's rows, checked to be the compiled row layout
    (0 for an empty array, whose rows are never read)."""
    if dtype is None:
        raise RuntimeError("bind_dtypes() has not been called")
    if rows.dtype != dtype or not rows.flags.c_contiguous:
        raise ValueError("%s must be a C-contiguous array of the schema's %s rows" % (what, what))
    return <size_t>rows.ctypes.data if len(rows) else 0


cdef inline const MessageRow *message_rows(object messages) except? NULL:
    return <const MessageRow *>_row_data(messages, MESSAGE_DTYPE, "message")


cdef inline void address_words_of(const uint8_t *a, uint64_t *w0, uint64_t *w1) noexcept nogil:
    # The same two words as numpy's "<u8" view of the 16 bytes (hosts are little-endian).
    memcpy(w0, a, 8)
    memcpy(w1, a + 8, 8)


cdef inline bint words_multicast(uint64_t w0, uint64_t w1) noexcept nogil:
    """sensor.track.is_multicast for one address."""
    cdef uint64_t octet
    if w0 == 0 and (w1 & <uint64_t>0xFFFFFFFF) == <uint64_t>0xFFFF0000:
        octet = (w1 >> 32) & 0xFF
        return 224 <= octet <= 239
    return (w0 & 0xFF) == 0xFF


@cython.boundscheck(False)
@cython.wraparound(False)
def answer_records(rrs, const uint8_t[::1] arena, const uint8_t[::1] qr, const uint16_t[::1] rcode,
                   const double[::1] ts, const uint8_t[::1] state, int excluded_state):
    """A batch's passive-DNS records in one pass over its record rows: answer-section
    records (OPT aside) of NOERROR responses whose tracking state is not `excluded_state`.
    The messages are read through their qr, rcode and ts columns (Batch.column), one entry
    per message: the wide message rows are not touched.

    Returns (record rows, keys, ts): each key is sensor.track.hash_columns(owner name
    hash, rdata hash, type) over span_hashes' hashes of the arena text, ts the
    response's timestamp.
    """
    cdef Py_ssize_t n = qr.shape[0], m = len(rrs), j, out = 0
    if rcode.shape[0] != n or ts.shape[0] != n or state.shape[0] != n:
        raise ValueError("qr, rcode, ts and state must have one entry per message")
    cdef const RRRow *rr = <const RRRow *>_row_data(rrs, RR_DTYPE, "record")
    rows_arr = np.empty(m, dtype=np.int64)
    keys_arr = np.empty(m, dtype=np.uint64)
    ts_arr = np.empty(m, dtype=np.float64)
    cdef int64_t[::1] rows = rows_arr
    cdef uint64_t[::1] keys = keys_arr
    cdef double[::1] out_ts = ts_arr
    cdef const RRRow *r
    cdef uint32_t k
    cdef size_t size = arena.shape[0]
    cdef const uint8_t *base = &arena[0] if size else NULL
    cdef uint64_t h, name_hash = 0
    cdef uint32_t name_off = 0, name_len = 0xFFFFFFFF
    for j in range(m):
        r = &rr[j]
        if r.section != 1 or r.type == 41:      # answers only; type 41 is OPT
            continue
        k = r.msg
        if k >= <uint64_t>n:
            raise ValueError("record %d belongs to no message of the batch" % j)
        if qr[k] != 1 or rcode[k] != 0 or state[k] == excluded_state:
            continue
        if (<size_t>r.name_off + r.name_len > size or <size_t>r.rdata_off + r.rdata_len > size):
            raise ValueError("record %d spans outside the arena" % j)
        # The records of an RRset share their owner name's text (the parser points them
        # at one span): hashed once.
        if r.name_off != name_off or r.name_len != name_len:
            name_off, name_len = r.name_off, r.name_len
            name_hash = span_hash(base + name_off, name_len)
        h = key_mix(<uint64_t>KEY_SEED, name_hash)
        h = key_mix(h, span_hash(base + r.rdata_off, r.rdata_len))
        keys[out] = key_finish(key_mix(h, r.type))
        rows[out] = j
        out_ts[out] = ts[k]
        out += 1
    return rows_arr[:out], keys_arr[:out], ts_arr[:out]


@cython.boundscheck(False)
@cython.wraparound(False)
def nxdomain_records(const uint8_t[::1] qr, const uint16_t[::1] rcode, const uint16_t[::1] qdcount,
                     const uint64_t[::1] name_hash, const uint16_t[::1] qtype, const double[::1] ts,
                     const uint8_t[::1] state, int excluded_state):
    """A batch's NXDOMAIN names in one pass over its message columns (Batch.column):
    responses with rcode 3 and a question whose tracking state is not `excluded_state`.

    Returns (message rows, keys, ts): each key is sensor.track.hash_columns(name hash,
    qtype), ts the response's timestamp.
    """
    cdef Py_ssize_t n = qr.shape[0], i, out = 0
    if (rcode.shape[0] != n or qdcount.shape[0] != n or name_hash.shape[0] != n or qtype.shape[0] != n
            or ts.shape[0] != n or state.shape[0] != n):
        raise ValueError("every column must have one entry per message")
    rows_arr = np.empty(n, dtype=np.int64)
    keys_arr = np.empty(n, dtype=np.uint64)
    ts_arr = np.empty(n, dtype=np.float64)
    cdef int64_t[::1] rows = rows_arr
    cdef uint64_t[::1] keys = keys_arr
    cdef double[::1] out_ts = ts_arr
    for i in range(n):
        if qr[i] != 1 or rcode[i] != 3 or qdcount[i] == 0 or state[i] == excluded_state:
            continue
        keys[out] = key_finish(key_mix(key_mix(<uint64_t>KEY_SEED, name_hash[i]), qtype[i]))
        rows[out] = i
        out_ts[out] = ts[i]
        out += 1
    return rows_arr[:out], keys_arr[:out], ts_arr[:out]


@cython.boundscheck(False)
@cython.wraparound(False)
def track_columns(messages, const uint64_t[:, ::1] resolvers, uint64_t untrackable):
    """What query/response matching needs of each message, in one pass over the rows.

    The querying side (client) is the source of a query and the destination of a
    response. Returns (key, loose, client, resolver, leg, tracked, server_is_resolver):
    key = hash_columns(client words, server words, client port << 16 | server port,
    id << 32 | qtype << 16 | qclass, name hash), loose the same without ports and id;
    client and resolver as two address words per row (resolver: the client when it is
    one of `resolvers`, the upstream leg (leg 1), else the server); tracked: neither
    address multicast and no anomaly of `untrackable`; is_response: the QR bit, as 0 or 1;
    then client_hash and server_hash, hash_columns of each side's two words (the group
    keys of the client and server features), a step of the key's own mixing.
    """
    cdef Py_ssize_t n = len(messages), i, k
    cdef Py_ssize_t nres = resolvers.shape[0]
    if nres and resolvers.shape[1] != 2:
        raise ValueError("resolvers must be rows of two address words")
    cdef const MessageRow *msgs = message_rows(messages)
    key_arr = np.empty(n, dtype=np.uint64)
    loose_arr = np.empty(n, dtype=np.uint64)
    client_arr = np.empty((n, 2), dtype=np.uint64)
    resolver_arr = np.empty((n, 2), dtype=np.uint64)
    leg_arr = np.empty(n, dtype=np.uint8)
    tracked_arr = np.empty(n, dtype=np.bool_)
    server_res_arr = np.empty(n, dtype=np.bool_)
    is_response_arr = np.empty(n, dtype=np.uint8)
    client_hash_arr = np.empty(n, dtype=np.uint64)
    server_hash_arr = np.empty(n, dtype=np.uint64)
    cdef uint8_t[::1] is_response = is_response_arr
    cdef uint64_t[::1] client_hash = client_hash_arr
    cdef uint64_t[::1] server_hash = server_hash_arr
    cdef uint64_t[::1] key = key_arr
    cdef uint64_t[::1] loose = loose_arr
    cdef uint64_t[:, ::1] client = client_arr
    cdef uint64_t[:, ::1] resolver = resolver_arr
    cdef uint8_t[::1] leg = leg_arr
    cdef uint8_t[::1] tracked = tracked_arr.view(np.uint8)
    cdef uint8_t[::1] server_res = server_res_arr.view(np.uint8)
    cdef const MessageRow *mr
    cdef uint64_t s0, s1, d0, d1, c0, c1, v0, v1, h, question
    cdef uint16_t cport, vport
    cdef bint up, sres
    for i in range(n):
        mr = &msgs[i]
        if i + ROW_PREFETCH < n:
            # the lines of a later row that hold what is read here (addresses to qr)
            DNS_PREFETCH(&msgs[i + ROW_PREFETCH].src)
            DNS_PREFETCH(&msgs[i + ROW_PREFETCH].qr)
        address_words_of(mr.src, &s0, &s1)
        address_words_of(mr.dst, &d0, &d1)
        if mr.qr == 0:
            c0, c1, v0, v1, cport, vport = s0, s1, d0, d1, mr.sport, mr.dport
        else:
            c0, c1, v0, v1, cport, vport = d0, d1, s0, s1, mr.dport, mr.sport
        question = (<uint64_t>mr.qtype << 16) | mr.qclass
        h = key_mix(key_mix(<uint64_t>KEY_SEED, c0), c1)
        client_hash[i] = key_finish(h)
        server_hash[i] = key_finish(key_mix(key_mix(<uint64_t>KEY_SEED, v0), v1))
        h = key_mix(key_mix(h, v0), v1)
        loose[i] = key_finish(key_mix(key_mix(h, question), mr.name_hash))
        h = key_mix(h, (<uint64_t>cport << 16) | vport)
        h = key_mix(h, (<uint64_t>mr.id << 32) | question)
        key[i] = key_finish(key_mix(h, mr.name_hash))
        up = 0
        sres = 0
        for k in range(nres):
            if resolvers[k, 0] == c0 and resolvers[k, 1] == c1:
                up = 1
            if resolvers[k, 0] == v0 and resolvers[k, 1] == v1:
                sres = 1
        client[i, 0] = c0
        client[i, 1] = c1
        if up:
            resolver[i, 0] = c0
            resolver[i, 1] = c1
        else:
            resolver[i, 0] = v0
            resolver[i, 1] = v1
        leg[i] = up
        server_res[i] = sres
        tracked[i] = (not words_multicast(s0, s1) and not words_multicast(d0, d1)
                      and (mr.anomalies & untrackable) == 0)
        is_response[i] = mr.qr != 0
    return (key_arr, loose_arr, client_arr, resolver_arr, leg_arr, tracked_arr, server_res_arr,
            is_response_arr, client_hash_arr, server_hash_arr)


DEF PENDING_WORDS = 6
# sensor.track.PENDING_DTYPE's row in 64-bit words: key, loose, ts, the resolver's two
# address words, and a word whose low byte is the leg (checked against the dtype there).


@cython.boundscheck(False)
@cython.wraparound(False)
def pending_rows(uint64_t[:, ::1] out, const uint64_t[::1] key, const uint64_t[::1] loose,
                 const double[::1] ts, const uint64_t[:, ::1] resolver, const uint8_t[::1] leg,
                 const int64_t[::1] messages):
    """Write the pending-table rows (PENDING_WORDS words each) of `messages` (their indexes
    into the per-message columns) into `out`, row i for messages[i], in one pass: numpy
    made a structured array of them field by field and then copied it in."""
    cdef Py_ssize_t k = messages.shape[0], n = key.shape[0], i
    cdef int64_t j
    cdef uint64_t ts_bits
    if out.shape[0] != k or out.shape[1] != PENDING_WORDS:
        raise ValueError("out needs a row of %d words for each message" % PENDING_WORDS)
    if (loose.shape[0] != n or ts.shape[0] != n or resolver.shape[0] != n or leg.shape[0] != n
            or resolver.shape[1] != 2):
        raise ValueError("the columns differ in length")
    for i in range(k):
        j = messages[i]
        if j < 0 or j >= n:
            raise ValueError("message %d outside the columns" % j)
        memcpy(&ts_bits, &ts[j], 8)
        out[i, 0] = key[j]
        out[i, 1] = loose[j]
        out[i, 2] = ts_bits
        out[i, 3] = resolver[j, 0]
        out[i, 4] = resolver[j, 1]
        out[i, 5] = leg[j]
    return None


@cython.boundscheck(False)
@cython.wraparound(False)
def drop_rows(uint64_t[:, ::1] rows, const int64_t[::1] positions):
    """Remove the rows at `positions` (ascending, each once) in place, the rows after each
    moved up in runs (one memmove per run between two removed rows); returns how many rows
    are left, at the start. The tracker's pending table loses its answered queries so, where
    a copy of all the others cost a pass of numpy's take (262 k rows under a flood)."""
    cdef Py_ssize_t n = rows.shape[0], w = rows.shape[1], k = positions.shape[0], j
    cdef int64_t dst, src, stop, previous = -1
    for j in range(k):
        if positions[j] <= previous or positions[j] >= n:
            raise ValueError("positions must ascend inside the rows, each once")
        previous = positions[j]
    if k == 0:
        return n
    dst = positions[0]
    for j in range(k):
        src = positions[j] + 1
        stop = positions[j + 1] if j + 1 < k else n
        if stop > src:
            memmove(&rows[dst, 0], &rows[src, 0], <size_t>((stop - src) * w * 8))
            dst += stop - src
    return dst


DEF STATS_RCODES = 32
DEF STATS_QTYPES = 256
DEF STATS_STATES = 8


@cython.boundscheck(False)
@cython.wraparound(False)
def stats_counts(const uint8_t[::1] qr, const uint16_t[::1] rcode, const uint16_t[::1] qtype,
                 const uint32_t[::1] size, const int64_t[::1] group, Py_ssize_t ngroups,
                 const uint8_t[::1] state, const double[::1] rtt):
    """The per-minute stats counters of each group in one pass over the messages' qr,
    rcode, qtype and size columns (Batch.column).

    Returns (totals, rcodes, qtypes, states, rtt_ms, rare): totals[g] = queries,
    responses, query bytes, response bytes; rcodes[g, r] responses with rcode r
    (below 32), qtypes[g, t] queries of qtype t (below 256), states[g, s] messages
    in tracking state s (below 8); rtt_ms[g] the sum of the round-trip times that
    are not NaN, in milliseconds; rare marks the responses whose rcode and the
    queries whose qtype fell outside those tables.
    """
    cdef Py_ssize_t n = qr.shape[0], i
    if (rcode.shape[0] != n or qtype.shape[0] != n or size.shape[0] != n or group.shape[0] != n
            or state.shape[0] != n or rtt.shape[0] != n):
        raise ValueError("qr, rcode, qtype, size, group, state and rtt need one entry per message")
    if ngroups < 0:
        raise ValueError("ngroups must not be negative")
    totals_arr = np.zeros((ngroups, 4), dtype=np.int64)
    rcodes_arr = np.zeros((ngroups, STATS_RCODES), dtype=np.int64)
    qtypes_arr = np.zeros((ngroups, STATS_QTYPES), dtype=np.int64)
    states_arr = np.zeros((ngroups, STATS_STATES), dtype=np.int64)
    rtt_arr = np.zeros(ngroups, dtype=np.float64)
    rare_arr = np.zeros(n, dtype=np.bool_)
    cdef int64_t[:, ::1] totals = totals_arr
    cdef int64_t[:, ::1] rcodes = rcodes_arr
    cdef int64_t[:, ::1] qtypes = qtypes_arr
    cdef int64_t[:, ::1] states = states_arr
    cdef double[::1] rtt_ms = rtt_arr
    cdef uint8_t[::1] rare = rare_arr.view(np.uint8)
    cdef int64_t g
    cdef double r
    for i in range(n):
        g = group[i]
        if g < 0 or g >= ngroups:
            raise ValueError("group %d of message %d out of range" % (g, i))
        if qr[i] == 0:
            totals[g, 0] += 1
            totals[g, 2] += size[i]
            if qtype[i] < STATS_QTYPES:
                qtypes[g, qtype[i]] += 1
            else:
                rare[i] = 1
        else:
            totals[g, 1] += 1
            totals[g, 3] += size[i]
            if rcode[i] < STATS_RCODES:
                rcodes[g, rcode[i]] += 1
            else:
                rare[i] = 1
        if state[i] < STATS_STATES:
            states[g, state[i]] += 1
        r = rtt[i]
        if r == r:
            rtt_ms[g] += r * 1000.0
    return totals_arr, rcodes_arr, qtypes_arr, states_arr, rtt_arr, rare_arr


cdef inline double floor_div(double x, double d) noexcept nogil:
    """Python's float x // d for d > 0: the exact floor of x / d. The quotient's rounding
    can land on the next integer (a time just below a minute's end), so the candidate is
    checked against x with exact products (exact below 2**53)."""
    cdef double q = floor(x / d)
    if q * d > x:
        q -= 1.0
    elif (q + 1.0) * d <= x:
        q += 1.0
    return q


@cython.boundscheck(False)
@cython.wraparound(False)
def minute_keys(const int64_t[::1] minute, const uint64_t[:, ::1] words, const uint8_t[::1] tag=None):
    """Per message, the group key sensor.track.hash_columns(minute, words[:, 0], words[:, 1][,
    tag]) in one pass over the batch's minute column (message_windows), not its wide rows."""
    cdef Py_ssize_t n = minute.shape[0], i
    if words.shape[0] != n or (n and words.shape[1] != 2) or (tag is not None and tag.shape[0] != n):
        raise ValueError("words (two per message) and tag need one row per message")
    keys_arr = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] keys = keys_arr
    cdef bint tagged = tag is not None
    cdef uint64_t h
    for i in range(n):
        h = key_mix(key_mix(key_mix(<uint64_t>KEY_SEED, <uint64_t>minute[i]), words[i, 0]), words[i, 1])
        if tagged:
            h = key_mix(h, tag[i])
        keys[i] = key_finish(h)
    return keys_arr


@cython.boundscheck(False)
@cython.wraparound(False)
def message_windows(const double[::1] ts, int64_t window_s):
    """Per message (its ts column): the start of its window, ts // window_s * window_s
    (Python's float floor division), for window_s > 0 seconds."""
    cdef Py_ssize_t n = ts.shape[0], i
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    cdef double w = <double>window_s, x, q, lo = 1.0, hi = 0.0
    cdef int64_t start = 0
    out_arr = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] out = out_arr
    for i in range(n):
        x = ts[i]
        # A batch runs in time order, mostly within one window: [lo, hi) is the last
        # window met, exact products of w, so a time inside it needs no division.
        if not (lo <= x < hi):
            q = floor_div(x, w)
            lo = q * w
            hi = lo + w
            start = <int64_t>q * window_s
        out[i] = start
    return out_arr


@cython.boundscheck(False)
@cython.wraparound(False)
def regdom_columns(messages, const uint8_t[::1] arena):
    """Per message, in one pass: the arena offset and length of its question's registered
    domain (qname_off + regdom_off, qname_len - regdom_off or 0) and span_hashes' hash of it."""
    cdef Py_ssize_t n = len(messages), i
    cdef const MessageRow *msgs = message_rows(messages)
    off_arr = np.empty(n, dtype=np.uint32)
    len_arr = np.empty(n, dtype=np.uint32)
    hash_arr = np.empty(n, dtype=np.uint64)
    cdef uint32_t[::1] offs = off_arr
    cdef uint32_t[::1] lens = len_arr
    cdef uint64_t[::1] hashes = hash_arr
    cdef size_t size = arena.shape[0]
    cdef const uint8_t *base = &arena[0] if size else NULL
    cdef uint32_t off, length
    for i in range(n):
        regdom_span(&msgs[i], &off, &length)
        if <size_t>off + length > size:
            raise ValueError("message %d: registered domain outside the arena" % i)
        offs[i] = off
        lens[i] = length
        hashes[i] = span_hash(base + off, length)
    return off_arr, len_arr, hash_arr


DEF EVENT_ANSWERED = 1
DEF EVENT_DUPLICATE = 2


@cython.boundscheck(False)
@cython.wraparound(False)
def match_events(const uint64_t[::1] key, const double[::1] ts, const uint8_t[::1] is_response,
                 const int64_t[::1] order=None):
    """Query/response matching over one stream of events (sensor.track.Tracker): each
    response goes to the latest query before it with its key; the first response to a
    query answers it, later ones are duplicates; a query followed by a newer one with its
    key is superseded. Events are taken in `order`, or as given when that is already by
    time with queries before responses at equal times (returns None when `order` is
    needed and was not given).

    Returns (state, rtt, multi, unmatched, open): per event, state 1 answered or 2
    duplicate (responses; 0 otherwise), rtt (answered responses, seconds; NaN
    otherwise) and multi (a response to a query answered more than once); then the
    responses that matched no query and the queries still open (neither answered nor
    superseded), both in the order taken. One pass through one hash table of the keys.
    """
    cdef Py_ssize_t n = key.shape[0], i, k
    if ts.shape[0] != n or is_response.shape[0] != n or (order is not None and order.shape[0] != n):
        raise ValueError("key, ts, is_response and order need one entry per event")
    if order is None:
        for i in range(1, n):
            if ts[i] < ts[i - 1] or (ts[i] == ts[i - 1] and is_response[i] < is_response[i - 1]):
                return None
    slots_arr = new_slots(n)
    cdef uint64_t *slots = <uint64_t *><size_t>slots_arr.ctypes.data
    cdef uint64_t mask = <uint64_t>(slots_arr.shape[0] - 1)
    query_of_arr = np.full(n, -1, dtype=np.int64)     # response -> the query it matched
    replies_arr = np.zeros(n, dtype=np.int32)          # query -> responses it got
    superseded_arr = np.zeros(n, dtype=np.uint8)
    state_arr = np.zeros(n, dtype=np.uint8)
    rtt_arr = np.full(n, np.nan)
    multi_arr = np.zeros(n, dtype=np.bool_)
    unmatched_arr = np.empty(n, dtype=np.int64)
    open_arr = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] query_of = query_of_arr
    cdef int32_t[::1] replies = replies_arr
    cdef uint8_t[::1] superseded = superseded_arr
    cdef uint8_t[::1] state = state_arr
    cdef double[::1] rtt = rtt_arr
    cdef uint8_t[::1] multi = multi_arr.view(np.uint8)
    cdef int64_t[::1] unmatched = unmatched_arr
    cdef int64_t[::1] open_ = open_arr
    cdef Py_ssize_t nunmatched = 0, nopen = 0
    cdef int64_t e, q, ahead
    cdef uint64_t h, slot
    for i in range(n):
        if order is None:
            e = i
        else:
            e = order[i]
            if e < 0 or e >= n:
                raise ValueError("order names no event")
        if i + SLOT_PREFETCH < n:
            ahead = i + SLOT_PREFETCH if order is None else order[i + SLOT_PREFETCH]
            if 0 <= ahead < n:
                prefetch_slot(slots, mask, key[ahead])
        h = key[e]
        slot = probe(slots, mask, h)
        q = <int64_t>slots[2 * slot + 1] - 1          # the latest query with this key
        if not is_response[e]:
            if q != -1:
                superseded[q] = 1
            slots[2 * slot] = h
            slots[2 * slot + 1] = e + 1
        elif q == -1:
            unmatched[nunmatched] = e
            nunmatched += 1
        else:
            query_of[e] = q
            if replies[q] == 0:
                state[e] = EVENT_ANSWERED
                rtt[e] = ts[e] - ts[q]
            else:
                state[e] = EVENT_DUPLICATE
            replies[q] += 1
    for i in range(n):
        e = i if order is None else order[i]
        q = query_of[e]
        if q != -1:
            multi[e] = replies[q] > 1
        elif not is_response[e] and replies[e] == 0 and not superseded[e]:
            open_[nopen] = e
            nopen += 1
    return state_arr, rtt_arr, multi_arr, unmatched_arr[:nunmatched], open_arr[:nopen]


@cython.boundscheck(False)
@cython.wraparound(False)
def race_lookup(const uint64_t[::1] query_loose, const uint64_t[::1] query_key, const double[::1] query_ts,
                const uint64_t[::1] resp_loose, const double[::1] resp_ts):
    """For responses that matched no query (sensor.track.Tracker): whether a query with their
    question (loose key: client, server and question, not id or port) is outstanding, and
    the key of the query each raced: the latest with its question at or before it, else the
    earliest after it (0 when none). Queries and responses must each be in time order (a
    query goes before a response at equal times); returns None when they are not.

    One pass through both in time order, over one hash table of the responses' questions:
    a flood of spoofed answers is a few questions, looked up by every outstanding query."""
    cdef Py_ssize_t nq = query_loose.shape[0], nr = resp_loose.shape[0], i, j
    if query_key.shape[0] != nq or query_ts.shape[0] != nq or resp_ts.shape[0] != nr:
        raise ValueError("query_loose, query_key and query_ts (and resp_loose and resp_ts) need one entry each")
    for i in range(1, nq):
        if query_ts[i] < query_ts[i - 1]:
            return None
    for i in range(1, nr):
        if resp_ts[i] < resp_ts[i - 1]:
            return None
    slots_arr = new_slots(nr)
    cdef uint64_t *slots = <uint64_t *><size_t>slots_arr.ctypes.data
    cdef uint64_t mask = <uint64_t>(slots_arr.shape[0] - 1), slot
    slot_of_arr = np.empty(nr, dtype=np.int64)       # response -> its question's number
    cdef int64_t[::1] slot_of = slot_of_arr
    cdef Py_ssize_t nslots = 0
    for j in range(nr):
        slot = probe(slots, mask, resp_loose[j])
        if slots[2 * slot + 1] == 0:
            slots[2 * slot] = resp_loose[j]
            nslots += 1
            slots[2 * slot + 1] = nslots
        slot_of[j] = <int64_t>slots[2 * slot + 1] - 1
    latest_arr = np.zeros(nslots, dtype=np.uint64)    # per question: the latest query so far
    first_arr = np.zeros(nslots, dtype=np.uint64)     # per question: its first query
    seen_arr = np.zeros(nslots, dtype=np.uint8)
    asked_arr = np.zeros(nr, dtype=np.bool_)
    raced_arr = np.zeros(nr, dtype=np.uint64)
    cdef uint64_t[::1] latest = latest_arr
    cdef uint64_t[::1] first = first_arr
    cdef uint8_t[::1] seen = seen_arr
    cdef uint8_t[::1] asked = asked_arr.view(np.uint8)
    cdef uint64_t[::1] raced = raced_arr
    cdef int64_t s
    i = 0
    for j in range(nr + 1):
        # the queries up to this response's time (all of them after the last response)
        while i < nq and (j == nr or query_ts[i] <= resp_ts[j]):
            slot = probe(slots, mask, query_loose[i])
            if slots[2 * slot + 1] != 0:
                s = <int64_t>slots[2 * slot + 1] - 1
                if not seen[s]:
                    seen[s] = 1
                    first[s] = query_key[i]
                latest[s] = query_key[i]
            i += 1
        if j < nr:
            s = slot_of[j]
            if seen[s]:
                raced[j] = latest[s]
                asked[j] = 1
    for j in range(nr):
        s = slot_of[j]
        if not asked[j] and seen[s]:          # no query before it: the first one after
            raced[j] = first[s]
            asked[j] = 1
    return asked_arr, raced_arr


@cython.final
cdef class KeyIndex:
    """A growing set of 64-bit keys, each numbered by its arrival (its row): what a table
    held across batches looks its rows up in, without hashing every held key again for
    each batch. Open addressing at most half full (new_slots); `keys` are the keys by row."""

    cdef object _keys_arr           # uint64 by row; its first _size entries are used
    cdef object _slots_arr
    cdef uint64_t *_slots
    cdef uint64_t _mask
    cdef Py_ssize_t _size

    def __cinit__(self, keys=None):
        self._keys_arr = np.empty(16, dtype=np.uint64)
        self._size = 0
        self._rehash(8)
        if keys is not None:
            _, first = self.add(np.ascontiguousarray(keys, dtype=np.uint64))
            if len(first) != len(keys):
                raise ValueError("keys repeat: a row each is needed")

    def __len__(self):
        return self._size

    def __reduce__(self):
        return (KeyIndex, (self.keys.copy(),))

    @property
    def keys(self):
        """The keys by row (a view, valid until the next add)."""
        return self._keys_arr[:self._size]

    cdef int _rehash(self, Py_ssize_t rows_at_most) except -1:
        """A new table with room for rows_at_most keys, holding the rows so far."""
        slots_arr = new_slots(rows_at_most)
        cdef uint64_t *slots = <uint64_t *><size_t>slots_arr.ctypes.data
        cdef uint64_t mask = <uint64_t>(slots_arr.shape[0] - 1), slot
        cdef const uint64_t[::1] keys = self._keys_arr
        cdef Py_ssize_t r
        for r in range(self._size):
            slot = probe(slots, mask, keys[r])
            slots[2 * slot] = keys[r]
            slots[2 * slot + 1] = r + 1
        self._slots_arr, self._slots, self._mask = slots_arr, slots, mask
        return 0

    cdef inline int64_t row_of(self, uint64_t k) noexcept nogil:
        """The row of key k, -1 when it is not held."""
        return <int64_t>self._slots[2 * probe(self._slots, self._mask, k) + 1] - 1

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def find(self, const uint64_t[::1] values):
        """Row of each value, -1 where it is not held."""
        cdef Py_ssize_t n = values.shape[0], i
        out_arr = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] out = out_arr
        for i in range(n):
            out[i] = self.row_of(values[i])
        return out_arr

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def fold_times(self, const uint64_t[::1] values, const double[::1] ts, double[::1] first,
                   double[::1] last, int64_t[::1] count):
        """first, last and count are a table's columns, one row per key of this index (in
        its row order): each value held counts once into its key's row, its ts widening
        the row's first and last. Returns the positions of the values not held, in order."""
        cdef Py_ssize_t n = values.shape[0], i, nmissing = 0
        if ts.shape[0] != n:
            raise ValueError("values and ts need one entry each")
        if first.shape[0] < self._size or last.shape[0] < self._size or count.shape[0] < self._size:
            raise ValueError("first, last and count need a row for every key held")
        missing_arr = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] missing = missing_arr
        cdef int64_t r
        with nogil:
            for i in range(n):
                if i + SLOT_PREFETCH < n:
                    prefetch_slot(self._slots, self._mask, values[i + SLOT_PREFETCH])
                r = self.row_of(values[i])
                if r < 0:
                    missing[nmissing] = i
                    nmissing += 1
                    continue
                if ts[i] < first[r]:
                    first[r] = ts[i]
                if ts[i] > last[r]:
                    last[r] = ts[i]
                count[r] += 1
        return missing_arr[:nmissing]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def add(self, const uint64_t[::1] values):
        """The row of each value, keys not held taking the next rows in order of first
        appearance. Returns (rows, first): first is, for each new row, the position in
        `values` of the key's first appearance."""
        cdef Py_ssize_t n = values.shape[0], i
        rows_arr = np.empty(n, dtype=np.int64)
        first_arr = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] rows = rows_arr
        cdef int64_t[::1] first = first_arr
        cdef uint64_t[::1] keys = self._keys_arr
        cdef Py_ssize_t start = self._size
        cdef uint64_t k, slot
        cdef int64_t r
        for i in range(n):
            k = values[i]
            if i + SLOT_PREFETCH < n:
                prefetch_slot(self._slots, self._mask, values[i + SLOT_PREFETCH])
            slot = probe(self._slots, self._mask, k)
            r = <int64_t>self._slots[2 * slot + 1] - 1
            if r == -1:
                r = self._size
                if r == keys.shape[0]:              # rows full: twice as many
                    grown = np.empty(2 * r, dtype=np.uint64)
                    grown[:r] = self._keys_arr
                    self._keys_arr = grown
                    keys = grown
                keys[r] = k
                self._size += 1
                if 2 * self._size > <Py_ssize_t>(self._mask + 1):     # half full: twice the slots
                    self._rehash(2 * self._size)
                else:
                    self._slots[2 * slot] = k
                    self._slots[2 * slot + 1] = r + 1
                first[r - start] = i
            rows[i] = r
        return rows_arr, first_arr[:self._size - start]


@cython.boundscheck(False)
@cython.wraparound(False)
def network_index(const uint64_t[:, ::1] words, const uint64_t[:, ::1] masks, const uint64_t[:, ::1] prefixes):
    """Per address (two 64-bit words of its 16 bytes), the first network (mask and prefix,
    two words each) it is in, -1 when none: one pass, where numpy makes six per network."""
    cdef Py_ssize_t n = words.shape[0], m = masks.shape[0], i, j
    if words.shape[1] != 2 or masks.shape[1] != 2 or prefixes.shape[1] != 2 or prefixes.shape[0] != m:
        raise ValueError("addresses, masks and prefixes are two words each, a prefix per mask")
    out_arr = np.full(n, -1, dtype=np.int64)
    cdef int64_t[::1] out = out_arr
    cdef uint64_t w0, w1
    for i in range(n):
        w0 = words[i, 0]
        w1 = words[i, 1]
        for j in range(m):
            if (w0 & masks[j, 0]) == prefixes[j, 0] and (w1 & masks[j, 1]) == prefixes[j, 1]:
                out[i] = j
                break
    return out_arr


@cython.boundscheck(False)
@cython.wraparound(False)
def add_rows(int64_t[:, ::1] table, const int64_t[::1] rows, const int64_t[:, ::1] values):
    """table[rows[i]] += values[i] for every i, rows repeating or not (np.add.at's sum)."""
    cdef Py_ssize_t n = rows.shape[0], w = table.shape[1], i, c
    cdef int64_t r
    if values.shape[0] != n or (n and values.shape[1] != w):
        raise ValueError("values need one row of the table's width per row number")
    for i in range(n):
        r = rows[i]
        if r < 0 or r >= table.shape[0]:
            raise ValueError("row %d outside the table" % r)
        for c in range(w):
            table[r, c] += values[i, c]


@cython.boundscheck(False)
@cython.wraparound(False)
def sum_row_runs(const int64_t[:, ::1] table, const int64_t[::1] rows, const int64_t[::1] starts):
    """Per run of `rows` (run j from starts[j] to the next start, or to the end): the sum of
    those rows of `table`; np.add.reduceat(table[rows], starts, axis=0) without the copy of
    the rows, and a pass along each row instead of one down each column."""
    cdef Py_ssize_t n = rows.shape[0], g = starts.shape[0], w = table.shape[1], j, k, c, stop
    cdef int64_t r
    out_arr = np.zeros((g, w), dtype=np.int64)
    cdef int64_t[:, ::1] out = out_arr
    for j in range(g):
        stop = starts[j + 1] if j + 1 < g else n
        if starts[j] < 0 or stop > n or starts[j] >= stop:
            raise ValueError("runs must start in order inside the rows and be non-empty")
        for k in range(starts[j], stop):
            r = rows[k]
            if r < 0 or r >= table.shape[0]:
                raise ValueError("row %d outside the table" % r)
            for c in range(w):
                out[j, c] += table[r, c]
    return out_arr


@cython.boundscheck(False)
@cython.wraparound(False)
def count_messages(int64_t[:, ::1] table, const int64_t[::1] rows, const uint8_t[:] qr,
                   const uint16_t[:] rcode, const uint32_t[:] size):
    """Add each message to its row of a per-minute counters table (minute_counts' six
    columns: queries, responses, NXDOMAIN, SERVFAIL, query bytes, response bytes)."""
    cdef Py_ssize_t n = rows.shape[0], i
    cdef int64_t r
    cdef uint16_t rc
    if qr.shape[0] != n or rcode.shape[0] != n or size.shape[0] != n:
        raise ValueError("columns differ in length")
    if table.shape[1] != 6:
        raise ValueError("the table needs six columns")
    for i in range(n):
        r = rows[i]
        if r < 0 or r >= table.shape[0]:
            raise ValueError("row %d outside the table" % r)
        if qr[i] == 0:
            table[r, 0] += 1
            table[r, 4] += size[i]
        else:
            table[r, 1] += 1
            table[r, 5] += size[i]
            rc = rcode[i]
            if rc == 3:
                table[r, 2] += 1
            elif rc == 2:
                table[r, 3] += 1
