"""Per-Python-worker model cache: each worker loads a model once and keeps it.

A loaded model (hundreds of MB, seconds to load) is kept in a module-level dict keyed by
an id made on the driver (`ModelSpec.identity` plus the device), so every later Arrow
batch, task and stage that the same Python worker runs reuses it.

What it needs:

* `spark.python.worker.reuse=true` (Spark's default; `session.get_spark` sets it where
  nobody did). Without reuse Spark starts a fresh Python process per task and the cache
  dies with it: every task would load the model again.
* This must be its own module, imported by the UDF at run time. Spark pickles functions
  (and the globals they reference) defined in the module that calls `mapInPandas` *by
  value* when that module is `__main__` or not importable on the executor; a cache dict
  that travelled with the closure would be a fresh empty copy in every task. A module
  imported by name on the executor keeps one dict per worker process. (Same design as
  Spark's `pyspark/ml/model_cache.py` and MLflow's `pyfunc/spark_model_cache.py`.)

Only a few models are kept (least recently used evicted), so a long-lived worker that
scores several jobs does not keep every model it ever saw.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

_MAX_MODELS = 2

_lock = threading.Lock()
_models: OrderedDict[str, Any] = OrderedDict()


def get_or_load(key: str, loader: Callable[[], Any]) -> tuple[Any, bool]:
    """The cached value for `key`, loading it with `loader()` on a miss.

    Returns:
        (value, loaded): `loaded` is True when this call ran the loader.
    """
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key], False
        value = loader()
        _models[key] = value
        while len(_models) > _MAX_MODELS:
            _, old = _models.popitem(last=False)
            close = getattr(old, "close", None)
            if callable(close):
                close()
        return value, True


def cached_keys() -> list[str]:
    """Keys currently held in this worker (for tests and debugging)."""
    with _lock:
        return list(_models)


def clear() -> None:
    """Drop every cached model in this process."""
    with _lock:
        for value in _models.values():
            close = getattr(value, "close", None)
            if callable(close):
                close()
        _models.clear()
