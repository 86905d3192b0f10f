"""The output contract: the columns every scored table holds and what every commit says.

One home for the names a reader of a scored table relies on, so the pipeline, the
incremental planner, `status` and the explore helpers spell them once. Nothing here imports
pyspark: the batching code, the explore helpers and tests read it without a JVM.

A scored table's columns are, in order: the key, the partition and passthrough columns
(copied from the source), the task's output columns, then `FIXED_COLUMNS`: `error`, the
lineage columns and `input_hash`.

Every commit spark-scoring makes carries custom commit metadata under `META_PREFIX`
(`spark_scoring.run_id`, `spark_scoring.job`, ...); `CommitRecord` is the typed form of it:
written with `CommitRecord.to_metadata()`, read back with `CommitRecord.from_metadata()`.

Example:
    >>> record = CommitRecord(run_id="r1", job="reviews", mode="run", source_version=7)
    >>> CommitRecord.from_metadata(record.to_metadata()).source_version
    7
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# ------------------------------------------------------------------------------- columns

#: Null where the row scored; otherwise why it did not.
ERROR = "error"
#: The resolved model URI with its version (`models:/reviews/3`).
MODEL_URI = "model_uri"
#: The registry version (null for a local directory).
MODEL_VERSION = "model_version"
#: The MLflow run that scored the row.
RUN_ID = "run_id"
#: When that run scored it (UTC timestamp).
SCORED_AT = "scored_at"
#: The source Delta version the row was read at.
SOURCE_VERSION = "source_version"
#: SHA-256 of the row's model inputs: how a changed row is told from an unchanged one.
INPUT_HASH = "input_hash"

#: The lineage columns, in output order.
LINEAGE_COLUMNS: tuple[str, ...] = (MODEL_URI, MODEL_VERSION, RUN_ID, SCORED_AT, SOURCE_VERSION)
#: Columns every scored table ends with, after the task's outputs, in output order.
FIXED_COLUMNS: tuple[str, ...] = (ERROR, *LINEAGE_COLUMNS, INPUT_HASH)


def output_columns(passthrough: Sequence[str], task_outputs: Sequence[str]) -> list[str]:
    """The columns of a scored table, in order: passthrough (key and partition columns
    first), the task's outputs, then `FIXED_COLUMNS`."""
    return [*passthrough, *task_outputs, *FIXED_COLUMNS]


# ------------------------------------------------------------------------- commit metadata

#: Prefix of every custom commit-metadata key spark-scoring writes.
META_PREFIX = "spark_scoring."
#: Commit-metadata key holding the unique id of one write (to find its commit afterwards).
WRITE_ID_KEY = META_PREFIX + "write_id"

#: Modes of a commit (`spark_scoring.mode`).
MODE_RUN = "run"
MODE_FULL_REFRESH = "full-refresh"
MODE_BACKFILL = "backfill"
MODE_QUARANTINE = "quarantine"
#: The modes of nightly runs: their commits carry the watermark.
NIGHTLY_MODES: tuple[str, ...] = (MODE_RUN, MODE_FULL_REFRESH)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class CommitRecord:
    """What one spark-scoring commit says about itself (its custom commit metadata).

    Every field is optional when read back: commits written by older versions, or by
    quarantine writes, carry only some keys. Metadata values are strings in the Delta log;
    integers are parsed here, empty strings read as None.

    Attributes:
        run_id: the MLflow run that made the commit.
        job: the job name.
        mode: one of `NIGHTLY_MODES`, `MODE_BACKFILL` or `MODE_QUARANTINE`.
        key: the row key column.
        source_table: the source table reference, as configured.
        source_table_id: the source's Delta table id when it was read.
        source_version: the source version the commit reflects.
        source_version_start: the watermark the run started from (None: from scratch).
        model_uri: the resolved model URI.
        model_version: the registry version (None for a local directory).
        model_hash: hash of the resolved model's content and task.
        model_identity: the model identity: model hash plus everything else that changes
            predictions (task options, precision, ...); part of the watermark's app id.
        task: the task name.
        rows_scored, rows_carried, rows_failed: the run's counts.
        partitions: JSON list of the replaced partitions, "ALL", or a count.
        app_id: the SetTransaction app id this commit records the watermark under (it
            changes with the model identity, and when the source was recreated).
        epoch: counts the watermark resets of this job and identity (part of `app_id`).
        source_commit_timestamp: the commit timestamp (ms) of `source_version` in the
            source's log: a source recreated or restored behind the watermark has another.
        plan: the plan kind that made the commit (full, append, upsert, backfill).
        mixed_models: True when, after this commit, the output may hold rows scored by
            other model identities (a `model.on_change: new-rows-only` period).
    """

    run_id: str | None = None
    job: str | None = None
    mode: str | None = None
    key: str | None = None
    source_table: str | None = None
    source_table_id: str | None = None
    source_version: int | None = None
    source_version_start: int | None = None
    model_uri: str | None = None
    model_version: str | None = None
    model_hash: str | None = None
    model_identity: str | None = None
    task: str | None = None
    rows_scored: int | None = None
    rows_carried: int | None = None
    rows_failed: int | None = None
    partitions: str | None = None
    app_id: str | None = None
    epoch: int | None = None
    source_commit_timestamp: int | None = None
    plan: str | None = None
    mixed_models: bool | None = None

    #: Field name -> metadata key suffix, where they differ (the key predates the name).
    _KEYS = {"model_hash": "model_id"}

    @property
    def is_nightly(self) -> bool:
        """True for the commits of nightly runs (`run`, `full-refresh`): they carry the watermark."""
        return self.mode in NIGHTLY_MODES

    @classmethod
    def metadata_key(cls, name: str) -> str:
        """The commit-metadata key of field `name` (`source_version` -> `spark_scoring.source_version`)."""
        if name not in _FIELD_TYPES:
            raise KeyError(f"{name!r} is not a CommitRecord field; fields: {', '.join(_FIELD_TYPES)}")
        return META_PREFIX + cls._KEYS.get(name, name)

    def to_metadata(self) -> dict[str, str]:
        """The commit metadata to write: every field as a string (None as "")."""
        out = {}
        for name in _FIELD_TYPES:
            value = getattr(self, name)
            if isinstance(value, bool):
                value = "true" if value else "false"
            out[self.metadata_key(name)] = "" if value is None else str(value)
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> CommitRecord | None:
        """The record a commit's metadata holds, or None when spark-scoring did not write it."""
        metadata = metadata or {}
        if cls.metadata_key("job") not in metadata:
            return None
        values: dict[str, Any] = {}
        for name, kind in _FIELD_TYPES.items():
            raw = metadata.get(cls.metadata_key(name))
            if raw is None or raw == "":
                continue
            if kind is bool:
                values[name] = str(raw).lower() == "true"
            else:
                values[name] = _as_int(raw) if kind is int else str(raw)
        return cls(**values)

    def replaced_partitions(self) -> list[dict[str, str | None]] | None:
        """The partitions the commit replaced (None: the whole table, or not recorded)."""
        if not self.partitions or self.partitions == "ALL":
            return None
        try:
            parsed = json.loads(self.partitions)
        except ValueError:
            return None
        return [dict(p) for p in parsed] if isinstance(parsed, list) else None


_FIELD_TYPES: dict[str, type] = {
    f.name: (bool if "bool" in str(f.type) else int if "int" in str(f.type) else str)
    for f in dataclasses.fields(CommitRecord)
}
#: The `CommitRecord` fields holding integers (strings in the Delta log, parsed when read back).
INT_FIELDS: tuple[str, ...] = tuple(name for name, kind in _FIELD_TYPES.items() if kind is int)


def strip_prefix(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `spark_scoring.*` keys of a commit's metadata, prefix removed (for display)."""
    return {
        key[len(META_PREFIX) :]: value
        for key, value in (metadata or {}).items()
        if str(key).startswith(META_PREFIX)
    }
