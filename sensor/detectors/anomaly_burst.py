"""Malformed-traffic bursts: the engine's own verdict (kind `anomaly`), tuned by
rules/anomaly_burst.toml. Counting happens in the workers (Accumulator); the
writer sees every worker's counts and decides here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor import schema
from sensor.config import read_toml
from sensor.errors import ConfigError
from sensor.store.schema import SEVERITIES

RULE_FILE = "anomaly_burst.toml"
DETECTOR = "anomaly_burst"


@dataclass(frozen=True)
class AnomalyBurstRule:
    path: str = "<built-in>"
    kind: str = "anomaly"
    severity: str = "medium"
    window_s: int = 60
    threshold: int = 20
    anomalies: tuple[str, ...] = ("truncated", "bad_pointer", "label_too_long", "name_too_long",
                                  "pointer_limit", "rdlength_mismatch", "trailing_bytes",
                                  "too_many_records", "header_too_short", "edns_bad_option",
                                  "bad_rdata", "invalid_opcode")

    @property
    def mask(self) -> int:
        return sum(1 << schema.ANOMALY_BIT[name] for name in self.anomalies)

    def verdict(self, key: tuple[int, str, str], entry: dict[str, Any], sensor: str) -> dict[str, Any] | None:
        """The verdict row for one (window, client, server) entry, or None below threshold."""
        if entry["count"] < self.threshold:
            return None
        window, client, server = key
        top = ", ".join(f"{n} {name}" for name, n in entry["anomalies"].most_common(3))
        return {
            "ts": entry["last"], "kind": self.kind, "severity": self.severity, "client": client,
            "server": server, "domain": "", "detector": DETECTOR,
            "summary": f"{entry['count']} malformed DNS messages between {client} and {server} "
                       f"in {self.window_s} s ({top})",
            "evidence": {"malformed_messages": entry["count"], "threshold": self.threshold,
                         "window_s": self.window_s, "anomalies": dict(entry["anomalies"]),
                         "sample_qnames": entry["samples"]},
            "count": entry["count"], "first_ts": entry["first"], "last_ts": entry["last"],
            "window_start": window, "sensor": sensor,
        }


def load(rules_dir: str | Path) -> AnomalyBurstRule:
    """Read rules_dir/anomaly_burst.toml (built-in defaults when it is absent)."""
    path = Path(rules_dir) / RULE_FILE
    if not path.exists():
        return AnomalyBurstRule()
    doc, _ = read_toml(path)
    known = {"kind", "severity", "window_s", "threshold", "anomalies"}
    for key in doc:
        if key not in known:
            raise ConfigError(f"{path}: {key}: unknown key")
    rule = AnomalyBurstRule(path=str(path), **{k: tuple(v) if k == "anomalies" else v for k, v in doc.items()})
    if rule.severity not in SEVERITIES:
        raise ConfigError(f"{path}: severity: expected one of {', '.join(SEVERITIES)}")
    for key in ("window_s", "threshold"):
        value = getattr(rule, key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{path}: {key}: expected a positive integer")
    unknown = [a for a in rule.anomalies if a not in schema.ANOMALY_BIT]
    if unknown or not rule.anomalies:
        raise ConfigError(f"{path}: anomalies: unknown names {unknown}" if unknown
                          else f"{path}: anomalies: empty list")
    return rule
