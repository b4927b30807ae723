"""Workers to writer (sensor.engine.channel): a dead sender tears only its own message,
and a replaced writer gets every shipment its predecessor had not received whole."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import struct
import threading
import time

import pytest

from sensor.engine.channel import Inbox, Outbox, keep, kept_by, kept_files, new_address, read_kept


def receive_until(inbox: Inbox, count: int, timeout_s: float = 10.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got += inbox.receive(0.1)
    return got


def _dies_mid_message(address: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    # a length header for 100 000 bytes, then ten of them, then the process is gone
    sock.sendall(struct.pack("!I", 100_000) + b"x" * 10)
    os._exit(0)


def test_a_sender_dying_mid_message_tears_only_its_own():
    address = new_address()
    inbox = Inbox(address)
    healthy = Outbox(address, max_backlog=8)
    try:
        assert healthy.put({"n": 1})
        assert receive_until(inbox, 1) == [{"n": 1}]
        dying = mp.get_context("fork").Process(target=_dies_mid_message, args=(address,))
        dying.start()
        dying.join(10)
        for n in range(2, 6):
            assert healthy.put({"n": n})
        assert receive_until(inbox, 4) == [{"n": n} for n in range(2, 6)]
        assert wait_for(lambda: (inbox.receive(0.1), inbox.torn)[1] == 1)
    finally:
        assert healthy.close(5) == []
        inbox.close()


def test_a_replaced_writer_gets_everything_not_received_whole():
    address = new_address()
    first = Inbox(address)
    out = Outbox(address, max_backlog=100)
    try:
        assert out.put("a")
        assert receive_until(first, 1) == ["a"]
        first.close()
        for item in ("b", "c", "d"):                 # no writer listening now
            assert out.put(item)
        second = Inbox(address)
        assert receive_until(second, 3) == ["b", "c", "d"]
        assert out.close(5) == []
        second.close()
    finally:
        first.close()


def test_a_full_backlog_refuses_instead_of_blocking():
    address = new_address()                 # nobody listens: nothing is delivered
    out = Outbox(address, max_backlog=2)
    assert out.put(1) and out.put(2)
    t0 = time.monotonic()
    assert not out.put(3, wait_s=0.2)
    assert 0.15 < time.monotonic() - t0 < 5
    assert [pickle.loads(x) for x in out.close(0.3)] == [1, 2]


def test_a_backlog_is_full_at_its_size_too():
    """Under a flood of new names every shipment is large: the backlog is bounded by bytes
    as well as by count (64 shipments of a lagging writer's worker held gigabytes)."""
    address = new_address()                 # nobody listens: nothing is delivered
    out = Outbox(address, max_backlog=64, max_backlog_bytes=3 << 20)
    big = b"x" * (1 << 20)
    assert out.put(big) and out.put(big) and out.put(big)
    assert out.backlog_bytes > 3 << 20
    assert not out.put(big)                 # 3 shipments of 64, but 3 MiB of 3
    assert not out.put("small")
    assert len(out.close(0.3)) == 3
    out = Outbox(address, max_backlog=64, max_backlog_bytes=3 << 20)
    assert out.put(b"x" * (8 << 20))        # one shipment beyond the budget still goes
    assert not out.put("small")
    assert len(out.close(0.3)) == 1


def test_a_backlog_makes_room_as_it_delivers():
    address = new_address()
    out = Outbox(address, max_backlog=64, max_backlog_bytes=3 << 20)
    big = b"x" * (1 << 20)
    for _ in range(3):
        assert out.put(big)
    assert not out.put(big)
    inbox = Inbox(address)                  # the writer (re)starts and reads
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(receive_until(inbox, 4)))
    reader.start()
    try:
        assert out.put(big, wait_s=10)      # room as soon as one is delivered
        reader.join(15)
        assert len(got) == 4
        assert wait_for(lambda: out.backlog_bytes == 0)
        assert out.close(5) == []
    finally:
        inbox.close()


BIG = b"x" * (16 << 20)                     # far past a socket's buffer: its send blocks


def _gives_up_on_a_stalled_writer(address: str, folder: str, keeps: bool) -> None:
    out = Outbox(address, max_backlog=8)
    assert out.put(BIG) and out.put("behind")
    time.sleep(0.5)                         # connected, and stuck in the first send
    t0 = time.monotonic()
    left = out.close(0.5)
    assert time.monotonic() - t0 < 5
    assert [pickle.loads(x) for x in left] == [BIG, "behind"]
    if keeps:
        keep(folder, "eth0/0", left)


@pytest.mark.parametrize("keeps", [True, False])
def test_a_shipment_cut_off_at_close_is_handed_back_and_lost_only_if_not_kept(tmp_path, keeps):
    """The writer stalls (alive, reading nothing) with a shipment half written into its
    socket: the sender's close() gives up on it and hands it back with the one behind it.
    The writer, reading again, drops the cut-off copy (no shipment stored twice) and
    counts it lost only once the sender is gone without having kept it on disk."""
    address = new_address()
    inbox = Inbox(address, kept_folder=str(tmp_path))     # listening, reading nothing yet
    try:
        sender = mp.get_context("fork").Process(target=_gives_up_on_a_stalled_writer,
                                                 args=(address, str(tmp_path), keeps))
        sender.start()
        sender.join(30)
        assert sender.exitcode == 0
        assert receive_until(inbox, 1, timeout_s=2) == []
        assert inbox.torn == (0 if keeps else 1) and inbox.cut_off == []
    finally:
        inbox.close()


def test_a_cut_off_is_judged_once_its_sender_is_gone():
    address = new_address()
    inbox = Inbox(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    sock.sendall(struct.pack("!I", 100) + b"x" * 10)
    sock.shutdown(socket.SHUT_RDWR)         # as a sender giving up: this process lives on
    try:
        assert receive_until(inbox, 1, timeout_s=1) == []
        assert inbox.torn == 0 and inbox.cut_off == [os.getpid()]      # it may still keep it
    finally:
        sock.close()
        inbox.close()


def test_kept_shipments_read_back_in_order_and_a_cut_file_is_refused(tmp_path):
    first = keep(str(tmp_path / "spool"), "eth0/0", [pickle.dumps({"n": 1}), pickle.dumps({"n": 2})])
    time.sleep(0.01)
    second = keep(str(tmp_path / "spool"), "eth0/1", [pickle.dumps({"n": 3})])
    assert os.stat(tmp_path / "spool").st_mode & 0o777 == 0o700
    assert os.stat(first).st_mode & 0o777 == 0o600
    assert [path for path, _ in kept_files(str(tmp_path / "spool"))] == [first, second]
    assert list(read_kept(first)) == [{"n": 1}, {"n": 2}] and list(read_kept(second)) == [{"n": 3}]
    whole = open(first, "rb").read()
    for cut in (3, len(whole) - 1):
        with open(first, "wb") as f:
            f.write(whole[:cut])
        with pytest.raises(ValueError, match="cut off"):
            list(read_kept(first))
    with open(first, "wb") as f:
        f.write(struct.pack("!I", 5) + b"junk!")
    with pytest.raises(ValueError, match="not a shipment"):
        list(read_kept(first))
    assert not list((tmp_path / "spool").glob("*.part"))
    assert kept_by(str(tmp_path / "spool"), os.getpid())
    for path in (first, second):
        os.rename(path, path + ".part")     # as files a killed process had not finished
    assert not kept_by(str(tmp_path / "spool"), os.getpid())


def _connects_as_nobody(address: str) -> None:
    os.setgid(65534)
    os.setuid(65534)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    data = pickle.dumps("forged")
    sock.sendall(struct.pack("!I", len(data)) + data)
    time.sleep(1.0)
    os._exit(0)


def test_a_peer_running_as_another_user_is_refused():
    if os.getuid() != 0:
        pytest.skip("needs root (to send as another user)")
    address = new_address()
    inbox = Inbox(address)
    try:
        stranger = mp.get_context("fork").Process(target=_connects_as_nobody, args=(address,))
        stranger.start()
        assert receive_until(inbox, 1, timeout_s=1.5) == []
        stranger.join(10)
        assert inbox.refused == 1 and inbox.last_refused == (stranger.pid, 65534)
        friend = Outbox(address, max_backlog=4)
        friend.put("real")
        assert receive_until(inbox, 1) == ["real"]
        assert friend.close(5) == []
    finally:
        inbox.close()


def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
    return False
