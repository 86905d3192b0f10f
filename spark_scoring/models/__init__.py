"""Models: resolving URIs on the driver (`resolve`), the per-worker cache (`cache`), and
the scoring tasks (`tasks`: one module per task, registered in `tasks/__init__.py`)."""

from spark_scoring.models.tasks import TASK_NAMES, get_task, task_option_problems

__all__ = ["TASK_NAMES", "get_task", "task_option_problems"]
