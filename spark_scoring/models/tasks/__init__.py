"""The task registry: every scoring task, visible in one place.

Adding a task = one module implementing `spark_scoring.models.tasks.base.Task` plus one
line in `_REGISTRY` below. Task modules are imported lazily so that parsing a config never
imports torch or transformers.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from spark_scoring.models.tasks.base import LoadedModel, Task

#: task name -> "module:class". The ONE list of tasks.
_REGISTRY: dict[str, str] = {
    "embedding": "spark_scoring.models.tasks.embedding:EmbeddingTask",
    "text-classification": "spark_scoring.models.tasks.classification:TextClassificationTask",
    "text-generation": "spark_scoring.models.tasks.generation:TextGenerationTask",
    "pyfunc": "spark_scoring.models.tasks.pyfunc:PyfuncTask",
}

TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_task(name: str) -> type[Task]:
    """The Task class registered under `name`.

    Raises:
        KeyError: `name` is not a registered task (the message lists the known ones).
    """
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def task_option_problems(task: str, options: Mapping[str, Any]) -> list[str]:
    """Every problem with `model.options` for `task`, each starting with `model.options.<name>:`.

    An unknown task yields no problems here: the config's `model.task` check reports it.
    """
    if task not in _REGISTRY:
        return []
    if not isinstance(options, Mapping):
        return [f"model.options: expected a mapping of option -> value, got {options!r}"]
    return get_task(task).option_problems(options)


__all__ = ["TASK_NAMES", "LoadedModel", "Task", "get_task", "task_option_problems"]
