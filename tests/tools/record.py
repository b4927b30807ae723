"""Records DNS traffic on every interface of a namespace (pcapy, the "any" device) into a
pcap file until SIGTERM, or for at most 600 s.

    record.py OUTPUT
"""
import select
import signal
import sys
import time

import pcapy

stop = {"now": False}
signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
handle = pcapy.open_live("any", 65535, 0, 100)
handle.setfilter("port 53 or (ip and ip[6:2] & 0x3fff != 0)")
handle.setnonblock(1)
dumper = handle.dump_open(sys.argv[1])
print("recording", flush=True)
deadline = time.monotonic() + 600
while not stop["now"] and time.monotonic() < deadline:
    select.select([handle.getfd()], [], [], 0.2)
    while True:
        header, data = handle.next()
        if header is None:
            break
        dumper.dump(header, data)
while True:                       # what the ring still holds
    header, data = handle.next()
    if header is None:
        break
    dumper.dump(header, data)
dumper.close()
