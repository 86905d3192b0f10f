"""Which files can hold which keys, from file statistics (pure: no Spark)."""

from __future__ import annotations

import json

from spark_scoring.lakehouse.deltalog import FileAction
from spark_scoring.lakehouse.keyranges import (
    STRING_STATS_PREFIX,
    KeyRange,
    file_range,
    files_holding,
    files_overlapping,
    merge,
    partition_key,
)


def _file(path: str, low, high, day: str | None = None, stats: bool = True) -> FileAction:
    raw = json.dumps({"numRecords": 3, "minValues": {"id": low}, "maxValues": {"id": high}}) if stats else None
    return FileAction(path, {"day": day} if day is not None else {}, 10, True, raw)


FILES = [_file("a", 0, 9), _file("b", 10, 19), _file("c", 20, 29), _file("d", 25, 40), _file("e", 0, 0, stats=False)]


def test_ranges_select_only_the_files_that_can_hold_them():
    picked = files_overlapping(FILES, "id", [], [KeyRange(None, 12, 13)], "bigint")
    assert [f.path for f in picked] == ["b", "e"]  # e has no statistics: it may hold anything
    picked = files_overlapping(FILES, "id", [], [KeyRange(None, 26, 27), KeyRange(None, 5, 5)], "bigint")
    assert [f.path for f in picked] == ["a", "c", "d", "e"]
    assert [f.path for f in files_overlapping(FILES, "id", [], [KeyRange(None, 41, 50)], "bigint")] == ["e"]


def test_exact_keys_are_looked_up_by_bisection():
    keys = [(None, 11), (None, 30)]
    assert [f.path for f in files_holding(FILES, "id", [], keys, "bigint")] == ["b", "d", "e"]
    assert [f.path for f in files_holding(FILES[:4], "id", [], [], "bigint")] == []


def test_partitions_restrict_the_candidates():
    files = [_file("p1", 0, 100, day="d1"), _file("p2", 0, 100, day="d2")]
    ranges = [KeyRange(partition_key({"day": "d2"}, ["day"]), 5, 6)]
    assert [f.path for f in files_overlapping(files, "id", ["day"], ranges, "bigint")] == ["p2"]
    anywhere = [KeyRange(None, 5, 6)]
    assert [f.path for f in files_overlapping(files, "id", ["day"], anywhere, "bigint")] == ["p1", "p2"]
    keys = [(partition_key({"day": "d1"}, ["day"]), 7)]
    assert [f.path for f in files_holding(files, "id", ["day"], keys, "bigint")] == ["p1"]


def test_a_long_string_max_bounds_only_its_prefix():
    prefix = "k" * STRING_STATS_PREFIX
    f = _file("s", "a", prefix)
    r = file_range(f, "id", [], "string")
    assert r.contains(prefix + "zzzz")  # a truncated max must not exclude longer keys
    assert not r.contains("l")
    short = file_range(_file("t", "a", "kk"), "id", [], "string")
    assert not short.contains("kkz")


def test_types_without_exact_statistics_get_no_ranges_and_merge_absorbs_unbounded():
    assert file_range(FILES[0], "id", [], "timestamp") == KeyRange(None)
    assert merge([KeyRange(None, 1, 5), KeyRange(None, 4, 9), KeyRange(None, 20, 30)]) == [
        KeyRange(None, 1, 9), KeyRange(None, 20, 30)
    ]
    assert merge([KeyRange(None, 1, 5), KeyRange(None)]) == [KeyRange(None)]
