"""Type stub for the compiled frame reader (ext/_frames.pyx)."""
import numpy as np

READ_MORE: int
READ_END: int
READ_ERROR: int
PLAIN_CAPLEN_MAX: int
FIRST_RECORD_GUESS: int

class FrameReader:
    def __init__(self, next_ex: int, handle: int) -> None:
        """next_ex: the address of libpcap's pcap_next_ex; handle: the pcap_t it reads."""
    @property
    def waiting_bytes(self) -> int: ...
    @property
    def failure(self) -> str | None:
        """Why the last READ_ERROR came from the in-place walk itself (None: libpcap's)."""
    def records_in_place(self, stream: int, snapshot: int, nanoseconds: bool) -> None:
        """Read the rest of a classic pcap file in place, from libpcap's FILE (pcap_file)."""
    def read(self, max_frames: int, max_bytes: int) -> tuple[bytes, np.ndarray, int]:
        """Up to max_frames frames and max_bytes of them: (blob, meta rows of sec, usec,
        offset, caplen as uint32, status)."""
