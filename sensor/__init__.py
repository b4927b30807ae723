"""Passive DNS sensor: capture, parse, track, detect, store."""
import os

# The sensor does no linear algebra, but numpy's OpenBLAS starts a thread per CPU in every
# process that imports it (each capture worker, the writer) that spins for a while and
# competes with the workers for cores. Only read when numpy is imported, hence here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
