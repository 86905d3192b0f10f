# Databricks notebook source
# MAGIC %md
# MAGIC # Explore a scored table
# MAGIC
# MAGIC A walk through one spark-scoring output table with `spark_scoring.explore`: the newest rows,
# MAGIC the runs that wrote the table (its Delta history joined with their MLflow runs), what the
# MAGIC last run changed, how the score (or embedding norm) distribution moved between versions,
# MAGIC and which rows failed and why. The helpers read through the lakehouse interface, so this
# MAGIC runs the same with the JVM Delta connector (Databricks) and with delta-rs (pip installs).
# MAGIC
# MAGIC Figures are returned by the helpers (nothing is drawn behind your back); a cell shows the
# MAGIC one it ends with, and `fig.savefig("x.png")` saves it.
# MAGIC
# MAGIC On Databricks: install the spark-scoring wheel on the cluster (or `%pip install` it), then set the widgets above.

# COMMAND ----------

# Parameters: notebook widgets on Databricks, environment variables (or the demo defaults) elsewhere.
import os

try:
    dbutils  # noqa: B018 (Databricks defines it in every notebook)
except NameError:
    dbutils = None

if dbutils is not None:
    dbutils.widgets.text("table", os.environ.get("SPARK_SCORING_TABLE", ".demo/lake/reviews_scored"), "Scored table")
    dbutils.widgets.text("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI", "databricks"), "MLflow tracking URI")
    dbutils.widgets.text("key", os.environ.get("SPARK_SCORING_KEY", ""), "Key column (blank: automatic)")
    TABLE = dbutils.widgets.get("table")
    TRACKING_URI = dbutils.widgets.get("tracking_uri")
    KEY = dbutils.widgets.get("key") or None
else:
    TABLE = os.environ.get("SPARK_SCORING_TABLE", ".demo/lake/reviews_scored")
    TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///.demo/mlflow.db")
    KEY = os.environ.get("SPARK_SCORING_KEY") or None

# COMMAND ----------

from pathlib import Path

from spark_scoring import explore
from spark_scoring.session import describe, get_spark


def from_repo_root(value: str) -> str:
    """Relative demo paths are relative to the repository root, and Jupyter starts in notebooks/."""
    prefix = "sqlite:///" if value.startswith("sqlite:///") else ""
    path = Path(value[len(prefix) :])
    if "://" in value[len(prefix) :] or path.is_absolute() or path.exists():
        return value
    for parent in Path.cwd().parents[:2]:
        if (parent / path).exists():
            return prefix + str(parent / path)
    return value


TABLE = from_repo_root(TABLE)
TRACKING_URI = from_repo_root(TRACKING_URI)
spark = get_spark()
print(f"table: {TABLE}\nMLflow: {TRACKING_URI}\n{describe(spark)}")  # classic or Spark Connect (serverless)

try:
    display  # noqa: B018 (Databricks and IPython provide it)
except NameError:

    def display(obj):
        """Plain Python (spark-submit, tests): print tables; figures stay in their variables."""
        print(obj)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The newest version
# MAGIC A few rows, with the task outputs and the lineage columns (`run_id`, `model_uri`, `scored_at`, `source_version`, `input_hash`).

# COMMAND ----------

latest = explore.load_scored(TABLE, spark=spark)
print(f"{latest.count():,} rows, columns: {', '.join(latest.columns)}")
display(latest.limit(5).toPandas())

# COMMAND ----------

# MAGIC %md
# MAGIC ## Runs that wrote the table
# MAGIC One row per table version: the commit's `spark_scoring.*` metadata, joined with the MLflow run it names (NaN where MLflow has no such run).

# COMMAND ----------

runs = explore.list_runs(TABLE, tracking_uri=TRACKING_URI, spark=spark)
overview = ["version", "timestamp", "operation", "mode", "run_id", "model_version", "rows_scored",
            "rows_carried", "rows_failed", "seconds_total", "rows_per_second", "status"]
display(runs.reindex(columns=overview))

# COMMAND ----------

fig_throughput = explore.plot_throughput(runs)
display(fig_throughput)

# COMMAND ----------

# MAGIC %md
# MAGIC ## What the last commit changed
# MAGIC Rows compared by key: added, removed, re-scored (another run or time wrote them) and
# MAGIC unchanged; the label mix for classifiers; PSI and KS of the score (or embedding norm),
# MAGIC overall and per partition. PSI: below 0.1 stable, 0.1-0.25 moderate, above 0.25 a major shift.

# COMMAND ----------

versions = runs["version"].tolist()
comparison = None
if len(versions) < 2:
    print("only one version so far: nothing to compare")
else:
    comparison = explore.compare_versions(TABLE, versions[-2], versions[-1], key=KEY, spark=spark)
    display(comparison.summary().to_frame())
    display(comparison.by_partition)
    if comparison.label_mix is not None:
        display(comparison.label_mix)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Failed rows
# MAGIC Error messages by count, with a few keys to look up (newest version).

# COMMAND ----------

failed = explore.failures(TABLE, key=KEY, spark=spark)
display(failed)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Distributions
# MAGIC The score (or embedding norm) of the last three versions, on shared bins, as shares of each version's scored rows.

# COMMAND ----------

fig_histogram = explore.plot_score_histogram(TABLE, spark=spark)
display(fig_histogram)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Drift over nights
# MAGIC PSI of each version against the one before it (whole table). Dashed lines: the 0.1 and 0.25 thresholds.

# COMMAND ----------

drift = explore.drift_history(TABLE, spark=spark)
display(drift)
fig_drift = explore.plot_drift(TABLE, history=drift)
display(fig_drift)
