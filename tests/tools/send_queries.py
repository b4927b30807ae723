"""Sends DNS queries (then malformed ones) from inside a test namespace and prints a JSON
summary. Bounded: one pass over the list, 2 s timeout per query.

    send_queries.py SERVER '{"queries": [["www.test", "A"]], "malformed": 10, "source": "10.77.0.3",
                             "interval_s": 0.2}'
"""
import json
import socket
import sys
import time

import dnslib

server, spec = sys.argv[1], json.loads(sys.argv[2])
out = {"sent": 0, "answered": 0, "rcodes": {}}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if spec.get("source"):
    s.bind((spec["source"], 0))
s.settimeout(2.0)
for name, qtype in spec["queries"]:
    q = dnslib.DNSRecord.question(name, qtype)
    s.sendto(q.pack(), (server, 53))
    out["sent"] += 1
    try:
        data, _ = s.recvfrom(4096)
        r = dnslib.DNSRecord.parse(data)
        out["answered"] += 1
        rc = dnslib.RCODE[r.header.rcode]
        out["rcodes"][rc] = out["rcodes"].get(rc, 0) + 1
    except socket.timeout:
        pass
    time.sleep(spec.get("interval_s", 0))
for i in range(spec.get("malformed", 0)):
    # the question name is a compression pointer to itself
    payload = bytes([0x12, i & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1])
    s.sendto(payload, (server, 53))
    out["sent"] += 1
    time.sleep(0.005)
print(json.dumps(out))
