"""Which data files can hold which keys, from the Delta log's file statistics alone.

Every Delta data file's `add` action records the min and max of its columns. A file whose
partition or [min, max] key range cannot contain a key need not be read or rewritten for it:
this is what lets a nightly run read and rewrite only the files its changes touch, on any
table layout (unpartitioned, partitioned, liquid-clustered). Both engines use it, and it is
conservative everywhere it cannot be exact:

* a file without statistics for the key (or with a null-only key) may hold any key;
* a string max longer than Delta's statistics prefix (32 characters) may have been
  truncated, so it bounds only the prefix: `"abc..."` covers every key starting with it;
* keys of types whose statistics do not compare exactly as Python values (timestamps,
  decimals, binary) get no ranges: every file of the partition may hold them.

Partition values are compared in Delta's string form, as the log stores them.

Example:
    >>> ranges = merge([KeyRange(None, 10, 20), KeyRange(None, 15, 30)])
    >>> ranges
    [KeyRange(partition=None, low=10, high=30)]
    >>> [f.path for f in files_overlapping(snapshot.files.values(), "id", [], ranges)]
    ['part-0003.parquet']
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spark_scoring.lakehouse.deltalog import FileAction

#: Delta-Spark's `dataSkippingStringPrefixLength`: string statistics may be cut to this.
STRING_STATS_PREFIX = 32
#: Above every character: a truncated string max, extended by it, bounds all its extensions.
_TOP = "\U0010ffff"
#: Key types (Spark simpleString) whose statistics compare exactly as Python values.
RANGE_TYPES = frozenset({"tinyint", "smallint", "int", "bigint", "float", "double", "string", "date"})

PartitionKey = tuple[tuple[str, "str | None"], ...]


@dataclass(frozen=True)
class KeyRange:
    """Keys in [low, high] (None: unbounded) inside one partition (None: any partition).

    Attributes:
        partition: the partition's values as sorted (column, Delta string value) pairs.
        low, high: the bounds, in the statistics' domain (ints, floats, strings; dates as
            ISO strings).
    """

    partition: PartitionKey | None
    low: Any = None
    high: Any = None

    def contains(self, value: Any) -> bool:
        """True when `value` lies inside the range (ignoring the partition)."""
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def partition_key(values: Mapping[str, str | None], columns: Sequence[str]) -> PartitionKey:
    """A hashable form of a file's or row's partition values (Delta string form)."""
    return tuple((c, values.get(c)) for c in columns)


def stats_value(value: Any) -> Any:
    """A key value in the statistics' domain: dates become ISO strings, others unchanged."""
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if isoformat is not None and not isinstance(value, str) else value


def file_range(action: FileAction, key: str, partition_columns: Sequence[str], key_type: str) -> KeyRange:
    """The key range a file can hold, from its statistics (unbounded where they say nothing)."""
    part = partition_key(action.partition_values, partition_columns) if partition_columns else None
    if key_type not in RANGE_TYPES:
        return KeyRange(part)
    stats = action.parsed_stats
    low = (stats.get("minValues") or {}).get(key)
    high = (stats.get("maxValues") or {}).get(key)
    if isinstance(high, str) and len(high) >= STRING_STATS_PREFIX:
        high = high + _TOP  # possibly truncated: bound every string with this prefix
    if low is None or high is None:
        return KeyRange(part)
    return KeyRange(part, low, high)


def _overlap(a: KeyRange, b: KeyRange) -> bool:
    if a.partition is not None and b.partition is not None and a.partition != b.partition:
        return False
    if a.low is not None and b.high is not None and _lt(b.high, a.low):
        return False
    return not (b.low is not None and a.high is not None and _lt(a.high, b.low))


def _lt(x: Any, y: Any) -> bool:
    try:
        return x < y
    except TypeError:  # values of different kinds (e.g. stats of another type): assume overlap
        return False


def merge(ranges: Iterable[KeyRange]) -> list[KeyRange]:
    """The same key space as fewer ranges: overlapping ranges of one partition merged.

    An unbounded range absorbs every range of its partition; a range of any partition
    (`partition=None`) is kept as it is.
    """
    by_part: dict[PartitionKey | None, list[KeyRange]] = {}
    for r in ranges:
        by_part.setdefault(r.partition, []).append(r)
    out: list[KeyRange] = []
    for part, items in by_part.items():
        if any(r.low is None or r.high is None for r in items):
            lows = [r.low for r in items]
            highs = [r.high for r in items]
            out.append(KeyRange(part, None if None in lows else min(lows), None if None in highs else max(highs)))
            continue
        items.sort(key=lambda r: r.low)
        current = items[0]
        for r in items[1:]:
            if not _lt(current.high, r.low):
                current = KeyRange(part, current.low, max(current.high, r.high))
            else:
                out.append(current)
                current = r
        out.append(current)
    return out


def files_overlapping(
    files: Iterable[FileAction], key: str, partition_columns: Sequence[str], ranges: Sequence[KeyRange], key_type: str
) -> list[FileAction]:
    """The files that can hold a key of some range in `ranges`."""
    wanted = merge(ranges)
    by_part: dict[PartitionKey | None, list[KeyRange]] = {}
    for r in wanted:
        by_part.setdefault(r.partition, []).append(r)
    anywhere = by_part.get(None, [])
    out = []
    for f in files:
        fr = file_range(f, key, partition_columns, key_type)
        candidates = by_part.get(fr.partition, []) + anywhere if fr.partition is not None else wanted
        if any(_overlap(fr, r) for r in candidates):
            out.append(f)
    return out


def files_holding(
    files: Iterable[FileAction],
    key: str,
    partition_columns: Sequence[str],
    keys: Iterable[tuple[PartitionKey | None, Any]],
    key_type: str,
) -> list[FileAction]:
    """The files that can hold one of `keys`, given exactly as (partition or None, key value).

    O((files + keys) log keys): keys are sorted once per partition and each file's range is
    looked up by bisection.
    """
    sorted_keys: dict[PartitionKey | None, list[Any]] = {}
    for part, value in keys:
        sorted_keys.setdefault(part, []).append(stats_value(value))
    for values in sorted_keys.values():
        values.sort()
    anywhere = sorted_keys.get(None, [])
    out = []
    for f in files:
        fr = file_range(f, key, partition_columns, key_type)
        pools = [anywhere, sorted_keys.get(fr.partition, [])] if fr.partition is not None else list(sorted_keys.values())
        if any(_any_in(pool, fr) for pool in pools):
            out.append(f)
    return out


def _any_in(sorted_values: list[Any], r: KeyRange) -> bool:
    if not sorted_values:
        return False
    if r.low is None and r.high is None:
        return True
    start = 0 if r.low is None else bisect.bisect_left(sorted_values, r.low)
    return start < len(sorted_values) and (r.high is None or not _lt(r.high, sorted_values[start]))
