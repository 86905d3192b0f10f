"""spark_scoring.explore against real Delta tables (delta-rs) and a real MLflow store.

The tables follow the output contract (key `id`, partition `event_date`, task outputs,
`error` and the lineage columns) and carry the `spark_scoring.*` commit metadata.

Embedding table, v0 -> v1 -> v2:
  v0 (run A): 3 partitions x 10 rows, ids 0-29.
  v1 (run B): partition 2024-05-02 re-scored (id 15 gone, 2 inputs changed), new partition
      2024-05-04 with ids 30-34 of which 3 failed. Diff: +5 added, 1 removed, 9 re-scored,
      20 unchanged.
  v2 (run C, not in MLflow): the whole table re-scored with embeddings 3x longer (drift).
Classification table, v0 -> v1: partition 2024-05-02 re-scored with more NEGATIVE labels.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

deltalake = pytest.importorskip("deltalake")

from spark_scoring import explore  # noqa: E402
from spark_scoring.errors import UsageError  # noqa: E402

DATES = [date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 3)]
T0 = datetime(2024, 5, 5, 2, 0, tzinfo=timezone.utc)
MODEL_URI = "models:/reviews-embedder/3"

LINEAGE_FIELDS = [
    pa.field("error", pa.string()),
    pa.field("model_uri", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("scored_at", pa.timestamp("us", tz="UTC")),
    pa.field("source_version", pa.int64()),
    pa.field("input_hash", pa.string()),
]
EMBEDDING_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("event_date", pa.date32()),
        pa.field("text", pa.string()),
        pa.field("embedding", pa.list_(pa.float32())),
        *LINEAGE_FIELDS,
    ]
)
CLASSIFICATION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("event_date", pa.date32()),
        pa.field("text", pa.string()),
        pa.field("label", pa.string()),
        pa.field("score", pa.float64()),
        *LINEAGE_FIELDS,
    ]
)


@dataclass(frozen=True)
class ScoredTables:
    embedding: str
    classification: str
    tracking_uri: str
    run_a: str
    run_b: str
    run_c: str  # written to the table, never logged to MLflow
    run_k0: str
    run_k1: str


def _rows(ids, day, run_id, scored_at, *, source_version, rng, scale=1.0, errors=None, changed=()):
    """Embedding rows: `errors` maps id -> message for the rows that failed."""
    errors = errors or {}
    rows = []
    for i in ids:
        failed = i in errors
        vec = None if failed else (rng.normal(0.0, 1.0, 4) * scale).astype(np.float32).tolist()
        rows.append(
            {
                "id": i,
                "event_date": day,
                "text": f"review {i}",
                "embedding": vec,
                "error": errors.get(i),
                "model_uri": MODEL_URI,
                "model_version": "3",
                "run_id": run_id,
                "scored_at": scored_at,
                "source_version": source_version,
                "input_hash": f"h{i}" + ("-changed" if i in changed else ""),
            }
        )
    return rows


def _meta(run_id, *, mode, rows_scored, rows_carried, rows_failed, partitions, model_version="3"):
    meta = {
        "run_id": run_id,
        "job": "reviews",
        "mode": mode,
        "source_table": "lake/reviews",
        "source_version": "7",
        "source_version_start": "",
        "model_uri": MODEL_URI,
        "model_version": model_version,
        "model_id": "m-123",
        "rows_scored": str(rows_scored),
        "rows_carried": str(rows_carried),
        "rows_failed": str(rows_failed),
        "partitions": partitions,
    }
    return deltalake.CommitProperties(
        custom_metadata={f"spark_scoring.{k}": v for k, v in meta.items()}
    )


def _write(path, rows, schema, *, mode, meta, predicate=None):
    table = pa.Table.from_pylist(rows, schema=schema)
    deltalake.write_deltalake(
        path,
        table,
        mode=mode,
        partition_by=["event_date"],
        predicate=predicate,
        commit_properties=meta,
    )


def _mlflow_run(client, experiment_id, **metrics) -> str:
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "model_version", "3")
    for name, value in metrics.items():
        client.log_metric(run.info.run_id, name, value)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def build_scored_tables(root: Path) -> ScoredTables:
    """Write the two tables and the MLflow store described in the module docstring."""
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.create_experiment("explore-tests", artifact_location=(root / "artifacts").as_uri())
    run_a = _mlflow_run(
        client,
        exp,
        rows_scored=30,
        rows_carried=0,
        rows_failed=0,
        seconds_total=3.0,
        rows_per_second=10.0,
    )
    run_b = _mlflow_run(
        client,
        exp,
        rows_scored=12,
        rows_carried=20,
        rows_failed=3,
        seconds_total=2.0,
        rows_per_second=6.0,
    )
    run_k0 = _mlflow_run(client, exp, rows_scored=30, seconds_total=1.5, rows_per_second=20.0)
    run_k1 = _mlflow_run(client, exp, rows_scored=10, seconds_total=1.0, rows_per_second=10.0)
    run_c = uuid.uuid4().hex

    emb = str(root / "reviews_scored")
    rng = np.random.default_rng(7)
    v0 = []
    for d, day in enumerate(DATES):
        v0 += _rows(range(d * 10, d * 10 + 10), day, run_a, T0, source_version=7, rng=rng)
    _write(
        emb,
        v0,
        EMBEDDING_SCHEMA,
        mode="error",
        meta=_meta(
            run_a, mode="full", rows_scored=30, rows_carried=0, rows_failed=0, partitions="ALL"
        ),
    )

    t1 = T0 + timedelta(days=1)
    errors = {
        31: "CUDA out of memory: tried to allocate 2.0 GiB",
        33: "CUDA out of memory: tried to allocate 2.0 GiB",
        34: "text too long: 9000 tokens > 512",
    }
    v1 = _rows(
        [i for i in range(10, 20) if i != 15],
        DATES[1],
        run_b,
        t1,
        source_version=8,
        rng=rng,
        changed={11, 12},
    )
    v1 += _rows(
        range(30, 35), date(2024, 5, 4), run_b, t1, source_version=8, rng=rng, errors=errors
    )
    _write(
        emb,
        v1,
        EMBEDDING_SCHEMA,
        mode="overwrite",
        predicate="event_date = '2024-05-02' OR event_date = '2024-05-04'",
        meta=_meta(
            run_b,
            mode="incremental",
            rows_scored=14,
            rows_carried=20,
            rows_failed=3,
            partitions='[{"event_date": "2024-05-02"}, {"event_date": "2024-05-04"}]',
        ),
    )

    # v2: everything re-scored by a model whose vectors are 3x longer: a large shift.
    t2 = T0 + timedelta(days=2)
    current = deltalake.DeltaTable(emb).to_pyarrow_table().to_pylist()
    v2 = []
    for row in current:
        v2 += _rows(
            [row["id"]],
            row["event_date"],
            run_c,
            t2,
            source_version=9,
            rng=rng,
            scale=3.0,
            errors={31: errors[31]} if row["id"] == 31 else None,
        )
    _write(
        emb,
        v2,
        EMBEDDING_SCHEMA,
        mode="overwrite",
        meta=_meta(
            run_c,
            mode="full",
            rows_scored=33,
            rows_carried=0,
            rows_failed=1,
            partitions="ALL",
            model_version="4",
        ),
    )

    cls = str(root / "reviews_labels")
    k0 = []
    for d, day in enumerate(DATES):
        for i in range(d * 10, d * 10 + 10):
            label = "POSITIVE" if i % 2 == 0 else "NEGATIVE"  # 15 / 15
            k0.append(_cls_row(i, day, label, 0.6 + (i % 10) / 25, run_k0, T0))
    _write(
        cls,
        k0,
        CLASSIFICATION_SCHEMA,
        mode="error",
        meta=_meta(
            run_k0, mode="full", rows_scored=30, rows_carried=0, rows_failed=0, partitions="ALL"
        ),
    )
    # v1: 2024-05-02 re-scored: 8 NEGATIVE + 2 POSITIVE (was 5/5), so 12 POSITIVE / 18 NEGATIVE.
    k1 = [
        _cls_row(i, DATES[1], "NEGATIVE" if i < 18 else "POSITIVE", 0.9, run_k1, t1)
        for i in range(10, 20)
    ]
    _write(
        cls,
        k1,
        CLASSIFICATION_SCHEMA,
        mode="overwrite",
        predicate="event_date = '2024-05-02'",
        meta=_meta(
            run_k1,
            mode="incremental",
            rows_scored=10,
            rows_carried=20,
            rows_failed=0,
            partitions='[{"event_date": "2024-05-02"}]',
        ),
    )
    return ScoredTables(emb, cls, tracking_uri, run_a, run_b, run_c, run_k0, run_k1)


def _cls_row(i, day, label, score, run_id, scored_at):
    return {
        "id": i,
        "event_date": day,
        "text": f"review {i}",
        "label": label,
        "score": score,
        "error": None,
        "model_uri": MODEL_URI,
        "model_version": "3",
        "run_id": run_id,
        "scored_at": scored_at,
        "source_version": 7,
        "input_hash": f"h{i}",
    }


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> ScoredTables:
    return build_scored_tables(tmp_path_factory.mktemp("explore"))


# --------------------------------------------------------------------------- pure statistics


def test_psi_is_zero_for_identical_samples_and_large_for_shifted_ones():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 2000)
    assert explore.psi(base, base) == 0.0
    same_distribution = explore.psi(base, rng.normal(0, 1, 2000))
    assert 0 < same_distribution < 0.05
    shifted = explore.psi(base, rng.normal(2, 1, 2000))
    assert shifted > 1.0
    assert math.isnan(explore.psi([], [1.0]))


def test_psi_matches_a_hand_computed_value():
    old = np.arange(100, dtype=float)  # 10 quantile bins of 10 values each
    new = np.concatenate([np.arange(50), np.full(50, 95.0)])  # 5 bins x 10%, last bin 50%
    # Bins 0-4 keep 0.1, bins 5-8 drop to eps, bin 9 rises to 0.5 + 0.0 (95 falls in bin 9).
    eps = 1e-4
    expected = 4 * (eps - 0.1) * math.log(eps / 0.1) + (0.5 - 0.1) * math.log(0.5 / 0.1)
    assert explore.psi(old, new) == pytest.approx(expected, rel=1e-9)


def test_psi_of_a_constant_old_distribution_is_finite():
    assert explore.psi(np.ones(50), np.ones(50)) == 0.0
    assert 0 < explore.psi(np.ones(50), np.full(50, 2.0)) < 20


def test_ks_statistic_matches_scipy_and_the_definition():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 300).round(1)  # ties on purpose
    b = rng.normal(0.3, 1.2, 170).round(1)
    stat = explore.ks_statistic(a, b)
    grid = np.union1d(a, b)
    by_hand = max(abs((a <= x).mean() - (b <= x).mean()) for x in grid)
    assert stat == pytest.approx(by_hand, abs=1e-12)
    assert explore.ks_statistic([1, 2, 3], [4, 5, 6]) == 1.0
    assert explore.ks_statistic(a, a) == 0.0
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stat == pytest.approx(scipy_stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_psi_rejects_too_few_bins():
    with pytest.raises(UsageError, match="bins >= 2"):
        explore.psi([1.0], [1.0], bins=1)


# --------------------------------------------------------------------------- tables


def test_load_scored_latest_given_and_negative_versions(spark, tables):
    latest = explore.load_scored(tables.embedding, spark=spark)
    assert latest.count() == 34
    assert {r.run_id for r in latest.select("run_id").distinct().collect()} == {tables.run_c}
    v0 = explore.load_scored(tables.embedding, 0, spark=spark, as_pandas=True)
    assert isinstance(v0, pd.DataFrame)
    assert sorted(v0["id"]) == list(range(30))
    assert set(v0["run_id"]) == {tables.run_a}
    before_latest = explore.load_scored(tables.embedding, -2, spark=spark, as_pandas=True)
    assert set(before_latest["run_id"]) == {tables.run_a, tables.run_b}
    with pytest.raises(UsageError, match="versions run from 0 to 2"):
        explore.load_scored(tables.embedding, 5, spark=spark)


def test_compare_versions_counts_rows_by_key(spark, tables):
    cmp = explore.compare_versions(tables.embedding, 0, 1, spark=spark)
    assert (cmp.old_version, cmp.new_version) == (0, 1)
    assert cmp.key == ("id",) and cmp.key_source == "first column"
    assert (cmp.rows_old, cmp.rows_new) == (30, 34)
    assert (cmp.rows_added, cmp.rows_removed, cmp.rows_rescored, cmp.rows_unchanged) == (
        5,
        1,
        9,
        20,
    )
    assert cmp.rows_rescored_input_changed == 2
    assert (cmp.failed_old, cmp.failed_new) == (0, 3)
    assert cmp.measure == "embedding_norm"
    assert cmp.label_mix is None

    parts = cmp.by_partition.set_index("partition")
    assert list(parts.index) == [f"event_date=2024-05-0{d}" for d in (1, 2, 3, 4)]
    assert parts.loc[
        "event_date=2024-05-01", ["rows_old", "rows_new", "unchanged", "rescored"]
    ].tolist() == [10, 10, 10, 0]
    assert parts.loc[
        "event_date=2024-05-02", ["rows_old", "rows_new", "rescored", "removed"]
    ].tolist() == [10, 9, 9, 1]
    assert parts.loc["event_date=2024-05-04", ["rows_old", "rows_new", "added"]].tolist() == [
        0,
        5,
        5,
    ]
    # Untouched partitions hold the very same vectors: no shift at all.
    assert parts.loc["event_date=2024-05-01", "psi"] == 0.0
    assert parts.loc["event_date=2024-05-03", "ks"] == 0.0
    # A partition that only exists in the new version has nothing to compare against.
    assert math.isnan(parts.loc["event_date=2024-05-04", "psi"])

    # The overall statistics are those of the embedding norms of the rows that scored.
    old = explore.load_scored(tables.embedding, 0, spark=spark, as_pandas=True)
    new = explore.load_scored(tables.embedding, 1, spark=spark, as_pandas=True)
    old_norms = np.array([np.linalg.norm(v) for v in old["embedding"]])
    new_norms = np.array([np.linalg.norm(v) for v in new.loc[new["error"].isna(), "embedding"]])
    assert cmp.psi == pytest.approx(explore.psi(old_norms, new_norms), rel=1e-6)
    assert cmp.ks == pytest.approx(explore.ks_statistic(old_norms, new_norms), abs=1e-9)
    assert parts.loc["event_date=2024-05-02", "mean_new"] == pytest.approx(
        new_norms[
            (new.loc[new["error"].isna(), "event_date"].astype(str) == "2024-05-02").to_numpy()
        ].mean(),
        rel=1e-6,
    )
    scipy_stats = pytest.importorskip("scipy.stats")
    assert cmp.ks_pvalue == pytest.approx(
        scipy_stats.ks_2samp(old_norms, new_norms).pvalue, rel=1e-6
    )

    summary = cmp.summary()
    assert summary["rows_added"] == 5 and summary["key"] == "id"


def test_compare_versions_flags_a_shifted_distribution(spark, tables):
    stable = explore.compare_versions(tables.embedding, 0, 1, spark=spark)
    shifted = explore.compare_versions(tables.embedding, -2, -1, spark=spark)
    assert shifted.rows_rescored == 34 and shifted.rows_unchanged == 0 and shifted.rows_added == 0
    # 30 vs 31 rows make a noisy PSI (about 0.3 here); a 3x longer vector is far beyond it.
    assert shifted.psi > 1.0 and shifted.psi > 3 * stable.psi
    assert shifted.ks > 0.6
    assert (shifted.by_partition["psi"].dropna() > 0.5).all()


def test_compare_versions_samples_values_but_counts_exactly(spark, tables):
    full = explore.compare_versions(tables.embedding, 0, 1, spark=spark)
    assert (full.values_old, full.values_new) == (30, 31)
    sampled = explore.compare_versions(tables.embedding, 0, 1, max_values=12, spark=spark)
    assert 0 < sampled.values_old < 30 and 0 < sampled.values_new < 31
    assert sampled.by_partition["rows_new"].tolist() == full.by_partition["rows_new"].tolist()
    assert (
        sampled.rows_added,
        sampled.rows_removed,
        sampled.rows_rescored,
        sampled.failed_new,
    ) == (5, 1, 9, 3)
    assert sampled.psi >= 0 and 0 <= sampled.ks <= 1


def test_compare_versions_label_mix(spark, tables):
    cmp = explore.compare_versions(tables.classification, 0, 1, key="id", spark=spark)
    assert cmp.measure == "score" and cmp.key_source == "argument"
    assert (cmp.rows_rescored, cmp.rows_unchanged, cmp.rows_added, cmp.rows_removed) == (
        10,
        20,
        0,
        0,
    )
    mix = cmp.label_mix.set_index("label")
    assert mix.loc["POSITIVE", ["count_old", "count_new"]].tolist() == [15, 12]
    assert mix.loc["NEGATIVE", ["count_old", "count_new"]].tolist() == [15, 18]
    assert mix.loc["NEGATIVE", "share_new"] == pytest.approx(0.6)
    assert mix.loc["POSITIVE", "share_change"] == pytest.approx(-0.1)


def test_compare_versions_errors(spark, tables):
    with pytest.raises(UsageError, match="key column"):
        explore.compare_versions(tables.classification, 0, 1, key="review_id", spark=spark)
    with pytest.raises(UsageError, match="not a numeric column"):
        explore.compare_versions(tables.classification, 0, 1, measure="text", spark=spark)


def test_failures_groups_messages_with_sample_keys(spark, tables):
    fails = explore.failures(tables.embedding, 1, sample=1, spark=spark)
    assert fails["error"].tolist() == [
        "CUDA out of memory: tried to allocate 2.0 GiB",
        "text too long: 9000 tokens > 512",
    ]
    assert fails["count"].tolist() == [2, 1]
    assert fails["share"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert fails["sample_keys"].tolist() == [[31], [34]]
    assert fails["partitions"].tolist() == [1, 1]
    all_keys = explore.failures(tables.embedding, 1, spark=spark)
    assert all_keys["sample_keys"].tolist() == [[31, 33], [34]]
    latest = explore.failures(tables.embedding, spark=spark)
    assert latest["count"].tolist() == [1] and latest["sample_keys"].tolist() == [[31]]
    none = explore.failures(tables.embedding, 0, spark=spark)
    assert none.empty and list(none.columns) == [
        "error",
        "count",
        "share",
        "partitions",
        "sample_keys",
    ]


def test_list_runs_joins_history_with_mlflow(spark, tables):
    runs = explore.list_runs(tables.embedding, tracking_uri=tables.tracking_uri, spark=spark)
    assert runs["version"].tolist() == [0, 1, 2]
    assert runs["run_id"].tolist() == [tables.run_a, tables.run_b, tables.run_c]
    assert runs["operation"].notna().all()
    assert runs["mode"].tolist() == ["full", "incremental", "full"]
    # Counts come from the commit metadata...
    assert runs["rows_scored"].tolist() == [30, 14, 33]
    assert str(runs["rows_scored"].dtype) == "Int64"
    assert runs["source_version_start"].isna().all()  # "" in the commit: a full run
    assert list(runs.columns[:6]) == ["version", "timestamp", "operation", "run_id", "job", "mode"]
    assert runs["rows_failed"].tolist() == [0, 3, 1]
    assert runs["model_version"].tolist() == ["3", "3", "4"]
    # ...timings and status from MLflow; the run MLflow never saw keeps NaN.
    assert runs["mlflow_run_found"].tolist() == [True, True, False]
    assert runs["status"].tolist()[:2] == ["FINISHED", "FINISHED"] and pd.isna(runs["status"][2])
    assert runs["seconds_total"].tolist()[:2] == [3.0, 2.0] and math.isnan(runs["seconds_total"][2])
    assert runs["rows_per_second"].tolist()[:2] == [10.0, 6.0] and math.isnan(
        runs["rows_per_second"][2]
    )
    assert runs["timestamp"].is_monotonic_increasing
    assert runs.attrs["table"] == tables.embedding


def test_list_runs_of_the_classification_table(spark, tables):
    runs = explore.list_runs(tables.classification, tracking_uri=tables.tracking_uri, spark=spark)
    assert runs["run_id"].tolist() == [tables.run_k0, tables.run_k1]
    assert runs["mlflow_run_found"].all()
    assert runs["rows_per_second"].tolist() == [20.0, 10.0]
    assert runs["rows_scored"].tolist() == [30, 10]
    assert runs["rows_carried"].tolist() == [0, 20]


def test_drift_history_psi_between_consecutive_versions(spark, tables):
    hist = explore.drift_history(tables.embedding, spark=spark)
    assert hist["version"].tolist() == [0, 1, 2]
    assert hist["previous_version"].tolist()[1:] == [0, 1]
    assert math.isnan(hist["psi"][0])
    assert hist["rows"].tolist() == [30, 31, 33]
    cmp = explore.compare_versions(tables.embedding, 1, 2, spark=spark)
    assert hist["psi"][2] == pytest.approx(cmp.psi, rel=1e-9)
    assert hist["psi"][2] > 1.0 > hist["psi"][1]


# --------------------------------------------------------------------------- plots


def test_plot_score_histogram_returns_a_labelled_figure(spark, tables):
    from matplotlib.figure import Figure

    fig = explore.plot_score_histogram(tables.embedding, spark=spark)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == "embedding L2 norm distribution of reviews_scored: v0, v1, v2"
    assert ax.get_xlabel() == "embedding L2 norm"
    assert ax.get_ylabel() == "share of scored rows"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        f"v0 (run {tables.run_a[:8]}), n=30",
        f"v1 (run {tables.run_b[:8]}), n=31",
        f"v2 (run {tables.run_c[:8]}), n=33",
    ]
    # Each version's bars are shares of its rows: they sum to 1.
    filled = [p for p in ax.patches if p.get_fill()]
    assert len(filled) == 3
    assert fig.get_facecolor()[:3] == (1.0, 1.0, 1.0)

    cls = explore.plot_score_histogram(tables.classification, versions=[0], spark=spark)
    assert cls.axes[0].get_title() == "score distribution of reviews_labels: v0"


def test_plot_drift_and_throughput(spark, tables):
    fig = explore.plot_drift(tables.embedding, spark=spark)
    ax = fig.axes[0]
    assert (
        ax.get_title()
        == "embedding L2 norm drift of reviews_scored between consecutive versions (v0-v2)"
    )
    assert ax.get_ylabel() == "PSI vs previous version"
    line = ax.get_lines()[0]
    hist = explore.drift_history(tables.embedding, spark=spark)
    assert list(line.get_xdata()) == [1, 2]
    assert list(line.get_ydata()) == pytest.approx(hist["psi"][1:].tolist())
    again = explore.plot_drift(tables.embedding, history=hist).axes[0].get_lines()[0]
    assert list(again.get_ydata()) == list(line.get_ydata())

    runs = explore.list_runs(tables.embedding, tracking_uri=tables.tracking_uri, spark=spark)
    tp = explore.plot_throughput(runs)
    ax = tp.axes[0]
    assert ax.get_title() == "Scoring throughput per run of reviews_scored"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("table version (run)", "rows / second")
    assert [round(b.get_height(), 6) for b in ax.patches] == [10.0, 6.0]  # v2 has no MLflow run
    with pytest.raises(UsageError, match="list_runs"):
        explore.plot_throughput(pd.DataFrame({"x": [1]}))
