"""The sensor's one configuration file (TOML), validated before anything starts.

Every key is declared once in SPEC with its type, default and meaning; an
unknown key, a wrong type or a bad value is a ConfigError naming the file and
the dotted key. `deploy/dnssensor.toml` is the commented example.
"""
from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from sensor.errors import ConfigError
from sensor.limits import DEFAULT_LIMITS, DEFAULT_PORTS, MAX_WORKERS, Limits
from sensor.store.schema import TABLES as STORE_TABLES

SYSLOG_PROTOCOLS = ("udp", "tcp", "tls")
SYSLOG_FORMATS = ("kv", "cef", "json")
SYSLOG_FACILITIES = {name: code for code, name in enumerate(
    ("kern user mail daemon auth syslog lpr news uucp cron authpriv ftp ntp audit alert clock "
     "local0 local1 local2 local3 local4 local5 local6 local7").split())}
MAX_DEDUP_WINDOW_MS = 100.0
"""Span-port copies follow their frame within microseconds; a client's retransmission
(the same query again, same id and port) comes after a second or more and is traffic."""
RING_SHARE_OF_MEMORY = 0.5
"""The most of the machine's memory the capture rings of all workers together may ask
for (capture.workers x interfaces x capture.ring_mib): the kernel allocates them at start,
and the parse, the writer and the resolver the sensor watches need the rest."""
TABLES_WITH_RETENTION = tuple(t.name for t in STORE_TABLES if t.time_column)
"""Tables with a time column (sensor/store/schema.py): their rows age out."""


@dataclass(frozen=True)
class SyslogTarget:
    host: str
    port: int
    protocol: str = "udp"
    format: str = "kv"
    facility: str = "local5"
    ca_file: str = ""
    """TLS only: CA bundle that signs the receiver's certificate (system store when empty)."""
    verify: bool = True
    """TLS only: check the receiver's certificate and name."""
    queue_size: int = 10000
    """Verdicts held in memory for this target before they go to the spool file."""
    spool_max_mib: int = 64
    """Spool file bound; verdicts beyond it are dropped and counted (syslog_dropped)."""

    @property
    def label(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    path: str = "<defaults>"
    sensor_name: str = field(default_factory=lambda: os.uname().nodename)
    interfaces: tuple[str, ...] = ()
    ports: tuple[int, ...] = DEFAULT_PORTS
    workers: int = 0
    """Capture worker processes per interface; 0 means one per core."""
    ring_mib: int = 128
    snaplen: int = 65535
    dedup_window_ms: float = 0.0
    """Drop a UDP DNS frame identical to one seen at most this long before, each frame
    once (a span port copying both directions of a link); 0 keeps every frame."""
    user: str = ""
    """Service user to become once the capture handles are open ('' keeps the current one)."""
    state_dir: str = "."
    db_path: str = "dnssensor.db"
    flush_interval_s: float = 1.0
    retention_days: dict[str, int] = field(default_factory=lambda: {
        "verdicts": 90, "pdns": 365, "pdns_nxdomain": 30, "stats": 30, "clients": 30, "breakdown": 30,
        "anomalies": 30, "baselines": 35})
    resolver_addresses: tuple[str, ...] = ()
    client_networks: tuple[str, ...] = ()
    discover_networks: bool = True
    """On `run`, fill resolver_addresses/client_networks from the host's interfaces when empty."""
    rules_dir: str = ""
    """Rule files. Empty: ./rules where there is one, else the rules that come with the sensor
    (shipped_rules_dir); resolve_rules_dir() makes it a folder that exists."""
    syslog: tuple[SyslogTarget, ...] = ()
    limits: Limits = DEFAULT_LIMITS

    def resolver_set(self) -> frozenset[bytes]:
        """The resolver's own addresses as 16-byte keys (IPv4 mapped), as the parser stores them."""
        return frozenset(address_key(a) for a in self.resolver_addresses)


def address_key(text: str) -> bytes:
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


# ------------------------------------------------------------------ validation

def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("expected an integer")
        if not lo <= v <= hi:
            raise ValueError(f"expected {lo}..{hi}, got {v}")
        return v
    return check


def _positive_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ValueError("expected a positive number")
    return float(v)


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("expected a number")
        if not lo <= v <= hi:
            raise ValueError(f"expected {lo:g}..{hi:g}, got {v}")
        return float(v)
    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _list(item: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    def check(v: Any) -> tuple:
        if not isinstance(v, list):
            raise ValueError("expected a list")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except ValueError as e:
                raise ValueError(f"item {i + 1}: {e}") from None
        return tuple(out)
    return check


def _address(v: Any) -> str:
    try:
        return str(ipaddress.ip_address(_str(v)))
    except ValueError:
        raise ValueError(f"not an IP address: {v!r}") from None


def _network(v: Any) -> str:
    try:
        return str(ipaddress.ip_network(_str(v), strict=False))
    except ValueError:
        raise ValueError(f"not an IP network: {v!r}") from None


def _choice(options: tuple[str, ...] | dict) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if _str(v) not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return v
    return check


# dotted key -> (Config attribute, validator). Sections group them in the file.
SPEC: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "sensor.name": ("sensor_name", _str),
    "sensor.user": ("user", _str),
    "sensor.state_dir": ("state_dir", _str),
    "capture.interfaces": ("interfaces", _list(_str)),
    "capture.ports": ("ports", _list(_int(1, 65535))),
    "capture.workers": ("workers", _int(0, MAX_WORKERS)),
    "capture.ring_mib": ("ring_mib", _int(1, 4096)),
    "capture.snaplen": ("snaplen", _int(256, 262144)),
    "capture.dedup_window_ms": ("dedup_window_ms", _float(0, MAX_DEDUP_WINDOW_MS)),
    "network.resolver_addresses": ("resolver_addresses", _list(_address)),
    "network.client_networks": ("client_networks", _list(_network)),
    "network.discover": ("discover_networks", _bool),
    "store.path": ("db_path", _str),
    "store.flush_interval_s": ("flush_interval_s", _positive_float),
    "rules.dir": ("rules_dir", _str),
}
SYSLOG_SPEC: dict[str, Callable[[Any], Any]] = {
    "host": _str, "port": _int(1, 65535), "protocol": _choice(SYSLOG_PROTOCOLS),
    "format": _choice(SYSLOG_FORMATS), "facility": _choice(SYSLOG_FACILITIES),
    "ca_file": _str, "verify": _bool, "queue_size": _int(1, 10_000_000),
    "spool_max_mib": _int(1, 1_000_000),
}


def line_of(text: str, key: str) -> int | None:
    """Line (1-based) where `key = ...` is set in a TOML text, for errors that name it."""
    m = re.search(rf"^\s*{re.escape(key)}\s*=", text, re.M)
    return text.count("\n", 0, m.start()) + 1 if m else None


def read_toml(path: str | os.PathLike, error: type[ConfigError] = ConfigError) -> tuple[dict[str, Any], str]:
    """(document, text) of a TOML file; `error` naming the file when it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML: {e}") from None


def load(path: str | os.PathLike) -> Config:
    """Read and validate one configuration file."""
    doc, _ = read_toml(path)
    return from_dict(doc, str(path))


def from_dict(doc: dict[str, Any], path: str = "<config>") -> Config:
    values: dict[str, Any] = {"path": path}

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{path}: {key}: {why}")

    for section, body in doc.items():
        if section == "syslog":
            values["syslog"] = _syslog_targets(body, path)
            continue
        if section == "limits":
            values["limits"] = _limits(body, path)
            continue
        if section == "store" and isinstance(body, dict) and "retention_days" in body:
            body = dict(body)
            values["retention_days"] = _retention(body.pop("retention_days"), path)
        if not isinstance(body, dict):
            fail(section, "unknown key" if not any(k.startswith(section + ".") for k in SPEC)
                 else "expected a table")
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if dotted not in SPEC:
                fail(dotted, "unknown key")
            attr, check = SPEC[dotted]
            try:
                values[attr] = check(value)
            except ValueError as e:
                fail(dotted, str(e))
    return Config(**values)


def _syslog_targets(body: Any, path: str) -> tuple[SyslogTarget, ...]:
    if not isinstance(body, list):
        raise ConfigError(f"{path}: syslog: expected [[syslog]] tables")
    targets = []
    for i, table in enumerate(body):
        where = f"syslog[{i + 1}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {where}: expected a table")
        kwargs = {}
        for key, value in table.items():
            if key not in SYSLOG_SPEC:
                raise ConfigError(f"{path}: {where}.{key}: unknown key")
            try:
                kwargs[key] = SYSLOG_SPEC[key](value)
            except ValueError as e:
                raise ConfigError(f"{path}: {where}.{key}: {e}") from None
        for required in ("host", "port"):
            if required not in kwargs:
                raise ConfigError(f"{path}: {where}.{required}: missing")
        targets.append(SyslogTarget(**kwargs))
    return tuple(targets)


def _limits(body: Any, path: str) -> Limits:
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: limits: expected a table")
    known = {f.name: f.type for f in fields(Limits)}
    for key, value in body.items():
        if key not in known:
            raise ConfigError(f"{path}: limits.{key}: unknown limit")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: limits.{key}: expected a number")
    try:
        return replace(DEFAULT_LIMITS, **body)
    except ValueError as e:
        raise ConfigError(f"{path}: limits: {e}") from None


def _retention(body: Any, path: str) -> dict[str, int]:
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: store.retention_days: expected a table")
    out = dict(Config().retention_days)
    for key, value in body.items():
        if key not in TABLES_WITH_RETENTION:
            raise ConfigError(f"{path}: store.retention_days.{key}: unknown table "
                              f"(one of {', '.join(TABLES_WITH_RETENTION)})")
        try:
            out[key] = _int(1, 100_000)(value)
        except ValueError as e:
            raise ConfigError(f"{path}: store.retention_days.{key}: {e}") from None
    return out


def discover_networks(config: Config) -> Config:
    """Fill the resolver's addresses and client networks from this host's interfaces
    (pyroute2, netlink) where the file leaves them empty: on a resolver box the
    resolver listens on its own addresses and serves the networks it is attached to."""
    if not config.discover_networks or (config.resolver_addresses and config.client_networks):
        return config
    from pyroute2 import IPRoute

    addresses, networks = [], []
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if not addr:
                continue
            addresses.append(str(ipaddress.ip_address(addr)))
            net = ipaddress.ip_network(f"{addr}/{msg['prefixlen']}", strict=False)
            if not net.is_loopback and not net.is_link_local:
                networks.append(str(net))
    return replace(config,
                   resolver_addresses=config.resolver_addresses or tuple(dict.fromkeys(addresses)),
                   client_networks=config.client_networks or tuple(dict.fromkeys(networks)))


def worker_count(config: Config) -> int:
    """Capture workers per interface: capture.workers, or one per core when it is 0."""
    return config.workers or os.cpu_count() or 1


def check_rings(config: Config, memory_bytes: int | None = None) -> None:
    """Refuse a start whose capture rings alone would take more than RING_SHARE_OF_MEMORY
    of the machine's memory (memory_bytes, this machine's by default): each worker's ring is
    allocated by the kernel when its capture opens, and too many of them fail part of the
    way through or starve everything else."""
    if memory_bytes is None:
        try:
            memory_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return
    workers = worker_count(config)
    rings = workers * len(config.interfaces)
    asked = rings * config.ring_mib << 20
    if asked > memory_bytes * RING_SHARE_OF_MEMORY:
        raise ConfigError(
            f"{config.path}: capture.ring_mib: {rings} capture ring(s) of {config.ring_mib} MiB "
            f"({workers} worker(s) on each of {len(config.interfaces)} interface(s), "
            f"capture.workers) would take {asked >> 20} MiB, more than "
            f"{RING_SHARE_OF_MEMORY:.0%} of this machine's {memory_bytes >> 20} MiB: "
            "use fewer workers or smaller rings")


def check_syslog_files(config: Config) -> None:
    """ConfigError when a TLS target's CA bundle cannot be read: found when the sensor starts,
    rather than as a connection that fails for ever while its verdicts pile up in the spool.
    (Not when the file is loaded: the analyst commands read the same file for the store's
    path and need no syslog.)"""
    for i, target in enumerate(config.syslog):
        if target.ca_file and not os.access(target.ca_file, os.R_OK):
            raise ConfigError(f"{config.path}: syslog[{i + 1}].ca_file: cannot read {target.ca_file}")


def check_user(config: Config) -> None:
    """ConfigError when the service user to become does not exist: found at start, rather
    than by every process that tries to become it."""
    if not config.user:
        return
    import pwd

    try:
        pwd.getpwnam(config.user)
    except KeyError:
        raise ConfigError(f"{config.path}: sensor.user: no such user {config.user!r}") from None


def spool_dir(db_path: str) -> str:
    """Beside the database: the syslog spools, and shipments a stopping worker could not
    hand to the writer."""
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), "spool")


def resolve_paths(config: Config) -> Config:
    """A relative store path is taken from the state directory."""
    db = config.db_path
    if not os.path.isabs(db) and config.state_dir not in ("", "."):
        db = os.path.join(config.state_dir, db)
    return replace(config, db_path=db)


SHIPPED_RULES = Path("share") / "dnssensor" / "rules"
"""Where an installed wheel puts the rules/ folder, under its prefix (setup.py's data files)."""


def shipped_candidates(in_tree: Path, installed: Path) -> tuple[Path, Path]:
    """Where a folder that comes with the sensor may be, in order: `in_tree`, its place in the
    source tree the package runs from (a checkout or an editable install), then `installed`
    under the prefix, where a wheel puts it (setup.py's data files)."""
    return in_tree, Path(sys.prefix) / installed


def shipped_rules_dir() -> Path | None:
    """The rules that come with the sensor: rules/ of the source tree the package runs from
    (a checkout or an editable install), else the copy a wheel installed under its prefix."""
    return next((c for c in shipped_candidates(Path(__file__).resolve().parent.parent / "rules", SHIPPED_RULES)
                 if c.is_dir() and any(c.glob("*.toml"))), None)


def resolve_rules_dir(config: Config) -> Config:
    """config with rules_dir an absolute path to a folder that exists. A relative folder named
    in a file is looked for beside that file, then in the working directory; none named means
    ./rules, else the sensor's own. ConfigError when the folder named is missing or none is
    found: a sensor that found no rules would run without its detectors and say nothing."""
    from_file = config.path not in ("<defaults>", "<config>")
    if config.rules_dir:
        named = Path(config.rules_dir)
        candidates = [named] if named.is_absolute() or not from_file else [Path(config.path).parent / named, named]
        for candidate in candidates:
            if candidate.is_dir():
                return replace(config, rules_dir=os.path.abspath(candidate))
        raise ConfigError(f"{config.path}: rules.dir: no such directory: "
                          + " nor ".join(str(c) for c in dict.fromkeys(candidates)))
    found = Path("rules") if Path("rules").is_dir() else shipped_rules_dir()
    if found is None:
        raise ConfigError(f"{config.path}: rules.dir: not set, and neither ./rules nor the rules that come "
                          "with the sensor are there: name the rules folder ([rules] dir)")
    return replace(config, rules_dir=os.path.abspath(found))
