"""Partition values: string forms, Hive path escaping, and the SQL predicate builder.

The predicate builder is checked without Delta: each predicate is applied to a plain Spark
DataFrame full of hostile values and must select exactly the intended rows.
"""

from __future__ import annotations

import datetime as dt
import decimal

import pytest
from pyspark.sql.types import (
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
    TimestampType,
)

from spark_scoring.errors import LakehouseError
from spark_scoring.lakehouse import _partitions as parts

HOSTILE = [
    "it's",
    'say "hi"',
    "a b",
    "x/y",
    "k=v",
    "100%",
    "%2F",
    "back\\slash",
    "back\\'quote",
    "ünïcødé",
    "😀 emoji",
    "semi;colon -- comment",
    "') OR 1=1 --",
    "`tick`",
    "new\nline",
    "${var}",
]

UTC = dt.timezone.utc


# --------------------------------------------------------------------- string forms


@pytest.mark.parametrize(
    ("value", "data_type", "text"),
    [
        ("abc", StringType(), "abc"),
        ("", StringType(), None),  # Delta stores an empty partition value as null
        (None, StringType(), None),
        (7, IntegerType(), "7"),
        (-(2**63), LongType(), "-9223372036854775808"),
        (True, BooleanType(), "true"),
        (False, BooleanType(), "false"),
        (1.5, DoubleType(), "1.5"),
        (float("nan"), DoubleType(), "NaN"),
        (dt.date(2024, 5, 1), DateType(), "2024-05-01"),
        (dt.datetime(2024, 5, 1, 10, 0, tzinfo=UTC), TimestampType(), "2024-05-01 10:00:00"),
        (dt.datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), TimestampType(),
         "2024-05-01 10:00:00.000005"),
        (dt.datetime(2024, 5, 1, 10, 0, 1), TimestampNTZType(), "2024-05-01 10:00:01"),
        (decimal.Decimal("1.20"), DecimalType(10, 2), "1.20"),
    ],
)
def test_string_form_round_trips(value, data_type, text):
    assert parts.to_partition_string(value, data_type) == text
    back = parts.from_partition_string(text, data_type)
    if value == "" or value is None:
        assert back is None
    elif isinstance(value, float) and value != value:
        assert back != back  # NaN
    elif isinstance(value, dt.datetime) and value.tzinfo is not None:
        assert back == value and back.tzinfo is not None
    else:
        assert back == value


def test_string_forms_written_by_other_engines_parse():
    assert parts.from_partition_string("2024-05-01T10:00:00.123Z", TimestampType()) == dt.datetime(
        2024, 5, 1, 10, 0, 0, 123000, tzinfo=UTC
    )
    assert parts.from_partition_string("__HIVE_DEFAULT_PARTITION__", IntegerType()) is None
    assert parts.normalize_partition_string("007", IntegerType()) == "7"
    assert parts.normalize_partition_string("1.0E2", DoubleType()) == "100.0"


def test_invalid_values_are_refused_with_the_column_named():
    with pytest.raises(LakehouseError, match=r"'x' of column 'n' is not a valid int"):
        parts.from_partition_string("x", IntegerType(), "n")
    with pytest.raises(LakehouseError, match="out of range"):
        parts.from_partition_string(str(2**31), IntegerType(), "n")
    with pytest.raises(LakehouseError, match="not a valid date"):
        parts.from_partition_string("2024-13-01", DateType(), "day")
    with pytest.raises(LakehouseError, match="cannot be a partition column"):
        parts.to_partition_string([1], StructType([]), "s")


# --------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ("x/y", "x%2Fy"),
        ("k=v", "k%3Dv"),
        ("100%", "100%25"),
        ("it's", "it%27s"),
        ('say "hi"', "say %22hi%22"),
        ("a b", "a b"),  # Spark leaves spaces and non-ASCII as they are
        ("ünï😀", "ünï😀"),
        ("c:\\d", "c%3A%5Cd"),
        ("tab\there", "tab%09here"),
    ],
)
def test_hive_path_escaping_matches_spark(value, escaped):
    assert parts.escape_path_name(value) == escaped
    assert parts.unescape_path_name(escaped) == value


def test_partition_dir_and_log_path_encoding():
    directory = parts.partition_dir([("day", "2024-05-01"), ("tag", "x/y%"), ("n", None)])
    assert directory == "day=2024-05-01/tag=x%2Fy%25/n=__HIVE_DEFAULT_PARTITION__"
    # The log holds a URI: the % of the directory name is encoded once more.
    encoded = parts.uri_encode_path(directory + "/part-0.parquet")
    assert encoded == "day=2024-05-01/tag=x%252Fy%2525/n=__HIVE_DEFAULT_PARTITION__/part-0.parquet"
    assert parts.uri_decode_path(encoded) == directory + "/part-0.parquet"


# --------------------------------------------------------------------- predicates on real Spark


@pytest.fixture(scope="module")
def hostile_df(spark):
    schema = StructType(
        [
            StructField("id", IntegerType()),
            StructField("s", StringType()),
            StructField("n", LongType()),
            StructField("d", DateType()),
            StructField("ts", TimestampType()),
            StructField("b", BooleanType()),
            StructField("x", DoubleType()),
        ]
    )
    rows = [(i, value, i, dt.date(2024, 1, 1 + i), dt.datetime(2024, 1, 1, i, 0, 0, 1, tzinfo=UTC),
             i % 2 == 0, i + 0.5) for i, value in enumerate(HOSTILE)]
    rows.append((100, None, None, None, None, None, None))
    return spark.createDataFrame(rows, schema).cache()


def _selected(df, predicates):
    """The ids each predicate selects, all evaluated by Spark in one job."""
    from pyspark.sql import functions as F

    flags = [F.coalesce(F.expr(p), F.lit(False)).alias(f"m{i}") for i, p in enumerate(predicates)]
    rows = df.select("id", *flags).collect()
    return [sorted(r["id"] for r in rows if r[f"m{i}"]) for i in range(len(predicates))]


def _ids(df, predicate):
    return _selected(df, [predicate])[0]


def test_string_predicate_selects_exactly_each_hostile_value(hostile_df):
    predicates = [parts.partition_predicate([{"s": v}], hostile_df.schema, ["s"]) for v in HOSTILE]
    assert _selected(hostile_df, predicates) == [[i] for i in range(len(HOSTILE))], predicates


def test_predicate_is_safe_whatever_the_string_literal_parser_setting(spark, hostile_df):
    key = "spark.sql.parser.escapedStringLiterals"
    before = spark.conf.get(key)
    spark.conf.set(key, "true")
    try:
        predicates = [parts.partition_predicate([{"s": v}], hostile_df.schema, ["s"]) for v in HOSTILE]
        assert _selected(hostile_df, predicates) == [[i] for i in range(len(HOSTILE))]
    finally:
        spark.conf.set(key, before)


def test_null_selects_only_null_rows_and_ors_combine(hostile_df):
    schema = hostile_df.schema
    assert _ids(hostile_df, parts.partition_predicate([{"s": None}], schema, ["s"])) == [100]
    both = parts.partition_predicate([{"s": "it's"}, {"s": None}, {"s": "x/y"}], schema, ["s"])
    assert _ids(hostile_df, both) == [0, 3, 100]
    # Several columns in one spec are AND-ed.
    pair = parts.partition_predicate([{"s": "a b", "n": "2"}, {"s": "a b", "n": "3"}], schema, ["s", "n"])
    assert _ids(hostile_df, pair) == [2]


def test_typed_literals_select_the_right_rows(hostile_df):
    schema = hostile_df.schema
    cols = ["n", "d", "ts", "b", "x"]
    specs = [{"n": "4"}, {"d": "2024-01-03"}, {"ts": "2024-01-01 05:00:00.000001"}, {"x": "3.5"},
             {"b": "false"}, {"n": None}]
    odd = [i for i in range(len(HOSTILE)) if i % 2]
    predicates = [parts.partition_predicate([spec], schema, cols) for spec in specs]
    assert _selected(hostile_df, predicates) == [[4], [2], [5], [3], odd, [100]]


def test_predicate_refuses_bad_specs(hostile_df):
    schema = hostile_df.schema
    with pytest.raises(LakehouseError, match="not partition columns"):
        parts.partition_predicate([{"id": "1"}], schema, ["s"])
    with pytest.raises(LakehouseError, match="not a valid bigint"):
        parts.partition_predicate([{"n": "1 OR 1=1"}], schema, ["n"])
    with pytest.raises(LakehouseError, match="Delta string form"):
        parts.partition_predicate([{"n": 1}], schema, ["n"])
    with pytest.raises(LakehouseError, match="no partitions given"):
        parts.partition_predicate([], schema, ["n"])


def test_check_partition_values_checks_names_and_typed_values():
    schema = StructType([StructField("day", DateType()), StructField("n", LongType()), StructField("v", DoubleType())])
    assert parts.check_partition_values({"day": "2024-05-01", "n": None}, ["day", "n"], schema) == {
        "day": "2024-05-01", "n": None,
    }
    with pytest.raises(LakehouseError, match=r"names \['v'\], which are not partition columns"):
        parts.check_partition_values({"v": "1.0"}, ["day", "n"], schema)
    with pytest.raises(LakehouseError, match=r"'2024-13-01' of column 'day' is not a valid date"):
        parts.check_partition_values({"day": "2024-13-01"}, ["day", "n"], schema)
    with pytest.raises(LakehouseError, match="empty partition spec"):
        parts.check_partition_values({}, ["day"], schema)


# --------------------------------------------------------------------- matching files to specs

_MATCH_TYPES = {"day": DateType(), "n": LongType(), "s": StringType(), "v": DoubleType(), "ts": TimestampType()}


def test_matcher_compares_typed_canonical_values_and_partial_specs():
    cols = ["day", "n", "s"]
    matcher = parts.PartitionMatcher(
        [{"day": "2024-05-01", "n": "7"}, {"s": "x/y"}, {"n": None, "day": "2024-05-02"}], _MATCH_TYPES, cols
    )
    assert matcher.matches({"day": "2024-05-01", "n": "007", "s": "a"})  # '007' is the int 7
    assert not matcher.matches({"day": "2024-05-01", "n": "8", "s": "a"})
    assert matcher.matches({"day": "2024-06-09", "n": "1", "s": "x/y"})  # a spec naming only s
    assert matcher.matches({"day": "2024-05-02", "n": None, "s": "q"})
    assert matcher.matches({"day": "2024-05-02", "n": "", "s": "q"})  # "" is null, as Delta stores it
    assert not matcher.matches({"day": "2024-05-02", "n": "0", "s": "q"})
    typed = parts.PartitionMatcher([{"v": "1"}, {"ts": "2024-05-01T10:00:00Z"}], _MATCH_TYPES, ["v", "ts"])
    assert typed.matches({"v": "1.0", "ts": None}) and typed.matches({"v": "2", "ts": "2024-05-01 10:00:00"})
    assert not parts.PartitionMatcher([], _MATCH_TYPES, cols).matches({"day": "2024-05-01", "n": "7", "s": "a"})
    with pytest.raises(LakehouseError, match="not partition columns"):
        parts.PartitionMatcher([{"v": "1"}], _MATCH_TYPES, cols)
    with pytest.raises(LakehouseError, match="is not a valid bigint"):
        matcher.matches({"day": "2024-05-01", "n": "seven", "s": "a"})


def test_matcher_costs_a_lookup_per_file_not_a_comparison_per_spec():
    """100,000 files against 10,000 specs: hash lookups, far below the pairwise cost."""
    import time

    specs = [{"day": (dt.date(2000, 1, 1) + dt.timedelta(days=i)).isoformat()} for i in range(10_000)]
    files = [{"day": (dt.date(2000, 1, 1) + dt.timedelta(days=i % 20_000)).isoformat()} for i in range(100_000)]
    start = time.perf_counter()
    matcher = parts.PartitionMatcher(specs, _MATCH_TYPES, ["day"])
    matched = sum(matcher.matches(f) for f in files)
    elapsed = time.perf_counter() - start
    assert matched == 50_000
    assert elapsed < 5, elapsed  # pairwise: 10^9 comparisons at ~1.5 us each, about 25 minutes
