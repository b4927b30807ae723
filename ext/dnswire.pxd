# Declarations shared by the compiled parsing core (sensor._core, ext/_core.pyx).
# Row layouts mirror sensor/schema.py (MESSAGE_FIELDS, RR_FIELDS); the module
# checks sizeof() against the numpy dtypes when it is first used.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, int32_t

cdef struct MessageRow:
    double ts
    uint64_t frame
    uint8_t src[16]
    uint8_t dst[16]
    uint32_t rr_start
    uint32_t rr_count
    uint64_t anomalies
    uint64_t name_hash
    int64_t min_ttl
    uint32_t qname_off
    uint32_t size
    float entropy
    uint16_t qname_len
    uint16_t sport
    uint16_t dport
    uint16_t id
    uint16_t flags
    uint16_t rcode
    uint16_t qtype
    uint16_t qclass
    uint16_t qdcount
    uint16_t ancount
    uint16_t nscount
    uint16_t arcount
    uint16_t edns_udp_size
    uint16_t edns_options
    int32_t ede_code
    uint16_t digits
    uint16_t hexchars
    uint16_t uppers
    uint16_t regdom_off
    uint8_t ip_version
    uint8_t transport
    uint8_t qr
    uint8_t opcode
    uint8_t edns
    uint8_t edns_version
    uint8_t edns_do
    uint8_t case_differs
    uint8_t labels
    uint8_t longest_label
    uint8_t ecs_prefix
    uint8_t ip_ttl
    uint8_t pad[8]

cdef struct RRRow:
    uint32_t msg
    uint32_t name_off
    uint32_t rdata_off
    uint32_t rdata_len
    uint32_t ttl
    uint16_t name_len
    uint16_t type
    uint16_t rclass
    uint8_t section
    uint8_t pad

# The one bounds-checked cursor every wire read goes through. `end` is the
# current window (the whole message, or one RR's rdata); a read past it sets
# `short` and returns 0, so callers test one flag instead of every read.
cdef struct Cursor:
    const uint8_t *msg
    uint32_t msg_len
    uint32_t pos
    uint32_t end
    bint short

# What the link/network/transport decode found in one captured frame.
cdef struct PacketInfo:
    uint8_t src[16]
    uint8_t dst[16]
    uint32_t payload_off
    uint32_t payload_len
    uint64_t anomalies
    uint16_t sport
    uint16_t dport
    uint8_t ip_version
    uint8_t ip_ttl
    uint8_t transport
    uint8_t slow            # fragment or TCP: handled by the reassembly path
