"""Read a table's `_delta_log` through Spark's own Hadoop file system, from the driver JVM.

The Delta log reader (`deltalog`) reads with pyarrow's file systems. Some storage the
driver's Spark can read is out of pyarrow's reach: schemes pyarrow does not know (`s3a://`,
`wasbs://`, `dbfs:/`, `viewfs://`), HDFS without libhdfs, or credentials that live only in
Spark's Hadoop configuration (`spark.hadoop.fs.s3a.*`). For those, `spark_filesystem(spark)`
is a read-only pyarrow file system that lists and opens files through the driver's
`org.apache.hadoop.fs.FileSystem` (py4j calls, no Spark job): the same log files, read
with the same configuration and credentials Spark's readers use.

`direct_access_error(root)` says whether pyarrow can read a table root's log (one
listing of `_delta_log`); the delta-spark engine asks it once per root and switches to
Spark's file system on any failure (unknown scheme, missing native library, refused
credentials). Local paths are always read directly (`is_local`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from pyspark.sql import SparkSession

log = logging.getLogger("spark_scoring.lakehouse")

#: A URI scheme (two letters at least: `C:` is a Windows drive, not a scheme).
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


class _HadoopLogHandler(pafs.FileSystemHandler):
    """A read-only pyarrow file system handler over the driver JVM's Hadoop FileSystem.

    Paths are full Hadoop URIs (`s3a://bucket/table/_delta_log/...`), as the table root.
    """

    def __init__(self, spark: SparkSession):
        jvm = spark._jvm  # type: ignore[attr-defined]
        if jvm is None:
            raise RuntimeError("Spark's Hadoop file system needs the py4j gateway (not Spark Connect)")
        self._jvm = jvm
        self._conf = spark._jsc.hadoopConfiguration()  # type: ignore[attr-defined]

    def _path(self, path: str) -> tuple[Any, Any]:
        hpath = self._jvm.org.apache.hadoop.fs.Path(path)
        return hpath.getFileSystem(self._conf), hpath

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _HadoopLogHandler) and other._conf.equals(self._conf)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "spark-hadoop"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        infos = []
        for path in paths:
            fs, hpath = self._path(path)
            if not fs.exists(hpath):
                infos.append(pafs.FileInfo(path, pafs.FileType.NotFound))
                continue
            status = fs.getFileStatus(hpath)
            kind = pafs.FileType.File if status.isFile() else pafs.FileType.Directory
            infos.append(pafs.FileInfo(path, kind, size=int(status.getLen()), mtime=int(status.getModificationTime()) / 1000))
        return infos

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        fs, hpath = self._path(selector.base_dir)
        if not fs.exists(hpath):
            if selector.allow_not_found:
                return []
            raise FileNotFoundError(selector.base_dir)
        statuses = fs.listStatus(hpath)  # a few py4j calls per entry: a fallback, not the fast path
        infos = []
        for status in statuses:
            name = status.getPath().getName()
            kind = pafs.FileType.File if status.isFile() else pafs.FileType.Directory
            infos.append(pafs.FileInfo(
                f"{selector.base_dir.rstrip('/')}/{name}", kind,
                size=int(status.getLen()), mtime=int(status.getModificationTime()) / 1000,
            ))
        return infos

    def _read(self, path: str) -> pa.Buffer:
        fs, hpath = self._path(path)
        stream = fs.open(hpath)
        try:
            data = self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return pa.py_buffer(bytes(data))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self._read(path))

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self._read(path))

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the Delta log is read-only through Spark's file system here")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
    delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only


def spark_filesystem(spark: SparkSession) -> pafs.FileSystem:
    """A read-only pyarrow file system reading through the driver's Hadoop FileSystem."""
    return pafs.PyFileSystem(_HadoopLogHandler(spark))


def is_local(root: str) -> bool:
    """True for a local path or a `file:` URI (always read directly)."""
    match = _SCHEME_RE.match(root)
    return match is None or match.group(1).lower() == "file"


def direct_access_error(root: str) -> str | None:
    """Why pyarrow cannot read the `_delta_log` of the table at URI `root` (None: it can)."""
    try:
        fs, path = pafs.FileSystem.from_uri(root.rstrip("/"))
        fs.get_file_info(pafs.FileSelector(f"{path}/_delta_log", allow_not_found=True))
    except Exception as exc:  # noqa: BLE001 - any failure means: not readable directly
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None
