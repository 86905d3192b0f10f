"""Table references: when two of them name the same table, or one lies inside the other.

A job names three tables (`source.table`, `output.table`, `errors.quarantine_table`), each
a path, a URI or a catalog name. Writing one of them must never touch another: an output
that is the source under another spelling overwrites the source, and an output inside the
source's folder loses its log to a VACUUM of the source. `overlap` compares two references
after normalising them:

* local paths (and `file:` URIs) by their real path: `~`, `./`, `..`, a trailing slash and
  symlinked directories all resolve (`os.path.realpath`), so two spellings of one folder
  compare equal;
* other URIs (`s3://`, `abfss://`, ...) by scheme (`s3a`/`s3n` read as `s3`), authority
  and normalised path;
* catalog names case-insensitively, without backticks, qualified with the session
  catalog (`db.t` is `spark_catalog.db.t`).

A catalog name and a path can only be compared once a Spark session resolves the name to
its location: `overlap` answers None for such a pair, and the lakehouse checks the
resolved locations before it writes (its `protected=` argument; `overlap` of two resolved
locations, `file:` URIs included, compares them as paths).

Nothing here imports pyspark: the config check runs before any session starts.

Example:
    >>> overlap("/lake/reviews/", "/lake/./reviews")
    'same'
    >>> overlap("/lake/reviews/scored", "/lake/reviews")
    'inside'
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

#: The catalog a two-part name (`db.table`) belongs to.
SESSION_CATALOG = "spark_catalog"

_CATALOG_NAME_RE = re.compile(r"^`?[A-Za-z_][\w-]*`?(\.`?[A-Za-z_][\w-]*`?){1,2}$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: URI schemes that name the same storage (Hadoop's S3 connectors).
_SAME_SCHEME = {"s3a": "s3", "s3n": "s3"}

Overlap = Literal["same", "inside", "contains"]


def is_catalog_name(table: str) -> bool:
    """True when `table` reads as a catalog name (`db.table`, `catalog.db.table`), not a path.

    Anything with a slash, a URI scheme, or that exists on the local disk is a path; so is a
    bare word (a relative directory).
    """
    if "/" in table or "\\" in table or "://" in table or os.path.exists(table):
        return False
    return bool(_CATALOG_NAME_RE.match(table))


@dataclass(frozen=True)
class TableRef:
    """A normalised table reference.

    Attributes:
        kind: "path" (a local real path or a URI) or "catalog" (a catalog name).
        location: for a path, the real local path or the normalised URI; for a catalog
            name, `catalog.database.table` in lower case.
    """

    kind: Literal["path", "catalog"]
    location: str


def normalise(table: str) -> TableRef:
    """The normalised form of a table reference (see the module docstring)."""
    text = table.strip()
    if is_catalog_name(text):
        parts = [p.strip("`").lower() for p in text.split(".")]
        if len(parts) == 2:
            parts.insert(0, SESSION_CATALOG)
        return TableRef("catalog", ".".join(parts))
    if _SCHEME_RE.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text):  # not a Windows drive
        split = urlsplit(text)
        scheme = split.scheme.lower()
        if scheme == "file" and split.netloc in ("", "localhost"):
            return TableRef("path", _real_path(unquote(split.path) or "/"))
        path = posixpath.normpath(unquote(split.path) or "/")
        path = "" if path in ("/", ".") else path.rstrip("/")
        return TableRef("path", f"{_SAME_SCHEME.get(scheme, scheme)}://{split.netloc}{path}")
    return TableRef("path", _real_path(text))


def _real_path(path: str) -> str:
    # realpath resolves symlinks before applying `..`, as the file system does.
    return os.path.realpath(os.path.expanduser(path))


def overlap(table: str, other: str) -> Overlap | None:
    """How `table` relates to `other`: "same" table, lies "inside" `other`'s folder, or
    "contains" it; None when they are apart, or cannot be compared yet (a catalog name
    and a path: their locations are known only to a Spark session)."""
    a, b = normalise(table), normalise(other)
    if a.kind != b.kind:
        return None
    if a.kind == "catalog":
        return "same" if a.location == b.location else None
    return _path_overlap(a.location, b.location)


def _path_overlap(location: str, other: str) -> Overlap | None:
    a, b = location.rstrip("/") or "/", other.rstrip("/") or "/"
    if a == b:
        return "same"
    if a.startswith(b if b.endswith("/") else b + "/"):
        return "inside"
    if b.startswith(a if a.endswith("/") else a + "/"):
        return "contains"
    return None


def is_local_path(table: str) -> bool:
    """True for a table on this machine's file system (a plain path or `file:`): not a
    catalog name, an object store, HDFS or `dbfs:/` (those may need the session's
    credentials or catalog to reach)."""
    if is_catalog_name(table) or table.startswith("dbfs:"):
        return False
    return "://" not in table or table.startswith("file:")
