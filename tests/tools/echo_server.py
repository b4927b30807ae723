"""A TCP echo server on 127.0.0.1:7 for dns2tcp's resource, bounded to 60 s."""
import socket
import threading
import time

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 7))
srv.listen()
srv.settimeout(1.0)


def serve(conn):
    conn.settimeout(30)
    try:
        while data := conn.recv(4096):
            conn.sendall(data)
    except OSError:
        pass


end = time.monotonic() + 60
while time.monotonic() < end:
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        continue
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
