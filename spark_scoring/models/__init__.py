"""Models: the task registry and tasks (`tasks`: one module per task, one `TaskSpec` entry
each in `tasks/__init__.py`), registering models in MLflow (`register`), resolving URIs on
the driver (`resolve`), the model-directory and flavour rules both share (`flavors`), and
the per-worker cache (`cache`)."""

from spark_scoring.models.tasks import TASK_NAMES, get_task, task_option_problems, task_spec

__all__ = ["TASK_NAMES", "get_task", "task_option_problems", "task_spec"]
