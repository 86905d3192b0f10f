"""One job, nights alternating between the two lakehouse engines.

An output started by one engine continues under the other: the watermark (SetTransaction
and the last nightly commit record), the carried rows and the commit metadata each engine
wrote are read back by the other, and after every night the output equals a full refresh
of the source computed independently (on the other engine, into a table of its own). Every
table either engine writes reads identically through both engines and through `deltalake`.
The model is the tiny BERT encoder (deterministic), so equality is exact up to float noise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from spark_scoring import pipeline
from spark_scoring.contract import CommitRecord
from spark_scoring.jars import find_delta_jars
from spark_scoring.lakehouse import open_lakehouse
from tests.pipeline_helpers import assert_same_rows, job_config, read_output, source_rows
from tests.tiny_models import build_bert_mean

pytestmark = pytest.mark.skipif(find_delta_jars() is None, reason="Delta jars not installed (make install)")

SCHEMA = pa.schema([("id", pa.int64()), ("day", pa.string()), ("lang", pa.string()), ("text", pa.string())])
ENGINES = ("delta-rs", "delta-spark")


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    return build_bert_mean(tmp_path_factory.mktemp("bert") / "mean")


def _other(engine: str) -> str:
    return ENGINES[1 - ENGINES.index(engine)]


class Job:
    """A source partitioned by day and the job scoring it, on an engine chosen per night."""

    def __init__(self, root: Path, model_dir: str):
        self.root, self.model_dir = root, model_dir
        self.source, self.output = root / "source", root / "output"

    def cfg(self, engine: str, **overrides):
        return job_config(self.root, self.model_dir, lakehouse__engine=engine, **overrides)

    def append(self, ids, day: str) -> None:
        write_deltalake(str(self.source), pa.Table.from_pandas(source_rows(ids, day), schema=SCHEMA, preserve_index=False),
                        partition_by=["day"], mode="append")

    def night(self, spark, engine: str):
        return pipeline.run(self.cfg(engine), spark=spark)

    def check(self, spark, engine: str) -> None:
        """The output equals a full refresh made by `engine`, and both engines read it alike."""
        reference = self.root / "reference"
        pipeline.run(self.cfg(engine, name="reference", output__table=str(reference)), full_refresh=True, spark=spark)
        assert_same_rows(read_output(self.output), read_output(reference))
        shutil.rmtree(reference)
        reads = []
        for name in ENGINES:
            lake = open_lakehouse(spark, name)
            version = lake.latest_version(str(self.output))
            frame = lake.read(str(self.output), version).toPandas().sort_values("id").reset_index(drop=True)
            reads.append(frame)
        assert_same_rows(reads[0], reads[1])
        assert_same_rows(reads[0], read_output(self.output))

    def records(self, spark, engine: str) -> list[CommitRecord]:
        """The nightly commit records of the output, oldest first, as `engine` reads them."""
        lake = open_lakehouse(spark, engine)
        found = [CommitRecord.from_metadata(c.metadata) for c in lake.history(str(self.output))]
        return [r for r in reversed(found) if r is not None and r.is_nightly]


@pytest.mark.parametrize("first", ENGINES)
def test_nights_alternating_engines_continue_the_output_and_equal_a_full_refresh(spark, tmp_path, bert, first):
    job = Job(tmp_path, bert)
    for start, day in ((1, "d1"), (21, "d2"), (41, "d3")):
        job.append(range(start, start + 20), day)
    engines = [first, _other(first)] * 2

    nights = [job.night(spark, engines[0])]
    assert nights[0].status == "published" and nights[0].rows_scored == 60

    job.append([61, 62], "d2")  # night 1, on the other engine: appends only
    nights.append(job.night(spark, engines[1]))
    assert (nights[1].rows_scored, nights[1].status) == (2, "published")
    job.check(spark, engines[0])

    # night 2: the JVM connector rewrites a file of the source (copy-on-write UPDATE), delta-rs deletes
    spark.sql(f"UPDATE delta.`{job.source}` SET text = 'an edited review' WHERE id = 5")
    DeltaTable(str(job.source)).delete("id = 42")
    nights.append(job.night(spark, engines[2]))
    assert nights[2].status == "published" and nights[2].rows_scored == 1
    out = read_output(job.output)
    assert 42 not in out["id"].tolist() and len(out) == 61

    nights.append(job.night(spark, engines[3]))  # night 3: nothing changed, on the first engine's other
    assert nights[3].status == "nothing-to-do"
    job.append([63], "d1")
    nights.append(job.night(spark, engines[2]))
    assert nights[4].rows_scored == 1
    job.check(spark, engines[1])

    # The watermark each engine recorded is the one the other continued from.
    for reader in ENGINES:
        records = job.records(spark, reader)
        assert len(records) == 4, [r.plan for r in records]
        assert len({r.app_id for r in records}) == 1
        assert [r.source_version_start for r in records[1:]] == [r.source_version for r in records[:-1]]
        assert records[-1].source_version == DeltaTable(str(job.source)).version()
        lake = open_lakehouse(spark, reader)
        assert lake.transaction_version(str(job.output), records[-1].app_id) == records[-1].source_version


@pytest.mark.parametrize("writer", ENGINES)
def test_every_write_mode_of_one_engine_reads_identically_through_the_other(spark, tmp_path, writer):
    """append, replace_partitions, upsert (with deletes) and overwrite by `writer`; after each,
    the other engine and `deltalake` read the same rows, files, schema and history."""
    path = str(tmp_path / "t")
    lake, other = open_lakehouse(spark, writer), open_lakehouse(spark, _other(writer))
    schema = "id long, day string, v string, score double"
    rows = [(i, f"d{i % 3}", f"v{i}", i / 4) for i in range(30)]
    version = lake.write(spark.createDataFrame(rows, schema), path, mode="append", partition_by=["day"],
                         app_id="job", txn_version=1, metadata={"spark_scoring.job": "x"}).version
    steps = [
        dict(mode="replace_partitions", partitions=[{"day": "d1"}],
             df=[(100 + i, "d1", "new", 0.5) for i in range(3)]),
        dict(mode="upsert", key="id", df=[(0, "d0", "upserted", 1.0), (200, "d2", "new", 2.0)],
             deletes=[(5, "d2"), (8, "d2")]),
        dict(mode="append", df=[(300, "d9", None, None)]),
        dict(mode="overwrite", df=[(1, "d1", "only", 3.0)]),
    ]
    for n, step in enumerate(steps):
        df = spark.createDataFrame(step.pop("df"), schema)
        deletes = step.pop("deletes", None)
        kwargs = dict(step, deletes=spark.createDataFrame(deletes, "id long, day string")) if deletes else step
        if step["mode"] == "overwrite":
            kwargs["partition_by"] = ["day"]
        version = lake.write(df, path, expected_version=version, app_id="job", txn_version=2 + n, **kwargs).version
        mine = sorted(tuple(r) for r in lake.read(path, version).collect())
        assert sorted(tuple(r) for r in other.read(path, version).collect()) == mine, step["mode"]
        independent = DeltaTable(path).to_pyarrow_table().to_pylist()
        assert sorted(tuple(r.values()) for r in independent) == mine
        assert other.files(path, version) == lake.files(path, version)
        assert other.schema(path, version) == lake.schema(path, version)
        assert other.history(path) == lake.history(path)
        assert other.transaction_version(path, "job") == 2 + n
    assert [c.operation for c in other.history(path)][-1] in ("WRITE", "CREATE TABLE")
