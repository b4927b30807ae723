"""Features of the question name alone (lists, patterns, label counts, the DGA score),
worked out once per distinct name and remembered across batches.

A resolver is asked for the same names over and over: working out each such feature for
every batch's distinct names again was most of what the rules' name features cost. Names
are told apart by name_hash (64-bit FNV-1a of the text); each gets a row, and each
feature a column of values by row with a mark of the rows worked out. A batch looks its
messages' rows up once and gathers every feature from the columns; only names never seen
(or seen before the feature was first asked for) are worked out, from that batch's text.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sensor import _core


class NameMemo:
    """Name features by name, for up to `limit` names; once past it, it starts over (the
    names of the batch that passed it are kept). Whoever changes what a feature means (a
    reloaded list, pattern or model) makes a new one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._clear()

    def _clear(self) -> None:
        self._index = _core.KeyIndex()
        self._values: dict[str, np.ndarray] = {}
        self._known: dict[str, np.ndarray] = {}
        self._known_count: dict[str, int] = {}        # rows marked in _known

    def __len__(self) -> int:
        return len(self._index)

    def rows(self, name_hashes: np.ndarray) -> np.ndarray:
        """The row of each message's name (taking rows for names not held)."""
        hashes = np.ascontiguousarray(name_hashes, dtype=np.uint64)
        if len(self._index) > self.limit:
            self._clear()
        return self._index.add(hashes)[0]

    def column(self, feature: str, rows: np.ndarray,
               work_out: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Per message (`rows` from rows()), the feature of its name. `work_out` is given
        the indexes of messages, one per name not known yet, and returns their values."""
        size = len(self._index)
        if self._known_count.get(feature) == size:      # every name held is worked out
            return self._values[feature].take(rows)
        known = _grown(self._known.get(feature, np.zeros(0, dtype=bool)), size)
        values = self._values.get(feature)
        missing = np.flatnonzero(~known[rows])
        if len(missing) or values is None:
            messages = missing[_core.first_occurrences(np.ascontiguousarray(rows[missing], dtype=np.int64), size)]
            fresh = np.asarray(work_out(messages))
            values = _grown(values if values is not None else np.zeros(0, dtype=fresh.dtype), len(known))
            values[rows[messages]] = fresh
            known[rows[messages]] = True
            self._known_count[feature] = self._known_count.get(feature, 0) + len(messages)
        values = _grown(values, len(known))
        self._values[feature], self._known[feature] = values, known
        return values.take(rows)


def _grown(column: np.ndarray, size: int) -> np.ndarray:
    """`column` with room for `size` rows (doubling, so growth row by row stays linear),
    the new ones zero."""
    if len(column) >= size:
        return column
    return np.concatenate([column, np.zeros(max(size, 2 * len(column)) - len(column), dtype=column.dtype)])
