"""Write the generated rule samples in tests/data (deterministic, byte for byte).

- generated-water-torture.pcap: thirty clients of a resolver (10.3.0.53) send
  1200 random-label queries under victim.example within a minute; every answer is
  NXDOMAIN, on the client leg and on the resolver's upstream leg (198.51.100.53).
- generated-malware-lookups.pcap: an office client looking up three hosts of
  rules/lists/urlhaus.hosts (the first three) among ordinary names.
- generated-dga-client.pcap: an infected client cycling through names from a
  seeded random-letter generator written here (in the style of tinba or ramdo, not
  taken from any dataset): NXDOMAIN for all but the one that is registered.
- generated-slow-exfil.pcap: low and slow: one client sends a file in base32 labels
  under drop.example, one query every five seconds for an hour (A queries, so the
  data-carrying-type test of the tunnel rule does not help).
- generated-poisoned-race.pcap: the resolver's upstream query for bank.example is
  answered twice with its own id and port: first by a forged response (another
  address, long TTL, and an IP TTL the real server never shows), then by the real one.
- generated-out-of-bailiwick.pcap: the resolver asks an attacker's server about its own
  name (www.attacker.example) and the answer carries records for another domain: an NS
  set for bank.example and an address for www.bank.example (the pre-Kaminsky
  out-of-bailiwick poisoning), beside an ordinary referral with in-zone glue from a
  well-behaved server, which must stay quiet.
- generated-av-reputation-lookups.pcap: what must stay quiet: a mail server's
  DNSBL lookups (reversed IPv4 addresses, mostly NXDOMAIN) and an anti-virus
  engine's file-hash reputation lookups (32-hex-digit labels, A queries) through
  the same resolver, at a busy mail server's pace.
- generated-browser-intranet-probes.pcap: what must stay quiet too: 150 office
  clients starting their browsers within ten minutes, each sending three random
  single-label names (to detect NXDOMAIN hijacking) that its stub also tries under two
  search domains; all NXDOMAIN, on both legs.

- generated-odd-but-legitimate.pcap: more that must stay quiet: an admin's PTR sweep
  of a /23 (nearly all NXDOMAIN), search-domain expansion (each name NXDOMAIN under two
  search domains before it resolves), and CDN, cloud load-balancer and telemetry names
  with random-looking labels.
- generated-one-way-validating-resolver.pcap: quiet as well: a span port that mirrors one
  direction only, so a DNSSEC-validating resolver of the site (10.3.0.60) is seen receiving
  large answers from its two forwarders with no query before them: DNSKEY sets (about
  1.3 KB each) for 260 different zones within a minute, and some small address answers.
- generated-mail-authentication.pcap: quiet too: a mail server checking the senders of
  250 messages in five minutes (SPF, DMARC and DKIM TXT look-ups). Bulk senders' DKIM
  selectors are 32-character tokens, and every message comes from another domain, so the
  names are long-labelled, TXT, and almost never share a registered domain. The sender
  domains need real top-level domains here (made-up names, never resolved).
- generated-service-names.pcap: quiet as well: names with service labels. Thirty domain
  members logging on within five minutes, each locating its domain controllers by SRV
  under a 34-character AD site name (_ldap._tcp.<site>._sites.dc._msdcs.corp.example, ...),
  and a busy mail server asking a reputation service about the base32 SHA-256 hashes of
  attachments and addresses (<hash>._file.<key>.hbl.reputation.example), 150 a minute,
  nearly all NXDOMAIN; and Macs finding the office printers by unicast DNS-SD (SRV and TXT
  for instance names with spaces and parentheses, which the text form escapes).
- generated-av-cloud-lookups.pcap: quiet too: forty endpoints of an anti-virus fleet asking
  its cloud about the files they open, each an MD5 in base32 (26 characters, about as
  random as encoded data) under the vendor's domain (avqs.mcafee.com, as McAfee GTI does),
  800 in four minutes; unknown files come back NXDOMAIN.
- generated-cluster-search-domains.pcap: quiet as well: the two DNS pods of a Kubernetes
  cluster (ndots:5) forwarding what the pods look up outside it: each external name is
  tried under the nodes' two search domains first (NXDOMAIN for
  api3.payments-cloud.com.corp.example, ...), 1200 such failures a minute, then answered.
- generated-lossy-nat-client.pcap: quiet too: a NAT gateway's many users asking the resolver
  for the same few names, 100 queries a second, on a capture that lost 3 % of the queries:
  the answers to the lost ones arrive while other queries for the same name are
  outstanding, so they look like answers with the wrong id or port, racing one each.

The resolver's own upstream queries are iterative (RD clear), as a resolver sends them.

Addresses are private or documentation ranges; names are under .example, except the mail
senders, the anti-virus vendor and the cluster's external names above (made up, never
resolved).

    python tools/rule_samples.py [OUTPUT_DIR]
"""
from __future__ import annotations

import base64
import hashlib
import random
import sys
from pathlib import Path

import dnslib

from pcapwrite import frame, write

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
RESOLVER, RESOLVER_UP, AUTH = "10.3.0.53", "198.51.100.53", "192.0.2.53"
START = 1_767_344_400.0            # 2026-01-02 09:00 UTC


def exchange(frames, rng, ts: float, client: str, name: str, qtype: str, answer: str | None,
             upstream: bool) -> None:
    """A client query, optionally the resolver's upstream round trip, and the answer."""
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=rng.randint(0, 65535), rd=1),
                         q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)))
    sport = rng.randint(20000, 60000)
    frames.append((ts, frame(q.pack(), client, RESOLVER, sport, 53)))
    delay = 0.0005
    r = q.reply()
    if answer is None:
        r.header.rcode = dnslib.RCODE.NXDOMAIN
    else:
        r.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(answer), ttl=300))
    if upstream:
        # a resolver asks iteratively: recursion not desired
        uq = dnslib.DNSRecord(dnslib.DNSHeader(id=rng.randint(0, 65535), rd=0),
                              q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)))
        usport = rng.randint(1024, 65535)
        frames.append((ts + 0.0002, frame(uq.pack(), RESOLVER_UP, AUTH, usport, 53)))
        ur = uq.reply()
        ur.header.rcode = r.header.rcode
        for rr in r.rr:
            ur.add_answer(rr)
        delay = rng.uniform(0.01, 0.04)
        frames.append((ts + 0.0002 + delay, frame(ur.pack(), AUTH, RESOLVER_UP, 53, usport)))
        delay += 0.0005
    frames.append((ts + delay, frame(r.pack(), RESOLVER, client, 53, sport)))


def cached_answer(frames, rng, ts: float, client: str, name, qtype: str, records=(), delay: float = 0.001) -> None:
    """A client's query and the resolver's answer from its cache (not authoritative)."""
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=rng.randint(0, 65535), rd=1),
                         q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)))
    r = q.reply()
    r.header.aa = 0
    for rr in records:
        r.add_answer(rr)
    sport = rng.randint(20000, 60000)
    frames.append((ts, frame(q.pack(), client, RESOLVER, sport, 53)))
    frames.append((ts + delay, frame(r.pack(), RESOLVER, client, 53, sport)))


def water_torture(out: Path) -> None:
    rng = random.Random(7)
    frames: list[tuple[float, bytes]] = []
    bots = [f"10.3.{1 + i // 200}.{10 + i % 200}" for i in range(30)]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    for i in range(1200):
        label = "".join(rng.choice(letters) for _ in range(rng.randint(10, 16)))
        exchange(frames, rng, START + i * 0.047, rng.choice(bots), f"{label}.victim.example", "A", None, True)
    write(out / "generated-water-torture.pcap", frames)


def browser_probes(out: Path) -> None:
    rng = random.Random(19)
    frames: list[tuple[float, bytes]] = []
    letters = "abcdefghijklmnopqrstuvwxyz"
    # An office starting its browsers: each start (and each network change) sends three
    # single-label names of 7 to 15 random letters to see whether the network hijacks
    # NXDOMAIN; each client's stub tries them under its two search domains first.
    for c in range(150):
        client = f"10.3.{4 + c // 200}.{10 + c % 200}"
        start = START + rng.uniform(0, 600)
        for k in range(3):
            label = "".join(rng.choice(letters) for _ in range(rng.randint(7, 15)))
            for j, suffix in enumerate(("office.example.com", "example.com", "")):
                name = f"{label}.{suffix}" if suffix else label
                exchange(frames, rng, start + k * 0.01 + j * 0.003, client, name, "A", None, True)
    write(out / "generated-browser-intranet-probes.pcap", sorted(frames))


def av_reputation(out: Path) -> None:
    rng = random.Random(11)
    frames: list[tuple[float, bytes]] = []
    mail = "10.3.0.25"
    for i in range(600):
        ts = START + i * 0.09
        if i % 2:
            ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
            listed = rng.random() < 0.05
            exchange(frames, rng, ts, mail, f"{ip}.dnsbl.example", "A", "127.0.0.2" if listed else None, True)
        else:
            digest = hashlib.md5(f"attachment-{i}".encode()).hexdigest()
            known = rng.random() < 0.3
            exchange(frames, rng, ts, mail, f"{digest}.files.av-reputation.example", "A",
                     "127.0.0.1" if known else None, True)
    write(out / "generated-av-reputation-lookups.pcap", frames)


def malware_lookups(out: Path) -> None:
    rng = random.Random(13)
    frames: list[tuple[float, bytes]] = []
    listed = [line.split()[1] for line in (Path(__file__).resolve().parent.parent / "rules" / "lists" /
                                           "urlhaus.hosts").read_text().splitlines()
              if line and not line.startswith("#")][:3]
    ordinary = ["www.example.com", "mail.example.org", "intranet.example.net"]
    for i in range(60):
        name = listed[i // 20] if i % 20 == 7 else ordinary[i % 3]
        exchange(frames, rng, START + i * 1.5, "10.3.0.77", name, "A", f"203.0.113.{i + 1}", i % 4 == 0)
    write(out / "generated-malware-lookups.pcap", frames)


def dga_client(out: Path) -> None:
    rng = random.Random(17)
    frames: list[tuple[float, bytes]] = []
    letters = "abcdefghijklmnopqrstuvwxyz"
    for i in range(40):
        name = "".join(rng.choice(letters) for _ in range(12)) + rng.choice([".com", ".net", ".org"])
        answer = "198.51.100.66" if i == 37 else None
        exchange(frames, rng, START + i * 7.0, "10.3.0.99", name, "A", answer, True)
        exchange(frames, rng, START + i * 7.0 + 3.0, "10.3.0.99", "www.example.com", "A", "203.0.113.10", False)
    write(out / "generated-dga-client.pcap", frames)


def slow_exfil(out: Path) -> None:
    import base64

    rng = random.Random(19)
    frames: list[tuple[float, bytes]] = []
    secret = bytes(rng.randrange(256) for _ in range(720 * 25))
    for i in range(720):
        chunk = base64.b32encode(secret[i * 25:(i + 1) * 25]).decode().lower().rstrip("=")
        name = f"{chunk}.{i:x}.drop.example"
        exchange(frames, rng, START + i * 5.0, "10.3.0.42", name, "A", "192.0.2.1", True)
    write(out / "generated-slow-exfil.pcap", frames)


def poisoned_race(out: Path) -> None:
    frames: list[tuple[float, bytes]] = []
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=4711, rd=0), q=dnslib.DNSQuestion("bank.example"))
    frames.append((START, frame(q.pack(), RESOLVER_UP, AUTH, 40404, 53)))
    forged = q.reply()
    forged.add_answer(dnslib.RR("bank.example", rdata=dnslib.A("198.18.0.66"), ttl=604800))
    frames.append((START + 0.004, frame(forged.pack(), AUTH, RESOLVER_UP, 53, 40404, ttl=47)))
    real = q.reply()
    real.add_answer(dnslib.RR("bank.example", rdata=dnslib.A("192.0.2.80"), ttl=300))
    frames.append((START + 0.021, frame(real.pack(), AUTH, RESOLVER_UP, 53, 40404)))
    write(out / "generated-poisoned-race.pcap", frames)


def out_of_bailiwick(out: Path) -> None:
    frames: list[tuple[float, bytes]] = []
    attacker, honest = "198.18.0.53", AUTH
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=3131, rd=0), q=dnslib.DNSQuestion("www.attacker.example"))
    frames.append((START, frame(q.pack(), RESOLVER_UP, attacker, 41414, 53)))
    r = q.reply()
    r.add_answer(dnslib.RR("www.attacker.example", rdata=dnslib.A("198.18.0.80"), ttl=300))
    r.add_auth(dnslib.RR("bank.example", dnslib.QTYPE.NS, rdata=dnslib.NS("ns.attacker.example"), ttl=604800))
    r.add_ar(dnslib.RR("ns.attacker.example", rdata=dnslib.A("198.18.0.53"), ttl=604800))
    r.add_ar(dnslib.RR("www.bank.example", rdata=dnslib.A("198.18.0.66"), ttl=604800))
    frames.append((START + 0.012, frame(r.pack(), attacker, RESOLVER_UP, 53, 41414)))
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=3132, rd=0), q=dnslib.DNSQuestion("www.shop.example"))
    frames.append((START + 0.1, frame(q.pack(), RESOLVER_UP, honest, 41415, 53)))
    r = q.reply()
    r.header.aa = 0
    r.add_auth(dnslib.RR("shop.example", dnslib.QTYPE.NS, rdata=dnslib.NS("ns1.shop.example"), ttl=86400))
    r.add_auth(dnslib.RR("shop.example", dnslib.QTYPE.NS, rdata=dnslib.NS("ns.dns-host.example"), ttl=86400))
    r.add_ar(dnslib.RR("ns1.shop.example", rdata=dnslib.A("192.0.2.54"), ttl=86400))
    r.add_ar(dnslib.RR("ns.dns-host.example", rdata=dnslib.A("192.0.2.55"), ttl=86400))
    frames.append((START + 0.13, frame(r.pack(), honest, RESOLVER_UP, 53, 41415)))
    write(out / "generated-out-of-bailiwick.pcap", frames)


def odd_but_legitimate(out: Path) -> None:
    rng = random.Random(23)
    frames: list[tuple[float, bytes]] = []
    # An admin's reverse sweep of 10.4.0.0/23: PTR look-ups, nearly all NXDOMAIN.
    for i in range(512):
        ip = f"10.4.{i // 256}.{i % 256}"
        exchange(frames, rng, START + i * 0.02, "10.3.0.40", ".".join(reversed(ip.split("."))) + ".in-addr.arpa",
                 "PTR", "192.0.2.1" if i % 50 == 0 else None, True)
    # Search-domain expansion: each name tried under two search domains first.
    names = ["api.github.example", "login.office365.example", "registry.npm.example", "files.pypi.example"]
    for c in range(10):
        for i in range(20):
            t, name, client = START + 20 + c * 2 + i * 6.0, rng.choice(names), f"10.3.2.{10 + c}"
            exchange(frames, rng, t, client, f"{name}.office.example.com", "A", None, True)
            exchange(frames, rng, t + 0.005, client, f"{name}.example.com", "A", None, True)
            exchange(frames, rng, t + 0.01, client, name, "A", f"203.0.113.{i + 1}", False)
    # CDN, cloud and telemetry names with random-looking labels, answered.
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    for i in range(600):
        kind = i % 4
        if kind == 0:
            name = f"e{rng.randint(1000, 99999)}.a.cdn-edge.example"
        elif kind == 1:
            name = "d" + "".join(rng.choice(alnum) for _ in range(13)) + ".cloudfront.example"
        elif kind == 2:
            name = f"{uuid_text(rng)}.events.telemetry.example"
        else:
            name = f"internal-app-lb-{rng.randint(10 ** 9, 10 ** 10)}.eu-west-1.elb.example"
        exchange(frames, rng, START + 40 + i * 0.4, f"10.3.3.{10 + i % 40}", name, "A", f"198.51.100.{i % 250 + 1}",
                 i % 3 == 0)
    write(out / "generated-odd-but-legitimate.pcap", sorted(frames))


def one_way_validating_resolver(out: Path) -> None:
    rng = random.Random(29)
    frames: list[tuple[float, bytes]] = []
    resolver, forwarders = "10.3.0.60", ("203.0.113.53", "203.0.113.54")
    words = ["shop", "news", "bank", "mail", "cloud", "media", "school", "city", "travel", "games"]
    for i in range(260):
        zone = f"{words[i % len(words)]}{i}.example"
        q = dnslib.DNSRecord(dnslib.DNSHeader(id=rng.randint(0, 65535), rd=1),
                             q=dnslib.DNSQuestion(zone, dnslib.QTYPE.DNSKEY))
        r = q.reply()
        r.header.aa = 0                   # a forwarder's answer, from its cache
        for flags, algorithm, key_bytes in ((257, 8, 260), (256, 8, 260), (256, 13, 64)):
            r.add_answer(dnslib.RR(zone, dnslib.QTYPE.DNSKEY, ttl=3600,
                                   rdata=dnslib.DNSKEY(flags, 3, algorithm, rng.randbytes(key_bytes))))
        for key_tag in (rng.randint(1, 65535), rng.randint(1, 65535)):
            r.add_answer(dnslib.RR(zone, dnslib.QTYPE.RRSIG, ttl=3600, rdata=dnslib.RRSIG(
                dnslib.QTYPE.DNSKEY, 8, 2, 3600, int(START) + 14 * 86400, int(START) - 14 * 86400,
                key_tag, zone, rng.randbytes(256))))
        r.add_ar(dnslib.EDNS0(udp_len=1232, flags="do"))
        t = START + i * 0.23
        frames.append((t, frame(r.pack(), forwarders[i % 2], resolver, 53, rng.randint(1024, 65535))))
        if i % 4:
            continue
        a = dnslib.DNSRecord(dnslib.DNSHeader(id=rng.randint(0, 65535), qr=1, rd=1, ra=1),
                             q=dnslib.DNSQuestion(f"www.{zone}", dnslib.QTYPE.A))
        a.add_answer(dnslib.RR(f"www.{zone}", dnslib.QTYPE.A, rdata=dnslib.A(f"198.51.100.{i % 250 + 1}"), ttl=300))
        frames.append((t + 0.1, frame(a.pack(), forwarders[i % 2], resolver, 53, rng.randint(1024, 65535))))
    write(out / "generated-one-way-validating-resolver.pcap", frames)


def mail_authentication(out: Path) -> None:
    rng = random.Random(31)
    frames: list[tuple[float, bytes]] = []
    mail = "10.3.0.25"
    words = ["shop", "news", "billing", "travel", "events", "alerts", "offers", "team", "club", "store"]
    base32 = "abcdefghijklmnopqrstuvwxyz234567"
    for i in range(250):
        sender = f"{words[i % len(words)]}-mailer{i}.{('com', 'net', 'org', 'de', 'co.uk')[i % 5]}"
        selector = "".join(rng.choice(base32) for _ in range(32))
        key = base64.b64encode(rng.randbytes(162)).decode()
        ts = START + i * 1.2
        for k, (name, text) in enumerate(((sender, "v=spf1 include:mail-provider.example ~all"),
                                          (f"_dmarc.{sender}", "v=DMARC1; p=quarantine"),
                                          (f"{selector}._domainkey.{sender}", f"v=DKIM1; k=rsa; p={key}"))):
            cached_answer(frames, rng, ts + k * 0.01, mail, name, "TXT",
                          [dnslib.RR(name, dnslib.QTYPE.TXT, rdata=dnslib.TXT(text), ttl=3600)], delay=0.004)
    write(out / "generated-mail-authentication.pcap", frames)


def service_names(out: Path) -> None:
    rng = random.Random(37)
    frames: list[tuple[float, bytes]] = []
    site, domain = "Amsterdam-Datacenter-Primary-Site", "corp.example"
    locator = [f"_ldap._tcp.{site}._sites.dc._msdcs.{domain}", f"_kerberos._tcp.{site}._sites.dc._msdcs.{domain}",
               f"_ldap._tcp.{site}._sites.{domain}", f"_kerberos._tcp.{site}._sites.{domain}",
               f"_gc._tcp.{site}._sites.{domain}", f"_ldap._tcp.dc._msdcs.{domain}",
               f"_ldap._tcp.pdc._msdcs.{domain}", f"_kerberos._udp.{domain}", f"_kpasswd._tcp.{domain}"]
    for c in range(30):
        client, logon = f"10.3.5.{10 + c}", START + rng.uniform(0, 300)
        for k, name in enumerate(locator):
            cached_answer(frames, rng, logon + k * 0.002, client, name, "SRV",
                          [dnslib.RR(name, dnslib.QTYPE.SRV, ttl=600, rdata=dnslib.SRV(0, 100, 389, f"dc1.{domain}"))])
    mail = "10.3.0.25"
    for i in range(600):
        digest = base64.b32encode(hashlib.sha256(f"attachment-{i}".encode()).digest()).decode().rstrip("=").lower()
        kind = ("_file", "_email", "_cw")[i % 3]
        exchange(frames, rng, START + i * 0.4, mail, f"{digest}.{kind}.dq7kx2.hbl.reputation.example", "A",
                 "127.0.3.2" if rng.random() < 0.02 else None, False)
    printers = ["HP LaserJet Pro MFP M428fdw (4A6B2C)", "Brother MFC-L8900CDW series (3rd floor)",
                "Canon iR-ADV C5535 (Reception Desk)"]
    for c in range(20):
        client, ts = f"10.3.5.{100 + c}", START + 20 + c * 7.0
        for k, printer in enumerate(printers):
            name = dnslib.DNSLabel([printer.encode(), b"_ipp", b"_tcp", b"corp", b"example"])
            for j, qtype in enumerate(("SRV", "TXT")):
                cached_answer(frames, rng, ts + k * 0.01 + j * 0.003, client, name, qtype)
    write(out / "generated-service-names.pcap", sorted(frames))


def av_cloud_lookups(out: Path) -> None:
    rng = random.Random(41)
    frames: list[tuple[float, bytes]] = []
    for i in range(800):
        digest = base64.b32encode(hashlib.md5(f"file-{i}".encode()).digest()).decode().rstrip("=").lower()
        known = rng.random() < 0.8
        exchange(frames, rng, START + i * 0.3, f"10.3.6.{10 + i % 40}", f"{digest}.avqs.mcafee.com", "A",
                 "127.0.0.1" if known else None, False)
    write(out / "generated-av-cloud-lookups.pcap", frames)


def cluster_search_domains(out: Path) -> None:
    rng = random.Random(43)
    frames: list[tuple[float, bytes]] = []
    services = ["payments-cloud", "pkg-registry", "container-hub", "auth-provider", "metrics-saas",
                "object-store", "mail-relay", "feature-flags", "error-tracker", "chat-hooks"]
    hosts = ["api", "www", "cdn", "auth", "registry", "hooks", "events", "login", "static", "files"]
    for i in range(400):
        name = f"{rng.choice(hosts)}{rng.randint(1, 40)}.{rng.choice(services)}.{rng.choice(['com', 'io', 'net'])}"
        client, ts = f"10.3.7.{10 + i % 2}", START + i * 0.1
        for k, search in enumerate(("svc.corp.example", "corp.example")):
            exchange(frames, rng, ts + k * 0.003, client, f"{name}.{search}", "A", None, False)
        exchange(frames, rng, ts + 0.006, client, name, "A", f"203.0.113.{i % 250 + 1}", False)
    write(out / "generated-cluster-search-domains.pcap", sorted(frames))


def lossy_nat_client(out: Path) -> None:
    rng = random.Random(47)
    frames: list[tuple[float, bytes]] = []
    nat = "10.3.8.1"
    names = ["www.news-portal.example", "api.news-portal.example", "cdn.video.example"]
    for i in range(1200):
        name, ts = names[i % 3], START + i * 0.01
        q = dnslib.DNSRecord(dnslib.DNSHeader(id=rng.randint(0, 65535), rd=1), q=dnslib.DNSQuestion(name))
        r = q.reply()
        r.header.aa = 0
        r.add_answer(dnslib.RR(name, rdata=dnslib.A("203.0.113.80"), ttl=60))
        sport = rng.randint(1024, 65535)
        if rng.random() >= 0.03:          # the capture lost the others
            frames.append((ts, frame(q.pack(), nat, RESOLVER, sport, 53)))
        frames.append((ts + rng.uniform(0.005, 0.06), frame(r.pack(), RESOLVER, nat, 53, sport)))
    write(out / "generated-lossy-nat-client.pcap", frames)


def uuid_text(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA
    slow_exfil(target)
    poisoned_race(target)
    out_of_bailiwick(target)
    water_torture(target)
    av_reputation(target)
    malware_lookups(target)
    dga_client(target)
    browser_probes(target)
    odd_but_legitimate(target)
    one_way_validating_resolver(target)
    mail_authentication(target)
    service_names(target)
    av_cloud_lookups(target)
    cluster_search_domains(target)
    lossy_nat_client(target)
