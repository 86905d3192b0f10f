"""Partition values: Delta string form <-> Python values, Hive path escaping, safe predicates.

Delta stores every partition value as a string in the log (`add.partitionValues`), with
JSON null for null. Both backends and the pipeline exchange partition values in that
string form, so three conversions live here, each in one place:

* `to_partition_string` / `from_partition_string`: typed Python value <-> Delta string form
  (`date(2024, 5, 1)` <-> `"2024-05-01"`, `None` <-> `None`). An empty string is stored as
  null, as Delta-Spark and the Delta kernel do ("" and null are the same partition).
* `partition_dir`: the Hive-style directory name `col=value` with Spark/Hive escaping, and
  `uri_encode_path` for the `add.path` of the log (which is a URI, so `%` is encoded again).
* `partition_predicate`: a SQL predicate selecting exactly some partitions, for Delta-Spark's
  `replaceWhere`. User data never reaches SQL unescaped: strings that are not plainly safe are
  written as hex bytes (`CAST(X'..' AS STRING)`), which no parser setting can misread, and
  every other literal is built from the parsed, typed value.
* `PartitionMatcher`: which files fall inside a list of partition specs, by hash lookup on
  canonical typed values (planning a read, the files a commit removes, the rows a
  replacing write task may hold), so that it costs O(files + specs), not their product.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

from pyspark.sql.types import (
    BooleanType,
    ByteType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructType,
    TimestampNTZType,
    TimestampType,
)

from spark_scoring.errors import LakehouseError

#: Directory name Hive, Spark and Delta use for a null partition value.
HIVE_DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"

_INTEGRAL = (ByteType, ShortType, IntegerType, LongType)
_INT_BOUNDS = {
    ByteType: (-(2**7), 2**7 - 1),
    ShortType: (-(2**15), 2**15 - 1),
    IntegerType: (-(2**31), 2**31 - 1),
    LongType: (-(2**63), 2**63 - 1),
}
_INT_SUFFIX = {ByteType: "Y", ShortType: "S", IntegerType: "", LongType: "L"}
_SUPPORTED = "string, tinyint, smallint, int, bigint, float, double, boolean, date, timestamp, timestamp_ntz, decimal"

# Spark's ExternalCatalogUtils.charToEscape: control characters and these.
_PATH_ESCAPE = frozenset('"#%\'*/:=?\\\x7f{[]^') | frozenset(chr(c) for c in range(0x01, 0x20))
# Strings made only of these go into SQL as plain quoted literals; anything else as hex.
_PLAIN_SQL_STRING = re.compile(r"[A-Za-z0-9 _.,:/+-]*")
_TS_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\s*(Z|UTC|[+-]\d{2}:?\d{2})?$"
)


def _check_supported(data_type: DataType, column: str) -> None:
    if not isinstance(
        data_type,
        (StringType, BooleanType, FloatType, DoubleType, DateType, TimestampType,
         TimestampNTZType, DecimalType, *_INTEGRAL),
    ):
        raise LakehouseError(
            f"partition column {column!r} has type {data_type.simpleString()}, which cannot be a "
            f"partition column here; allowed partition column types: {_SUPPORTED}"
        )


def to_partition_string(value: Any, data_type: DataType, column: str = "?") -> str | None:
    """The Delta string form of a typed partition value (`None` for null and for "").

    Args:
        value: a Python value as Spark/Arrow give it (str, int, float, bool, date,
            datetime, Decimal) or None.
        data_type: the Spark type of the partition column.
        column: the column name, for error messages.

    Example:
        >>> to_partition_string(dt.date(2024, 5, 1), DateType())
        '2024-05-01'
    """
    _check_supported(data_type, column)
    if value is None:
        return None
    if isinstance(data_type, StringType):
        text = str(value)
        return text if text != "" else None
    if isinstance(data_type, BooleanType):
        if not isinstance(value, bool):
            raise LakehouseError(f"partition column {column!r} is boolean; got {value!r}")
        return "true" if value else "false"
    if isinstance(data_type, _INTEGRAL):
        if isinstance(value, bool) or not isinstance(value, int):
            raise LakehouseError(f"partition column {column!r} is integral; got {value!r}")
        return str(value)
    if isinstance(data_type, (FloatType, DoubleType)):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return repr(number)
    if isinstance(data_type, DecimalType):
        return str(decimal.Decimal(value))
    if isinstance(data_type, DateType):
        if isinstance(value, dt.datetime):
            value = value.date()
        return value.isoformat()
    if isinstance(data_type, TimestampType):
        if value.tzinfo is None:  # Spark hands naive timestamps in UTC to Arrow code
            value = value.replace(tzinfo=dt.timezone.utc)
        return _format_ts(value.astimezone(dt.timezone.utc).replace(tzinfo=None))
    # TimestampNTZType
    return _format_ts(value.replace(tzinfo=None))


def _format_ts(value: dt.datetime) -> str:
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{value.microsecond:06d}" if value.microsecond else text


def from_partition_string(text: str | None, data_type: DataType, column: str = "?") -> Any:
    """Parse the Delta string form back into a typed Python value (inverse of `to_partition_string`).

    Timestamps come back as UTC-aware datetimes (naive for timestamp_ntz). Raises
    LakehouseError naming the column when `text` is not a valid value of `data_type`.
    """
    _check_supported(data_type, column)
    if text is None or text == HIVE_DEFAULT_PARTITION:
        return None
    try:
        if isinstance(data_type, StringType):
            return text if text != "" else None
        if text == "":
            return None
        if isinstance(data_type, BooleanType):
            lowered = text.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError("expected true or false")
            return lowered == "true"
        if isinstance(data_type, _INTEGRAL):
            number = int(text.strip())
            low, high = _INT_BOUNDS[type(data_type)]
            if not low <= number <= high:
                raise ValueError(f"out of range [{low}, {high}]")
            return number
        if isinstance(data_type, (FloatType, DoubleType)):
            return float(text)
        if isinstance(data_type, DecimalType):
            return decimal.Decimal(text.strip())
        if isinstance(data_type, DateType):
            return dt.date.fromisoformat(text.strip())
        return _parse_ts(text, aware=isinstance(data_type, TimestampType))
    except (ValueError, ArithmeticError) as exc:
        raise LakehouseError(
            f"partition value {text!r} of column {column!r} is not a valid "
            f"{data_type.simpleString()} ({exc}); give the value in Delta's string form, "
            "e.g. '2024-05-01' for a date, '2024-05-01 10:00:00' for a timestamp (UTC), '7'"
        ) from exc


def _parse_ts(text: str, *, aware: bool) -> dt.datetime:
    match = _TS_RE.match(text.strip())
    if not match:
        raise ValueError("expected 'YYYY-MM-DD HH:MM:SS[.ffffff]'")
    day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0").ljust(6, "0")[:6])
    value = dt.datetime.fromisoformat(f"{day}T{hour}:{minute}:{second}").replace(microsecond=micros)
    offset = dt.timezone.utc
    if zone and zone not in ("Z", "UTC"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    value = value.replace(tzinfo=offset).astimezone(dt.timezone.utc)
    return value if aware else value.replace(tzinfo=None)


def normalize_partition_string(text: str | None, data_type: DataType, column: str = "?") -> str | None:
    """The canonical string form of `text` (so '7' and '007', or '1e0' and '1.0', compare equal)."""
    return to_partition_string(from_partition_string(text, data_type, column), data_type, column)


def escape_path_name(text: str) -> str:
    """Escape one path segment the way Spark/Hive do (`ExternalCatalogUtils.escapePathName`)."""
    return "".join(f"%{ord(ch):02X}" if ch in _PATH_ESCAPE else ch for ch in text)


def unescape_path_name(text: str) -> str:
    """Inverse of `escape_path_name` (only valid `%XX` sequences are decoded, as Spark does)."""
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def partition_dir(values: Sequence[tuple[str, str | None]]) -> str:
    """The Hive-style relative directory of one partition: `a=1/b=x%2Fy` (null -> default name)."""
    return "/".join(
        f"{escape_path_name(col)}="
        f"{HIVE_DEFAULT_PARTITION if value is None else escape_path_name(value)}"
        for col, value in values
    )


def uri_encode_path(relative_path: str) -> str:
    """Encode a table-relative file path for `add.path` (a URI reference in the Delta log)."""
    return quote(relative_path, safe="/!$&'()*+,;=:@~-._")


def uri_decode_path(log_path: str) -> str:
    """Inverse of `uri_encode_path`: the path as it is on the file system."""
    return unquote(log_path)


def quote_identifier(name: str) -> str:
    """A backtick-quoted Spark SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def sql_literal(text: str | None, data_type: DataType, column: str = "?") -> str:
    """A typed Spark SQL literal for a partition value given in Delta string form.

    The value is parsed first (so it must be a valid value of the type) and the literal is
    built from the parsed value; nothing of the input is pasted into SQL unchecked.
    """
    value = from_partition_string(text, data_type, column)
    if value is None:
        return "NULL"
    if isinstance(data_type, StringType):
        if _PLAIN_SQL_STRING.fullmatch(value):
            return f"'{value}'"
        return f"CAST(X'{value.encode('utf-8').hex().upper()}' AS STRING)"
    if isinstance(data_type, BooleanType):
        return "true" if value else "false"
    if isinstance(data_type, _INTEGRAL):
        return f"{value}{_INT_SUFFIX[type(data_type)]}"
    if isinstance(data_type, (FloatType, DoubleType)):
        sql_type = "FLOAT" if isinstance(data_type, FloatType) else "DOUBLE"
        return f"CAST('{to_partition_string(value, data_type)}' AS {sql_type})"
    if isinstance(data_type, DecimalType):
        return f"CAST('{value}' AS DECIMAL({data_type.precision},{data_type.scale}))"
    if isinstance(data_type, DateType):
        return f"DATE'{value.isoformat()}'"
    if isinstance(data_type, TimestampType):
        return f"TIMESTAMP'{_format_ts(value.replace(tzinfo=None))}+00:00'"
    return f"TIMESTAMP_NTZ'{_format_ts(value)}'"


def partition_predicate(
    partitions: Sequence[Mapping[str, str | None]],
    schema: StructType,
    partition_columns: Sequence[str],
) -> str:
    """A SQL predicate true exactly for rows of the listed partitions.

    Each mapping selects the rows whose columns equal all of its values (null -> `IS NULL`);
    the mappings are OR-ed. Keys must be partition columns of the table.

    Example:
        >>> partition_predicate([{"day": "2024-05-01"}], schema, ["day"])
        "(`day` = DATE'2024-05-01')"
    """
    if not partitions:
        raise LakehouseError("no partitions given; list at least one partition to select")
    types = {f.name: f.dataType for f in schema.fields}
    terms = []
    for spec in partitions:
        checked = check_partition_spec(spec, partition_columns)
        parts = []
        for column, text in checked.items():
            ident = quote_identifier(column)
            if from_partition_string(text, types[column], column) is None:
                parts.append(f"{ident} IS NULL")
            else:
                parts.append(f"{ident} = {sql_literal(text, types[column], column)}")
        terms.append("(" + " AND ".join(parts) + ")")
    return " OR ".join(terms)


def check_partition_spec(spec: Mapping[str, str | None], partition_columns: Sequence[str]) -> dict[str, str | None]:
    """Validate that `spec` names only (and at least one of) the partition columns."""
    if not spec:
        raise LakehouseError(
            f"empty partition spec; give a value for the partition columns {list(partition_columns)}"
        )
    unknown = [key for key in spec if key not in partition_columns]
    if unknown:
        raise LakehouseError(
            f"partition spec {dict(spec)!r} names {unknown}, which are not partition columns; "
            f"the table is partitioned by {list(partition_columns)}"
        )
    for key, value in spec.items():
        if value is not None and not isinstance(value, str):
            raise LakehouseError(
                f"partition value {value!r} of {key!r} must be given in Delta string form "
                f"(a str, or None for null), e.g. {str(value)!r}"
            )
    return dict(spec)


def check_partition_values(
    spec: Mapping[str, str | None], partition_columns: Sequence[str], schema: StructType
) -> dict[str, str | None]:
    """`check_partition_spec`, and every value a valid value of its column's type in `schema`."""
    checked = check_partition_spec(spec, partition_columns)
    types = {f.name: f.dataType for f in schema.fields}
    for column, value in checked.items():
        from_partition_string(value, types[column], column)
    return checked


class PartitionMatcher:
    """Which files (or rows) fall inside some of a list of partition specs, by hash lookup.

    Specs may name all partition columns or only some (`{"day": "2024-05-01"}` of a table
    partitioned by day and hour). Values are compared typed, in canonical string form
    ('7' and '007' are the same int partition): each spec becomes a tuple of canonical
    values in a set per column set, and `matches` looks a file's values up in each set, so
    matching F files against P specs costs O(F + P), not O(F x P). Canonical forms are
    cached per (column, value), since files repeat their partitions' values.

    Example:
        >>> m = PartitionMatcher([{"day": "2024-05-01"}], {"day": DateType()}, ["day"])
        >>> m.matches({"day": "2024-05-01"}), m.matches({"day": "2024-05-02"})
        (True, False)
    """

    def __init__(
        self,
        specs: Sequence[Mapping[str, str | None]],
        types: Mapping[str, DataType],
        partition_columns: Sequence[str],
    ):
        self._types = types
        self._canonical: dict[tuple[str, str | None], str | None] = {}
        self._groups: dict[tuple[str, ...], set[tuple[str | None, ...]]] = {}
        order = {c: i for i, c in enumerate(partition_columns)}
        for spec in specs:
            checked = check_partition_spec(spec, partition_columns)
            columns = tuple(sorted(checked, key=order.__getitem__))
            self._groups.setdefault(columns, set()).add(tuple(self.canonical(c, checked[c]) for c in columns))

    def canonical(self, column: str, value: str | None) -> str | None:
        """The canonical Delta string form of one value of `column` (cached)."""
        found = self._canonical.get((column, value), _MISSING)
        if found is _MISSING:
            found = normalize_partition_string(value, self._types[column], column)
            self._canonical[(column, value)] = found
        return found  # type: ignore[return-value]

    def key(self, values: Mapping[str, str | None], columns: Sequence[str]) -> tuple[str | None, ...]:
        """The canonical values of `columns` in `values` (a hashable partition identity)."""
        return tuple(self.canonical(c, values.get(c)) for c in columns)

    def matches(self, values: Mapping[str, str | None]) -> bool:
        """True when `values` (a file's partition values) match some spec."""
        return any(self.key(values, columns) in wanted for columns, wanted in self._groups.items())


_MISSING = object()
