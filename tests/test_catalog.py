"""Catalog names (`default.reviews`) on the session catalog, end to end on the JVM engine.

The shared test session keeps its warehouse under /tmp (conftest); the source is a managed
Delta table made with SQL, with deletion vectors on, and the output is created by the job
itself. Two nights through the CLI (in this process, so in the session that holds the
catalog): the second follows a DELETE (by deletion vector), an UPDATE and an INSERT.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from spark_scoring import cli
from spark_scoring.errors import LakehouseError, TableNotFoundError
from spark_scoring.jars import find_delta_jars
from spark_scoring.lakehouse.delta_rs import DeltaRsLakehouse
from spark_scoring.lakehouse.delta_spark import DeltaSparkLakehouse
from tests.pipeline_helpers import assert_same_rows, job_config
from tests.tiny_models import build_bert_mean

pytestmark = pytest.mark.skipif(find_delta_jars() is None, reason="Delta jars not installed (make install)")

SOURCE, OUTPUT = "default.reviews", "default.reviews_scored"


@pytest.fixture
def catalog_tables(spark):
    for name in (SOURCE, OUTPUT):
        spark.sql(f"DROP TABLE IF EXISTS {name}")
    spark.sql(
        f"CREATE TABLE {SOURCE} (id BIGINT, day STRING, lang STRING, text STRING) USING delta PARTITIONED BY (day) "
        "TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')"
    )
    values = ", ".join(f"({i}, 'd{i % 2}', 'en', 'review number {i} about topic {i % 7}')" for i in range(1, 21))
    spark.sql(f"INSERT INTO {SOURCE} VALUES {values}")
    yield
    for name in (SOURCE, OUTPUT):
        spark.sql(f"DROP TABLE IF EXISTS {name}")


def _output(spark):
    return spark.table(OUTPUT).toPandas().sort_values("id").reset_index(drop=True)


def test_catalog_names_work_end_to_end_for_two_nights_through_the_cli(spark, tmp_path, catalog_tables, capsys):
    model = build_bert_mean(tmp_path / "bert")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "name": "catalog_job",
        "source": {"table": SOURCE, "key": "id", "partition_by": ["day"], "passthrough": ["lang"]},
        "model": {"uri": model, "task": "embedding", "input": "text"},
        "output": {"table": OUTPUT},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "catalog"},
        "run": {"progress": False},
        "lakehouse": {"engine": "delta-spark"},
    }))

    assert cli.main(["run", str(config), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "published" and first["rows_scored"] == 20
    assert spark.catalog.tableExists(OUTPUT)
    lake = DeltaSparkLakehouse(spark)
    assert lake.location(OUTPUT).startswith("/") and lake.location(OUTPUT).endswith("reviews_scored")
    assert lake.exists(OUTPUT) and lake.latest_version(OUTPUT) == 0
    assert _output(spark)["id"].tolist() == list(range(1, 21))

    spark.sql(f"DELETE FROM {SOURCE} WHERE id = 3")  # a deletion vector on one file
    spark.sql(f"UPDATE {SOURCE} SET text = 'an edited review' WHERE id = 8")
    spark.sql(f"INSERT INTO {SOURCE} VALUES (21, 'd1', 'en', 'a new review')")
    assert cli.main(["run", str(config), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["status"] == "published" and second["rows_scored"] == 2
    out = _output(spark)
    assert out["id"].tolist() == [i for i in range(1, 22) if i != 3]
    night1 = {r["id"]: r["input_hash"] for r in lake.read(OUTPUT, 0, columns=["id", "input_hash"]).collect()}
    now = dict(zip(out["id"], out["input_hash"], strict=True))
    assert [i for i in now if i in night1 and now[i] != night1[i]] == [8]  # only the edited row changed

    # The same as a full refresh of the source into a path table.
    cfg = job_config(tmp_path, model, name="reference", source__table=SOURCE, output__table=str(tmp_path / "ref"),
                     lakehouse__engine="delta-spark")
    from spark_scoring import pipeline

    pipeline.run(cfg, full_refresh=True, spark=spark)
    reference = spark.read.format("delta").load(str(tmp_path / "ref")).toPandas()
    assert_same_rows(out, reference)
    shutil.rmtree(tmp_path / "ref")

    assert cli.main(["run", str(config), "--json"]) == 0  # nothing changed since
    assert json.loads(capsys.readouterr().out)["status"] == "nothing-to-do"


def test_catalog_names_resolve_once_and_missing_names_are_clear(spark, catalog_tables):
    lake = DeltaSparkLakehouse(spark)
    location = lake.location(SOURCE)
    assert lake._locations == {SOURCE: location}
    spark.sql(f"ALTER TABLE {SOURCE} SET TBLPROPERTIES ('x' = 'y')")
    assert lake.location(SOURCE) == location and lake.latest_version(SOURCE) == 2
    assert not lake.exists("default.no_such_table")
    with pytest.raises(TableNotFoundError, match=r"no table 'default.no_such_table' in the catalog"):
        lake.latest_version("default.no_such_table")
    spark.sql("CREATE TABLE default.plain_parquet (id BIGINT) USING parquet")
    try:
        assert not lake.exists("default.plain_parquet")
        with pytest.raises(LakehouseError, match=r"is not a Delta table \(format 'parquet'\)"):
            lake.read("default.plain_parquet", 0)
    finally:
        spark.sql("DROP TABLE default.plain_parquet")
    with pytest.raises(LakehouseError, match=r"looks like a catalog table name; the delta-rs engine reads and writes"):
        DeltaRsLakehouse(spark).read(SOURCE, 0)
