"""Checkpoints: which files make a complete one, and reading the actions they hold.

Three layouts exist (PROTOCOL.md "Checkpoints"), all handled the same way:

* classic: `%020d.checkpoint.parquet`;
* multi-part: `%020d.checkpoint.%010d.%010d.parquet` (part, parts), complete only when
  every part is there (Delta-Spark writes them with `spark.databricks.delta.checkpoint.
  partSize`);
* V2 (`delta.checkpointPolicy=v2`): `%020d.checkpoint.<uuid>.json|parquet`, whose
  `sidecar` actions name Parquet files in `_delta_log/_sidecars/` holding the file
  actions. A classic-named checkpoint may be V2 too (it then has sidecars).

Only the action columns a caller asks for are read (`metaData`, `protocol`, `txn` for a
table's state; `add` as well for its files), and sidecars only when file actions are
asked for, so reading a table's metadata from a checkpoint of 100,000 files stays cheap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from spark_scoring.lakehouse.deltalog.actions import file_action, file_actions

CHECKPOINT_RE = re.compile(
    r"^(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10})|\.([0-9a-fA-F-]{36}))?\.(parquet|json)$"
)

#: The actions a table's state needs, and those its files need.
STATE_ACTIONS = ("metaData", "protocol", "txn")
FILE_ACTIONS = ("add",)
FILE_ACTION_NAMES = frozenset({"add", "remove"})


def complete_checkpoints(paths: Sequence[str]) -> list[list[str]]:
    """The complete checkpoints among the checkpoint files of ONE version, best first.

    A classic single file first (one read), then V2 checkpoints, then every multi-part
    set with all its parts; an incomplete multi-part set (a writer died) is left out.
    """
    singles: list[list[str]] = []
    v2: list[list[str]] = []
    parts: dict[int, dict[int, str]] = {}
    for path in sorted(paths):
        match = CHECKPOINT_RE.match(path.rsplit("/", 1)[-1])
        if not match:
            continue
        if match.group(2):
            parts.setdefault(int(match.group(3)), {})[int(match.group(2))] = path
        elif match.group(4):
            v2.append([path])
        elif match.group(5) == "parquet":
            singles.append([path])
    multi = [
        [found[i] for i in sorted(found)]
        for total, found in sorted(parts.items())
        if len(found) == total and sorted(found) == list(range(1, total + 1))
    ]
    return singles + v2 + multi


def read_actions(
    fs: pafs.FileSystem, log_dir: str, files: Sequence[str], wanted: Iterable[str]
) -> dict[str, list[Any]]:
    """The actions named in `wanted` of the checkpoint `files`: name -> actions, as
    `FileAction` objects for "add" and "remove", as dicts for the others.

    Sidecars of a V2 checkpoint are followed when a file action ("add", "remove") is
    wanted. Raises OSError or a pyarrow error when a file is missing or unreadable.
    """
    wanted = tuple(wanted)
    follow = any(w in FILE_ACTION_NAMES for w in wanted)
    columns = (*wanted, "sidecar") if follow else wanted
    out: dict[str, list[Any]] = {name: [] for name in wanted}
    for path in files:
        found = _actions_of(fs, path, columns)
        for sidecar in found.pop("sidecar", []):
            for name, items in _actions_of(fs, _sidecar_path(log_dir, str(sidecar["path"])), wanted).items():
                out[name] += items
        for name, items in found.items():
            out[name] += items
    return out


def _sidecar_path(log_dir: str, path: str) -> str:
    """Where a sidecar action's file is: relative to `_delta_log/_sidecars/`, or absolute."""
    if path.startswith("file:"):
        return unquote(urlsplit(path).path)
    if "://" in path:  # pyarrow file systems take the path after the scheme (bucket/key)
        return unquote(path.split("://", 1)[1])
    if path.startswith("/"):
        return path
    return f"{log_dir}/_sidecars/{unquote(path)}"


def _actions_of(fs: pafs.FileSystem, path: str, columns: Sequence[str]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {name: [] for name in columns}
    if path.endswith(".json"):
        with fs.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8")
        for line in text.splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            for name in columns:
                if action.get(name) is not None:
                    raw = action[name]
                    found[name].append(file_action(raw) if name in FILE_ACTION_NAMES else raw)
        return found
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        present = [c for c in columns if c in parquet.schema_arrow.names]
        if not present:
            return found
        table = parquet.read(columns=present)
    for name in present:
        column = table.column(name)
        # One action per row, the other action columns null: keep this column's rows.
        valid = column.filter(pc.is_valid(column))
        found[name] = file_actions(valid) if name in FILE_ACTION_NAMES else valid.to_pylist()
    return found
