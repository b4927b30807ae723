"""Pushes bounded traffic through a tunnel from inside a test namespace, then exits.

    tunnel_traffic.py udp 10.99.0.1 20      # 20 UDP datagrams through an iodine tun
    tunnel_traffic.py tcp 127.0.0.1:4444 5  # 5 round trips through dns2tcp's local port
"""
import socket
import sys
import time

mode, target, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = bytes(range(256)) * 2
deadline = time.monotonic() + 60
if mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(count):
        s.sendto(payload, (target, 9))
        time.sleep(0.2)
else:
    host, port = target.split(":")
    s = socket.create_connection((host, int(port)), timeout=20)
    s.settimeout(20)
    echoed = 0
    for _ in range(count):
        s.sendall(payload[:300])
        got = b""
        while len(got) < 300 and time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        echoed += len(got)
    print(echoed)
