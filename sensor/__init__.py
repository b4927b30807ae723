"""Passive DNS sensor: capture, parse, track, detect, store."""
import os

# The sensor does no linear algebra, but numpy's OpenBLAS starts a thread per CPU in every
# process that imports it (each capture worker, the writer). They spin for a while,
# competing with the workers for cores, and once a process has a second thread glibc locks
# every stdio call, libpcap's reads of a capture file included (12 % slower here). Only
# read when numpy is imported, hence here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
