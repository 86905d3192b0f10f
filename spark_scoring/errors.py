"""The exceptions spark-scoring raises, and the process exit code each one maps to.

Every message names what was wrong, what is allowed, and how to fix it. The CLI maps
`UsageError` (and its subclass `ConfigError`) to exit code 2 and every other
`ScoringError` to exit code 1 ("run failed, nothing published").
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


class ScoringError(Exception):
    """Base class of every error spark-scoring raises on purpose."""

    exit_code: int = EXIT_RUN_FAILED


class UsageError(ScoringError):
    """The command line or its arguments are wrong (exit code 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A job config has one or more problems; all of them are listed at once.

    Attributes:
        problems: one line per problem, each starting with the key path.
    """

    def __init__(self, problems: Sequence[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        header = f"{len(self.problems)} problem(s) in the job config{where}:"
        super().__init__("\n".join([header, *(f"  - {p}" for p in self.problems)]))


class LakehouseError(ScoringError):
    """A Delta table could not be read or written."""


class TableNotFoundError(LakehouseError):
    """The table reference points at nothing."""


class UnsupportedTableFeatureError(LakehouseError):
    """The table uses a Delta feature the active backend cannot read correctly."""


class ConcurrentRunError(LakehouseError):
    """Another run committed to the output table while this one was running."""


class SchemaDriftError(ScoringError):
    """The source table no longer has the columns or types the job needs."""


class HistoryGapError(ScoringError):
    """The source versions needed for an incremental run are gone (vacuum / log cleanup)."""


class ModelError(ScoringError):
    """A model could not be resolved, loaded or run."""


class ModelOutputError(ModelError):
    """A model returned output of the wrong length or type."""


class TrackingError(ScoringError):
    """The MLflow tracking server or model registry could not be used."""


class ErrorBudgetExceeded(ScoringError):
    """Too many rows failed to score; nothing was published."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Spark/Py4J errors carry whole JVM traces)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
