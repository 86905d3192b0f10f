"""`python -m bench.nightly_io`: what a night rewrites, on a 1,000,000-row UNPARTITIONED source.

Issue 15's benchmark. The source (`id` long, `text` string; sequential ids in 40 files of
equal size, written with deltalake) is scored with a tiny random BERT (hidden 32, 2 layers:
this measures IO, planning and commits, not the model) by `pipeline.run(cfg)` in this
process, with `source.partition_by: []`. Then, one night each, in this order:

  no-op                    nothing changed
  1 row append             one new row (the fixed cost of a publishing run)
  0.1% / 1% / 10% append   new rows (new ids), one new source file each
  1% update, confined      `DeltaTable.update` of a key range straddling 2 of the 40 source
                           files (delta-rs rewrites those 2 files)
  1% update, scattered     `id % 100 = 7`: every source file rewritten

and then the strategies for scattered updates, side by side on one more scattered change
(`id % 100 = 37`) applied to three copies of the same output: the delta-rs engine
(copy-on-write), the JVM engine with the output's `delta.enableDeletionVectors=false`
(copy-on-write MERGE) and with it `true` (merge-on-read: deletion vectors + new files).

For every night the OUTPUT's Delta log is read here, independently of the project's own
log reader (JSON commits replayed from version 0): files added and removed by the night's
commit, bytes removed (a removed file state whose path comes back with a deletion vector is
a DV update, not a rewrite: its bytes count as "DV-updated", not "rewritten"), and the output's
size before. The source's log gives the share of source bytes the change rewrote.

Targets (issue 15): an append night rewrites 0 bytes of old output (removes no file); a
confined update night rewrites at most 2x the share of source bytes that changed; a 1%
append night costs at most 5% of the full run plus the one-row night.

Example:
    python -m bench.nightly_io --rows 1000000 --cores 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROWS = 1_000_000
QUICK_ROWS = 40_000
FILES = 40
ONE_ROW, APPENDS = "1 row append", (("0.1% append", 0.001), ("1% append", 0.01), ("10% append", 0.10))
CONFINED, SCATTERED = "1% update, confined", "1% update, scattered"
STRATEGIES = (
    ("delta-rs, copy-on-write", "delta-rs", None),
    ("JVM, copy-on-write (DVs off)", "delta-spark", "false"),
    ("JVM, merge-on-read (DVs on)", "delta-spark", "true"),
)
#: Issue 15's limits.
MAX_CONFINED_FACTOR = 2.0
MAX_APPEND_SHARE = 0.05
_WORDS = ("great", "poor", "fast", "slow", "battery", "screen", "price", "delivery", "quality", "support",
          "broke", "love", "hate", "works", "returned", "cheap", "solid", "noisy", "bright", "small")


def _log(msg: str) -> None:
    print(f"[bench.nightly_io {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# The Delta log, read here (not through spark_scoring)
# --------------------------------------------------------------------------------------


@dataclass
class LogDelta:
    """What the commits (`since`, `until`] of a table did to its files."""

    commits: int = 0
    files_added: int = 0  # new paths
    files_removed: int = 0  # paths gone (rewritten or deleted)
    dv_updates: int = 0  # paths removed and re-added with a deletion vector
    bytes_added: int = 0
    bytes_removed: int = 0  # bytes of the paths gone: what was rewritten
    bytes_before: int = 0  # the table's active bytes at `since`
    files_before: int = 0
    operations: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)  # `spark_scoring.plan` of each commit that has one

    @property
    def rewritten_share(self) -> float:
        """Share of the table's bytes at `since` that was removed (rewritten or deleted)."""
        return self.bytes_removed / self.bytes_before if self.bytes_before else 0.0


def _commit(root: Path, version: int) -> list[dict[str, Any]]:
    path = root / "_delta_log" / f"{version:020d}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this reader replays JSON commits from version 0 only")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _user_metadata(info: dict[str, Any]) -> dict[str, Any]:
    # The JVM engine writes the run's metadata as JSON in `userMetadata`; delta-rs also
    # writes it as top-level commitInfo keys.
    try:
        parsed = json.loads(info.get("userMetadata") or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def latest_version(root: Path) -> int:
    """The newest commit version in `root`'s `_delta_log`."""
    return max(int(p.name.split(".")[0]) for p in (root / "_delta_log").glob("*.json"))


def _file_id(action: dict[str, Any]) -> tuple[str, str]:
    """A file's identity in the log: its path and its deletion vector (a DV update removes
    (path, old DV) and adds (path, new DV), in either order within one commit)."""
    dv = action.get("deletionVector") or {}
    return action["path"], f"{dv.get('storageType', '')}{dv.get('pathOrInlineDv', '')}@{dv.get('offset', '')}"


def _replay(files: dict[tuple[str, str], int], action: dict[str, Any]) -> None:
    if "add" in action:
        files[_file_id(action["add"])] = int(action["add"]["size"])
    elif "remove" in action:
        files.pop(_file_id(action["remove"]), None)


def active_files(root: Path, version: int) -> dict[str, int]:
    """Active file path -> size at `version` (replaying the JSON commits from 0)."""
    files: dict[tuple[str, str], int] = {}
    for v in range(version + 1):
        for action in _commit(root, v):
            _replay(files, action)
    return {path: size for (path, _), size in files.items()}


def log_delta(root: Path, since: int, until: int) -> LogDelta:
    """Files and bytes the commits (`since`, `until`] of the table at `root` added and removed."""
    state: dict[tuple[str, str], int] = {}
    for v in range(since + 1):
        for action in _commit(root, v):
            _replay(state, action)
    before = {path: size for (path, _), size in state.items()}
    ids_before = set(state)
    out = LogDelta(bytes_before=sum(before.values()), files_before=len(before))
    for v in range(since + 1, until + 1):
        out.commits += 1
        for action in _commit(root, v):
            _replay(state, action)
            if "commitInfo" in action:
                info = action["commitInfo"]
                out.operations.append(str(info.get("operation", "?")))
                plan = info.get("spark_scoring.plan") or _user_metadata(info).get("spark_scoring.plan")
                if plan:
                    out.plans.append(str(plan))
    after = {path: size for (path, _), size in state.items()}
    gone, new = before.keys() - after.keys(), after.keys() - before.keys()
    out.files_removed, out.files_added = len(gone), len(new)
    out.bytes_removed = sum(before[p] for p in gone)
    out.bytes_added = sum(after[p] for p in new)
    # Kept paths whose (path, DV) identity changed: rows deleted by deletion vector.
    out.dv_updates = len({p for p, _ in set(state) - ids_before} & before.keys() & after.keys())
    return out


# --------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _pool(size: int = 10_000) -> Any:
    """`size` distinct short review-like texts (6-15 words of a 20-word vocabulary)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(15)
    lengths = rng.integers(6, 16, size)
    words = rng.integers(0, len(_WORDS), (size, 15))
    return pa.array([" ".join(_WORDS[w] for w in row[:k]) for row, k in zip(words.tolist(), lengths.tolist(),
                                                                             strict=True)])


def _frame(first: int, count: int, seed: int = 0) -> Any:
    """Rows `first..first+count-1`, each text drawn from `_pool()`, deterministic in
    (`first`, `count`, `seed`): a million rows take a second."""
    import numpy as np
    import pyarrow as pa

    pool = _pool()
    rng = np.random.default_rng([seed, first, count])
    return pa.table({"id": pa.array(np.arange(first, first + count, dtype=np.int64)),
                     "text": pool.take(pa.array(rng.integers(0, len(pool), count)))})


def build_source(path: Path, rows: int, files: int = FILES) -> int:
    """`rows` sequential ids (0..rows-1) in `files` equal files, one append each; returns the
    rows per file."""
    from deltalake import write_deltalake

    shutil.rmtree(path, ignore_errors=True)
    per_file = -(-rows // files)
    for first in range(0, rows, per_file):
        write_deltalake(str(path), _frame(first, min(per_file, rows - first)), mode="append")
    return per_file


def append(path: Path, first: int, count: int) -> None:
    """`count` new rows with ids from `first`, one deltalake append."""
    from deltalake import write_deltalake

    write_deltalake(str(path), _frame(first, count, seed=1), mode="append")


def update(path: Path, predicate: str) -> int:
    """Edit the text of the rows matching `predicate` (one deltalake UPDATE); returns the rows."""
    from deltalake import DeltaTable

    metrics = DeltaTable(str(path)).update(updates={"text": "concat(text, ' (edited)')"}, predicate=predicate)
    return int(metrics["num_updated_rows"])


# --------------------------------------------------------------------------------------
# The nights
# --------------------------------------------------------------------------------------


def job_config(work: Path, source: Path, output: Path, model_dir: str, engine: str) -> Any:
    """The README config on an unpartitioned source (`partition_by: []`)."""
    from spark_scoring.config import config_from_dict

    return config_from_dict({
        "name": "bench_io",
        "source": {"table": str(source), "key": "id", "partition_by": []},
        "model": {"uri": model_dir, "task": "embedding", "input": "text"},
        "output": {"table": str(output)},
        "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "bench-io"},
        "lakehouse": {"engine": engine},
        "run": {"progress": False},
    })


def night(spark: Any, cfg: Any, label: str, source: Path, source_before: int, **extra: Any) -> dict[str, Any]:
    """One `pipeline.run(cfg)`: wall time, the run's figures, and what its commit did to
    the output (from the output's log) and what the source change did (from the source's)."""
    from spark_scoring import pipeline

    out = Path(cfg.output.table)
    out_before = latest_version(out) if (out / "_delta_log").is_dir() else -1
    start = time.perf_counter()
    res = pipeline.run(cfg, spark=spark)
    wall = time.perf_counter() - start
    out_after = latest_version(out)
    src_after = latest_version(source)
    o = log_delta(out, out_before, out_after)  # from -1: the night created the output
    s = log_delta(source, source_before, src_after)
    row = {
        "label": label, "engine": cfg.lakehouse.engine, "wall_s": round(wall, 3), "status": res.status,
        "mode": res.mode, "plan": res.plan, "rows_scored": res.rows_scored, "rows_carried": res.rows_carried,
        "phases_s": dict(res.seconds),
        "output": {"files_added": o.files_added, "files_removed": o.files_removed, "dv_updates": o.dv_updates,
                   "bytes_added": o.bytes_added, "bytes_rewritten": o.bytes_removed,
                   "bytes_before": o.bytes_before, "files_before": o.files_before,
                   "rewritten_share": round(o.rewritten_share, 5), "commits": o.commits, "operations": o.operations,
                   "plans": o.plans},
        "source": {"files_added": s.files_added, "files_removed": s.files_removed, "bytes_rewritten": s.bytes_removed,
                   "bytes_before": s.bytes_before, "changed_share": round(s.rewritten_share, 5)},
        **extra,
    }
    _log(f"  {label}: {res.status} ({', '.join(o.plans) or '-'}), {wall:.1f} s, scored {res.rows_scored:,}; output "
         f"+{o.files_added}/-{o.files_removed} files, {o.bytes_removed:,} B rewritten "
         f"({o.rewritten_share:.1%}), {o.dv_updates} DV updates")
    return row


def run(spark: Any, work: Path, model_dir: str, *, rows: int = ROWS, files: int = FILES, jvm: bool = True,
        save: Callable[[], None] = lambda: None, section: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole sequence (module docstring); fills and returns `section`."""
    from bench import data

    section = {} if section is None else section
    tiny = data.tiny_bert(work / "tiny_bert", model_dir)
    source, output = work / "io_source", work / "io_output"
    shutil.rmtree(output, ignore_errors=True)
    _log(f"building a {rows:,}-row unpartitioned source in {files} files")
    start = time.perf_counter()
    per_file = build_source(source, rows, files)
    nights: list[dict[str, Any]] = []
    section.update({
        "rows": rows, "source_files": files, "rows_per_source_file": per_file,
        "build_s": round(time.perf_counter() - start, 2), "nights": nights, "strategies": [],
        "model": "tiny random BERT (hidden 32, 2 layers, MiniLM's tokenizer), mean-pooled",
        "texts": "6-15 words from a 20-word vocabulary, each drawn from a pool of 10,000 distinct texts",
    })
    cfg = job_config(work, source, output, tiny, "delta-rs")
    next_id = rows

    def step(label: str, change: Callable[[], Any] | None, **extra: Any) -> None:
        before = latest_version(source)
        if change is not None:
            change()
        nights.append(night(spark, cfg, label, source, before, **extra))
        save()

    _log("full run")
    step("full run", None)
    step("no-op", None)
    step(ONE_ROW, lambda: append(source, next_id, 1), new_rows=1)
    next_id += 1
    for label, share in APPENDS:
        n = max(1, round(rows * share))
        step(label, lambda first=next_id, n=n: append(source, first, n), new_rows=n)
        next_id += n
    n = max(1, rows // 100)
    low = 3 * per_file - n // 2  # straddles source files 3 and 4: "a few source files"
    step(CONFINED, lambda: update(source, f"id >= {low} AND id < {low + n}"), updated_rows=n,
         predicate=f"id >= {low} AND id < {low + n}")
    step(SCATTERED, lambda: update(source, "id % 100 = 7"), predicate="id % 100 = 7")
    strategies(spark, work, source, output, tiny, section, jvm=jvm, save=save)
    return section


def strategies(spark: Any, work: Path, source: Path, output: Path, model_dir: str, section: dict[str, Any], *,
               jvm: bool, save: Callable[[], None]) -> None:
    """One more scattered change, applied to three copies of the output, one per strategy."""
    copies = {}
    for label, engine, dvs in STRATEGIES:
        target = work / f"io_output_{len(copies)}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(output, target)
        copies[label] = (engine, dvs, target)
    before = latest_version(source)
    update(source, "id % 100 = 37")
    for label, (engine, dvs, target) in copies.items():
        entry: dict[str, Any] = {"label": label, "engine": engine, "deletion_vectors": dvs}
        if engine == "delta-spark" and not jvm:
            entry.update(available=False, why="the JVM engine is not available here (no Delta jars in the session)")
        else:
            try:
                if dvs is not None:
                    spark.sql(f"ALTER TABLE delta.`{target}` SET TBLPROPERTIES "
                              f"('delta.enableDeletionVectors' = '{dvs}')")
                cfg = job_config(work, source, target, model_dir, engine)
                entry.update(available=True, **night(spark, cfg, label, source, before, predicate="id % 100 = 37"))
            except Exception as exc:  # noqa: BLE001 - one strategy failing is a finding, not the end
                entry.update(available=False, why=f"{type(exc).__name__}: {str(exc)[:500]}")
                _log(f"  {label}: not available ({entry['why'][:200]})")
        section["strategies"].append(entry)
        save()


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's targets with PASS/MISS and margins."""
    by = {n["label"]: n for n in section.get("nights", [])}
    found: list[dict[str, Any]] = []
    for label in (ONE_ROW, *(a for a, _ in APPENDS)):
        n = by.get(label)
        if n:
            o = n["output"]
            found.append({"target": f"{label} night rewrites 0 bytes of old output (removes no file)",
                          "value": f"{o['bytes_rewritten']:,} B rewritten, {o['files_removed']} files removed",
                          "ok": o["bytes_rewritten"] == 0 and o["files_removed"] == 0,
                          "margin": f"{-o['bytes_rewritten']:+,} B"})
    c = by.get(CONFINED)
    if c:
        limit = MAX_CONFINED_FACTOR * c["source"]["changed_share"]
        got = c["output"]["rewritten_share"]
        found.append({"target": "confined 1% update rewrites <= 2x the share of source bytes changed",
                      "value": f"{got:.1%} of output bytes vs limit {limit:.1%} (2 x {c['source']['changed_share']:.1%})",
                      "ok": got <= limit, "margin": f"{(limit - got) * 100:+.1f} points"})
    full, one, pct = by.get("full run"), by.get(ONE_ROW), by.get("1% append")
    if full and one and pct:
        limit = MAX_APPEND_SHARE * full["wall_s"] + one["wall_s"]
        found.append({"target": "1% append night <= 5% of the full run + the one-row night",
                      "value": f"{pct['wall_s']:.1f} s vs limit {limit:.1f} s (5% x {full['wall_s']:.1f} s + "
                               f"{one['wall_s']:.1f} s)",
                      "ok": pct["wall_s"] <= limit, "margin": f"{limit - pct['wall_s']:+.1f} s"})
    return found


def _mb(b: int) -> str:
    return f"{b / 2**20:,.1f}"


def markdown(section: dict[str, Any]) -> list[str]:
    """The nightly-IO section of the report."""
    head = ("| night | status (plan) | wall s | rows scored | output files +/- | DV updates | MiB rewritten "
            "(share) | MiB added | source changed share |")
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"

    def row(n: dict[str, Any]) -> str:
        o, s = n["output"], n["source"]
        plan = ", ".join(o.get("plans") or []) or "-"
        return (f"| {n['label']} | {n['status']} ({plan}) | {n['wall_s']:.2f} | {n['rows_scored']:,} | "
                f"+{o['files_added']} / -{o['files_removed']} | {o['dv_updates']} | {_mb(o['bytes_rewritten'])} "
                f"({o['rewritten_share']:.1%}) | {_mb(o['bytes_added'])} | {s['changed_share']:.1%} |")

    lines = [
        f"## Nightly IO: {section['rows']:,}-row unpartitioned source ({section['source_files']} files of "
        f"{section['rows_per_source_file']:,} rows), delta-rs engine",
        "",
        f"Model: {section['model']}; texts: {section['texts']}. Each night: the source change, then "
        "`pipeline.run(cfg)` in this process; files and bytes from the output's own Delta log (the night's "
        "commit), the source's share from the source's log.",
        "",
        head, rule, *(row(n) for n in section["nights"]), "",
        "Scattered updates, by strategy (one more `id % 100 = 37` change, three copies of the same output):",
        "",
        head, rule,
    ]
    for s in section.get("strategies", []):
        lines.append(row(s) if s.get("available") else f"| {s['label']} | not available: {s['why']} | "
                     "- | - | - | - | - | - | - |")
    plans = [f"- {n['label']}: {n['plan']}" for n in section["nights"] if n["status"] == "published"]
    lines += ["", "Plans the runs reported:", "", *plans, ""]
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the nightly-IO part alone; prints the figures as JSON and returns them."""
    p = argparse.ArgumentParser(prog="python -m bench.nightly_io", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=ROWS)
    p.add_argument("--files", type=int, default=FILES)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    if args.rows < 100 * args.files or args.files < 5:
        p.error("need --files >= 5 and --rows >= 100 x --files")
    from bench import common

    def measure(work: Path, model_dir: str) -> dict[str, Any]:
        from spark_scoring.config import SparkConfig
        from spark_scoring.jars import find_delta_jars
        from spark_scoring.session import get_spark

        jvm = find_delta_jars() is not None
        spark = get_spark(SparkConfig(master=f"local[{args.cores}]", conf={"spark.ui.enabled": "false"}),
                          app_name="bench-nightly-io", engine="delta-spark" if jvm else "delta-rs")
        try:
            return run(spark, work, model_dir, rows=args.rows, files=args.files, jvm=jvm)
        finally:
            spark.stop()

    return common.standalone("bench-io-", measure, targets, keep=args.keep_tmp)


if __name__ == "__main__":
    main()
