"""The exceptions spark-scoring raises, and the process exit code each one maps to.

Every message names what was wrong, what is allowed, and how to fix it. The CLI maps
`UsageError` (and its subclass `ConfigError`) to exit code 2 and every other
`ScoringError` to exit code 1 ("run failed, nothing published").

Errors raised on executors (scoring tasks, data source tasks, the data source's commit)
reach the driver only as text inside a Spark exception. They cross that boundary one way:
the executor raises `for_executor(exc)` (the same class, its message one line with a
`[spark_scoring:<ErrorClass>]` tag) and the driver calls `from_spark(spark_exc)`, which
finds the tag and rebuilds that class with the original message.

Example:
    >>> tagged = for_executor(ModelError("could not load model m1"))
    >>> str(tagged)
    '[spark_scoring:ModelError] could not load model m1'
    >>> rebuilt = from_spark(RuntimeError(f"Traceback ... spark_scoring.errors.ModelError: {tagged}"))
    >>> type(rebuilt).__name__, str(rebuilt)
    ('ModelError', 'could not load model m1')
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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


# --------------------------------------------------------------------------------------
# Errors crossing from executors to the driver
# --------------------------------------------------------------------------------------

_TAG_RE = re.compile(r"\[spark_scoring:(\w+)\] ([^\n]*)")


def _plain_class(cls: type) -> type[ScoringError]:
    """The nearest class of `cls` (itself or a base) defined here that takes just a message.

    Only classes of this module can be rebuilt on the driver by name, and only those whose
    constructor is Exception's (ConfigError takes a list of problems: UsageError stands in).
    """
    this_module = sys.modules[__name__]
    for candidate in cls.__mro__:
        if (
            isinstance(candidate, type)
            and issubclass(candidate, ScoringError)
            and getattr(this_module, candidate.__name__, None) is candidate
            and candidate.__init__ is ScoringError.__init__
        ):
            return candidate
    return ScoringError


def for_executor(exc: ScoringError) -> ScoringError:
    """The error to raise on an executor instead of `exc`: its class, a tagged one-line message.

    Spark hands an executor's exception to the driver only as text (inside a
    PythonException or Py4JJavaError, often several times over); the tag lets `from_spark`
    raise the same class again there. Raise it `from exc`. A tagged `exc` keeps its tag.
    """
    cls = _plain_class(type(exc))
    message = " ".join(str(exc).split())
    if _TAG_RE.match(message):
        return cls(message)
    return cls(f"[spark_scoring:{cls.__name__}] {message}")


@contextmanager
def raised_for_driver() -> Iterator[None]:
    """Raise every ScoringError of the block as `for_executor(exc)` (for executor code).

    Example:
        >>> def read(self, partition):  # a data source task
        ...     with raised_for_driver():
        ...         yield from _read_files(partition.value)
    """
    try:
        yield
    except ScoringError as exc:
        raise for_executor(exc) from exc


def from_spark(exc: BaseException) -> ScoringError | None:
    """The spark-scoring error that a Spark exception carries, rebuilt for the driver, or None.

    Looks for the tag `for_executor` puts in the message of an error raised on an executor,
    in the text of `exc` and of its causes (PythonException, Py4JJavaError and
    AnalysisException texts hold the executor's traceback), and returns that class (a class
    this module no longer knows: ScoringError) with the original message. An untagged
    ScoringError is returned as it is.
    """
    if isinstance(exc, ScoringError) and not _TAG_RE.match(str(exc)):
        return exc
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        match = _TAG_RE.search(str(current))
        if match:
            name, message = match.groups()
            found = getattr(sys.modules[__name__], name, None)
            cls = _plain_class(found) if isinstance(found, type) and issubclass(found, ScoringError) else ScoringError
            return cls(message.strip())
        current = current.__cause__ or current.__context__
    return None
