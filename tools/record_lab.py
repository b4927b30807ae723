"""Record the demo capture from the project's lab (root): tests/data/lab-resolver.pcap.

Runs the lab of tests/lab.py (unbound, iodined, dns2tcpd and their clients in network
namespaces, all on this machine, nothing addressed outside them) and records, on the
resolver, benign look-ups, iodine in NULL and TXT mode, dns2tcp, an exfiltration in
base32 labels, off-net use of the resolver and a forged-response flood. Every byte is made
by the lab's own programs: no third-party capture is involved.

    sudo python tools/record_lab.py [OUTPUT]
"""
from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from lab import Lab  # noqa: E402

OUT = REPO / "tests" / "data" / "lab-resolver.pcap"


def main(out: Path) -> int:
    folder = Path(tempfile.mkdtemp(prefix="dnssensor-record-"))
    lab = Lab(folder, "dsrec")
    try:
        lab.start()
        recording = folder / "lab.pcap"
        recorder = lab.top.spawn(lab.r, [sys.executable, str(REPO / "tests" / "tools" / "record.py"), str(recording)],
                                 stdout=open(folder / "record.log", "w"))
        time.sleep(1.0)
        lab.benign()
        lab.iodine("t1.test", "NULL", "10.99.0.1")
        lab.benign()
        lab.iodine("t3.test", "TXT", "10.98.0.1")
        lab.dns2tcp()
        lab.exfil(count=150, interval_s=0.1)
        lab.offnet()
        lab.flood(200)
        lab.benign()
        time.sleep(1.0)
        recorder.send_signal(signal.SIGTERM)
        recorder.wait(30)
        shutil.copyfile(recording, out)
        print(f"wrote {out}: {out.stat().st_size:,} bytes")
    finally:
        lab.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
