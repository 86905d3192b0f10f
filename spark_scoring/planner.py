"""The nightly planner: from the Delta logs alone, decide what a run must do.

It reads only logs, never rows: the output's log for the job's last nightly commit (its
`CommitRecord`: watermark, source table id and commit timestamp, model identity, app id)
and for commits other writers made since; the source's log for the changes since the
watermark (`lakehouse.changes`, commit files only). Decisions, in order:

1. no output, or `--full-refresh`: score everything (`full`);
2. the source is not the table the job scored (its table id changed, it has fewer
   versions than the watermark, or the watermark's version now has another commit
   timestamp): refuse with `HistoryGapError`, whose advice (`--full-refresh`) then starts a
   new watermark epoch, so that every later night plans against the new table's versions;
3. the model identity changed: `model.on_change` decides (rescore -> full, fail ->
   refuse, new-rows-only -> carry on from the watermark with the new model);
4. nothing changed in the source, and no other writer changed the output's rows: nothing;
5. only files were added: `append`; otherwise (rewrites, deletes, deletion vectors, a
   history gap, commits of other writers on the output): `upsert` over the region of
   partitions and key ranges those changes touched (`incremental` module docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from spark_scoring.context import RunContext
from spark_scoring.contract import CommitRecord
from spark_scoring.errors import HistoryGapError, SchemaDriftError, ScoringError
from spark_scoring.incremental import Plan, app_id
from spark_scoring.lakehouse import keyranges
from spark_scoring.lakehouse.deltalog import Commit, DeltaLog, FileAction, MissingLogError

log = logging.getLogger(__name__)

#: Commit operations that never change a row, whatever their actions say.
DATA_NEUTRAL_OPERATIONS = frozenset(
    {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES",
     "ADD CONSTRAINT", "DROP CONSTRAINT", "CHECKPOINT", "REORG", "UPGRADE PROTOCOL"}
)


def last_nightly(out_log: DeltaLog, job: str, latest: int) -> tuple[int, CommitRecord, list[Commit]] | None:
    """The job's newest nightly commit: (its version, its record, the commits after it).

    Reads the output's commit files newest first, as far back as needed (no fixed limit:
    a job with hundreds of backfills since still finds its watermark). None when there is
    none, or when the log was cleaned up before one was found.
    """
    after: list[Commit] = []
    for version in range(latest, -1, -1):
        try:
            commit = out_log.commit(version)
        except MissingLogError:
            return None
        record = CommitRecord.from_metadata(_custom(commit))
        if record is not None and record.job == job and record.is_nightly:
            return version, record, list(reversed(after))
        after.append(commit)
    return None


def _custom(commit: Commit) -> dict:
    """A commit's custom metadata: top-level commitInfo keys and the `userMetadata` JSON."""
    from spark_scoring.lakehouse.base import parse_user_metadata

    return {**dict(commit.info), **parse_user_metadata(commit.info.get("userMetadata"))}


def plan_run(ctx: RunContext, *, full_refresh: bool) -> Plan:
    """The plan of one nightly run (see the module docstring)."""
    cfg, lake = ctx.cfg, ctx.lake
    base = {"source_version": ctx.source_version, "output_version": ctx.output_version}
    if not ctx.output_exists:
        return _full(ctx, None, "output table does not exist yet: scoring every row")
    out_log = lake.log(cfg.output.table)
    found = last_nightly(out_log, cfg.name, ctx.output_version)
    last = found[1] if found else None
    if full_refresh:
        return _full(ctx, last, "--full-refresh: rescoring every row")
    if last is None or last.source_version is None:
        return _full(ctx, last, "no earlier nightly run of this job on the output table: scoring every row")
    _check_same_source(ctx, last)
    since = last.source_version
    mixed = bool(last.mixed_models)
    epoch = last.epoch or 0
    if last.model_identity != ctx.identity:
        old = last.model_uri or "?"
        if cfg.model.on_change == "fail":
            raise ScoringError(
                f"the model changed since the last run (was {old} [{last.model_identity}], now "
                f"{ctx.model.resolved_uri} [{ctx.identity}]) and model.on_change is 'fail'. Nothing was "
                "published. To rescore every row with the new model set model.on_change=rescore (or run "
                "--full-refresh); to score only new and changed rows with it set model.on_change=new-rows-only."
            )
        if cfg.model.on_change == "rescore":
            return _full(ctx, last, f"model changed (was {old}): rescoring every row (model.on_change=rescore)")
        mixed, epoch = True, _free_epoch(ctx, 0)
    elif mixed and cfg.model.on_change == "rescore":
        return _full(ctx, last, "the output still holds rows of other models (an earlier new-rows-only period): "
                                "rescoring every row (model.on_change=rescore)")
    app = app_id(cfg.name, ctx.identity, epoch)
    # A repair night at the version already recorded (another writer changed the output,
    # the source did not) commits without the watermark: Delta's txn rule would skip it.
    recorded = _recorded(ctx, app)
    nightly = {"since_version": since, "app_id": app, "epoch": epoch, "mixed_models": mixed,
               "record_watermark": recorded is None or recorded < ctx.source_version, **base}
    repair = _output_changes(ctx, out_log, found[0], found[2])
    if cfg.model.on_change != "rescore" and repair.other_models != []:
        # Backfills with another model under new-rows-only: the output is mixed from now on.
        nightly["mixed_models"] = True
        repair = _OutputChanges(repair.foreign)
    if since == ctx.source_version and not repair:
        return Plan("nothing", reason=f"source unchanged since version {since}: nothing to do", **nightly)
    try:
        changes = lake.changes(cfg.source.table, since, ctx.source_version) if since < ctx.source_version else None
    except MissingLogError as exc:
        log.warning("source history gap: %s", exc)
        return Plan("upsert", region=None, reason=(
            f"source versions {since + 1}..{ctx.source_version} are no longer in its log (cleaned up): "
            "comparing every key with the output, scoring only what differs"), **nightly)
    neutral = changes is None or not changes.data_change or all(
        c.operation.upper() in DATA_NEUTRAL_OPERATIONS for c in changes.commits
    )
    if neutral and not repair:
        what = ", ".join(sorted({c.operation for c in changes.commits})) if changes else ""
        return Plan("nothing", reason=f"versions {since + 1}..{ctx.source_version} changed no data ({what})", **nightly)
    source_actions = [] if neutral or changes is None else [*changes.added.values(), *changes.removed.values()]
    if not repair and changes is not None and not changes.removed and all(a.data_change for a in changes.added.values()):
        added = tuple(changes.added[k] for k in sorted(changes.added))
        return Plan("append", added_files=added, reason=(
            f"source versions {since + 1}..{ctx.source_version} only added {len(added)} file(s): "
            "scoring their rows and appending them"), **nightly)
    region = _region(ctx, [*source_actions, *repair.foreign], repair.other_models)
    what = [f"{len(source_actions)} changed source file(s)"]
    if repair.foreign:
        what.append(f"{len(repair.foreign)} output file(s) another writer touched")
    if repair.other_models != []:
        what.append("rows a backfill scored with another model")
    return Plan("upsert", region=region, reason=(
        f"{' and '.join(what)} since source version {since}: comparing the keys of "
        f"{'the whole table' if region is None else f'{len(region)} key range(s)'}"), **nightly)


def _full(ctx: RunContext, last: CommitRecord | None, reason: str) -> Plan:
    """A full plan; its watermark goes where Delta lets it go (see `app_id`)."""
    epoch = last.epoch or 0 if last is not None and last.model_identity == ctx.identity else 0
    recorded = _recorded(ctx, app_id(ctx.cfg.name, ctx.identity, epoch))
    record = True
    if recorded is not None and recorded == ctx.source_version and _same_source(ctx, last):
        # Already recorded for this very source version: keep it (recording it again would
        # make Delta's txnVersion rule skip the write).
        record = False
    elif recorded is not None and recorded >= ctx.source_version:
        epoch = _free_epoch(ctx, epoch + 1)
    return Plan(
        "full", source_version=ctx.source_version, output_version=ctx.output_version, reason=reason,
        record_watermark=record, app_id=app_id(ctx.cfg.name, ctx.identity, epoch), epoch=epoch,
    )


def _recorded(ctx: RunContext, app: str) -> int | None:
    if not ctx.output_exists:
        return None
    return ctx.lake.transaction_version(ctx.cfg.output.table, app)


def _free_epoch(ctx: RunContext, epoch: int) -> int:
    """The first epoch from `epoch` whose app id has no watermark at or above the source version."""
    while (v := _recorded(ctx, app_id(ctx.cfg.name, ctx.identity, epoch))) is not None and v >= ctx.source_version:
        epoch += 1
    return epoch


def _same_source(ctx: RunContext, last: CommitRecord | None) -> bool:
    """True when `last` scored this very source table at the pinned version's commit."""
    return (
        last is not None
        and last.source_table_id in (None, ctx.source_table_id)
        and last.source_version == ctx.source_version
        and last.source_commit_timestamp in (None, ctx.source_timestamp)
    )


def _check_same_source(ctx: RunContext, last: CommitRecord) -> None:
    """Refuse when the source is not the table (or history) the watermark refers to."""
    table, since = ctx.cfg.source.table, last.source_version
    advice = ("Nothing was published. Run once with --full-refresh to rescore it from scratch; later "
              "nights then plan against the new table's own versions.")
    if last.source_table_id and last.source_table_id != ctx.source_table_id:
        raise HistoryGapError(
            f"source table {table!r} was recreated since the last run (table id {last.source_table_id} "
            f"is now {ctx.source_table_id}), so its version numbers no longer continue from the watermark "
            f"(version {since}). {advice}"
        )
    if since is not None and since > ctx.source_version:
        raise HistoryGapError(
            f"source table {table!r} is at version {ctx.source_version}, older than version {since} this job "
            f"already scored: the source was recreated or restored from a copy. {advice}"
        )
    if since is not None and last.source_commit_timestamp is not None:
        try:
            stamp = ctx.lake.log(table).commit(since).timestamp
        except MissingLogError:
            return  # cleaned up: the table id is the evidence left
        if stamp is not None and stamp != last.source_commit_timestamp:
            raise HistoryGapError(
                f"source table {table!r}: version {since} (the last version this job scored) now has another "
                f"commit (timestamp {stamp}, was {last.source_commit_timestamp}): the table was rewritten or "
                f"restored from a copy behind the watermark. {advice}"
            )


@dataclass(frozen=True)
class _OutputChanges:
    """What happened to the output since the job's last nightly commit.

    Attributes:
        foreign: file actions of commits by other writers that changed rows.
        other_models: key ranges our own backfills rescored with another model identity
            (None: the whole table).
    """

    foreign: list[FileAction] = field(default_factory=list)
    other_models: list[keyranges.KeyRange] | None = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.foreign) or self.other_models is None or bool(self.other_models)


def _output_changes(ctx: RunContext, out_log: DeltaLog, since_out: int, commits: Iterable[Commit]) -> _OutputChanges:
    """Commits on the output since the job's last nightly commit (output version `since_out`).

    Raises:
        SchemaDriftError: another writer changed the output's schema or partitioning.
    """
    foreign: list[FileAction] = []
    other: list[keyranges.KeyRange] | None = []
    shape = None
    by = list(ctx.cfg.source.partition_by)
    for commit in commits:
        record = CommitRecord.from_metadata(_custom(commit))
        changed = False
        if commit.metadata is not None:
            if shape is None:
                before = out_log.snapshot(since_out).metadata
                shape = (before.schema_string, before.partition_columns)
            now = (commit.metadata.schema_string, commit.metadata.partition_columns)
            changed, shape = now != shape, now
        if record is not None and record.job == ctx.cfg.name:
            # Our own backfill: rows it scored with another model identity are stale under
            # on_change=rescore, as rows of a new-rows-only period are.
            if record.model_identity != ctx.identity and other is not None:
                replaced = record.replaced_partitions()
                other = None if replaced is None else other + [
                    keyranges.KeyRange(keyranges.partition_key(p, by)) for p in replaced
                ]
            continue
        if changed:
            raise SchemaDriftError(
                f"output table {ctx.cfg.output.table!r}: version {commit.version} ({commit.operation or 'a commit'} "
                "by another writer) changed the table's schema or partitioning. Nothing was published. Run with "
                "--full-refresh to rebuild the output from the current source."
            )
        if commit.operation.upper() in DATA_NEUTRAL_OPERATIONS or not commit.data_change:
            continue
        log.warning("output version %d (%s) was made by another writer: its rows are compared again",
                    commit.version, commit.operation)
        foreign += [*commit.adds, *commit.removes]
    return _OutputChanges(foreign, other)


def _region(
    ctx: RunContext, actions: list[FileAction], extra: list[keyranges.KeyRange] | None
) -> tuple[keyranges.KeyRange, ...] | None:
    """The key ranges the file actions (and `extra`) can hold (None: the whole table)."""
    if extra is None:
        return None
    key = ctx.cfg.source.key
    by = list(ctx.cfg.source.partition_by)
    key_type = ctx.lake.schema(ctx.cfg.source.table, ctx.source_version)[key].dataType.simpleString()
    ranges = keyranges.merge([*(keyranges.file_range(a, key, by, key_type) for a in actions), *extra])
    if any(r.partition is None and r.low is None and r.high is None for r in ranges):
        return None
    return tuple(ranges)


def backfill_version(ctx: RunContext) -> int:
    """The source version a backfill reads: the one the nightly output reflects.

    When the source changed no row since then (only OPTIMIZE, VACUUM and the like), the
    pinned version holds the same rows and is read instead: after a compaction and a VACUUM
    the older version's files are gone.
    """
    cfg = ctx.cfg
    if not ctx.output_exists:
        return ctx.source_version
    found = last_nightly(ctx.lake.log(cfg.output.table), cfg.name, ctx.output_version)
    state = found[1].source_version if found else None
    if state is None or state >= ctx.source_version:
        return ctx.source_version
    try:
        changes = ctx.lake.changes(cfg.source.table, state, ctx.source_version)
    except MissingLogError:
        return state  # check_readable says whether its files are still there
    if not changes.data_change or all(c.operation.upper() in DATA_NEUTRAL_OPERATIONS for c in changes.commits):
        return ctx.source_version
    return state


def check_readable(ctx: RunContext, partitions: Iterable[dict]) -> None:
    """Fail with advice when the files a backfill would read at its version are gone."""
    by = list(ctx.cfg.source.partition_by)
    wanted = {keyranges.partition_key(p, by) for p in partitions}
    src_log = ctx.lake.log(ctx.cfg.source.table)
    try:
        files = [f for f in src_log.snapshot(ctx.source_version).files.values()
                 if keyranges.partition_key(f.partition_values, by) in wanted]
    except MissingLogError as exc:
        missing = [str(exc)]
    else:
        missing = src_log.missing_files(files)
    if missing:
        raise HistoryGapError(
            f"backfill reads source {ctx.cfg.source.table!r} at version {ctx.source_version}, the version the "
            f"nightly output reflects, but {len(missing)} of its files are gone (vacuumed?), e.g. {missing[0]}. "
            "Nothing was published. Run the nightly job first (`spark-scoring run CONFIG`): it brings the output "
            "to the current source version; then run the backfill again."
        )
