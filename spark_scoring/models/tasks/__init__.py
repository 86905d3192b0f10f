"""The task registry: every scoring task, and everything the rest of the code asks about it.

One `TaskSpec` per task in `_SPECS` below is the ONE list of tasks: the config's allowed
`model.task` values, the CLI's `--task` choices, the input-column rules, which MLflow
flavours and transformers pipelines serve a task, and how `register_model` logs a plain
Hugging Face directory all read it. Adding a task = one module implementing
`spark_scoring.models.tasks.base.Task` plus one `TaskSpec` entry here (an image task
subclasses `vision.ImageTask` / `vision.ImageModel`, which read, check and decode the
images, count their pixels and apply the model's image processor).

This module stays light (standard library only): parsing a config or printing `--help`
reads it, so it must not import torch, transformers or pyspark. Task classes load lazily
from their `"module:Class"` target.

Example:
    >>> task_spec("text-classification").input_kind
    'text'
    >>> get_task("embedding").name
    'embedding'
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover - typing only
    from spark_scoring.models.tasks.base import Task

#: What `model.input` names: one text column, one image column, or (pyfunc) any columns.
InputKind = Literal["text", "image", "columns"]
INPUT_KINDS: tuple[str, ...] = ("text", "image", "columns")
#: The MLflow flavours a task can be served from, in the order a model's flavours are tried.
FLAVORS: tuple[str, ...] = ("sentence_transformers", "transformers", "python_function")


@dataclass(frozen=True)
class HfDirectory:
    """How a plain Hugging Face directory (`config.json`, no `modules.json`) serves a task.

    Attributes:
        log_as: the transformers pipeline task `register_model` logs the directory as.
        needs: what the task needs, as error messages say it ("a causal language model ...").
        architectures: `config.json` architecture suffixes of which one must match, e.g.
            ("ForSequenceClassification",); empty: any architecture.
        refuse_generative: refuse generative models (causal LM, LM head, encoder-decoder).
        files: files of which the directory must hold one besides `config.json`, e.g. the
            image processor's ("preprocessor_config.json",); empty: none.
    """

    log_as: str
    needs: str
    architectures: tuple[str, ...] = ()
    refuse_generative: bool = False
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """Everything the code asks about one task.

    Attributes:
        name: the task name (`model.task`, `--task`, the `spark_scoring.task` tag).
        target: "module:Class" of its `Task` implementation, imported by `load()`.
        input_kind: what `model.input` must name: "text" or "image" (exactly one column of
            that kind) or "columns" (one or more columns, passed to the model as they are).
        flavors: the MLflow flavours that can serve it (see `FLAVORS`), in preference order.
        pipeline_tasks: the transformers pipeline tasks a transformers-flavour model may be
            logged as to serve it; non-empty exactly when `flavors` has "transformers".
        hf_directory: how a plain Hugging Face directory serves it; None when it cannot.
    """

    name: str
    target: str
    input_kind: InputKind
    flavors: tuple[str, ...]
    pipeline_tasks: tuple[str, ...] = ()
    hf_directory: HfDirectory | None = None

    def __post_init__(self) -> None:
        # Invariants of our own registry entries, checked when the module is imported.
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"task {self.name!r}: input_kind {self.input_kind!r} is not one of {INPUT_KINDS}")
        if not self.flavors or not set(self.flavors) <= set(FLAVORS):
            raise ValueError(f"task {self.name!r}: flavors {self.flavors!r} must be some of {FLAVORS}")
        if bool(self.pipeline_tasks) != ("transformers" in self.flavors):
            raise ValueError(f"task {self.name!r}: pipeline_tasks are needed exactly for the transformers flavour")
        if self.hf_directory is not None and self.hf_directory.log_as not in self.pipeline_tasks:
            raise ValueError(f"task {self.name!r}: hf_directory.log_as must be one of its pipeline_tasks")

    @property
    def single_column(self) -> bool:
        """True when `model.input` must name exactly one column (text and image tasks)."""
        return self.input_kind != "columns"

    def load(self) -> type[Task]:
        """Import and return the task's `Task` class."""
        module_name, _, class_name = self.target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)


#: Where `save_pretrained` puts a model's image processor (processors that bundle a
#: tokenizer, such as CLIPProcessor, write `processor_config.json` in transformers 5).
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")

_SPECS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="embedding",
        target="spark_scoring.models.tasks.embedding:EmbeddingTask",
        input_kind="text",
        flavors=("sentence_transformers", "transformers"),
        pipeline_tasks=("feature-extraction", "sentence-similarity"),
        hf_directory=HfDirectory(
            log_as="feature-extraction",
            needs="an encoder or sentence-transformers model",
            refuse_generative=True,
        ),
    ),
    TaskSpec(
        name="text-classification",
        target="spark_scoring.models.tasks.classification:TextClassificationTask",
        input_kind="text",
        flavors=("transformers",),
        pipeline_tasks=("text-classification", "sentiment-analysis"),
        hf_directory=HfDirectory(
            log_as="text-classification",
            needs=(
                "a sequence-classification model (config.json architectures like "
                "'BertForSequenceClassification')"
            ),
            architectures=("ForSequenceClassification",),
        ),
    ),
    TaskSpec(
        name="text-generation",
        target="spark_scoring.models.tasks.generation:TextGenerationTask",
        input_kind="text",
        flavors=("transformers",),
        pipeline_tasks=("text-generation",),
        hf_directory=HfDirectory(
            log_as="text-generation",
            needs="a causal language model (architectures like 'GPT2LMHeadModel' or '...ForCausalLM')",
            architectures=("ForCausalLM", "LMHeadModel"),
        ),
    ),
    TaskSpec(
        name="image-classification",
        target="spark_scoring.models.tasks.image_classification:ImageClassificationTask",
        input_kind="image",
        flavors=("transformers",),
        pipeline_tasks=("image-classification",),
        hf_directory=HfDirectory(
            log_as="image-classification",
            needs=(
                "an image-classification model (config.json architectures like "
                "'ViTForImageClassification') saved with its image processor"
            ),
            architectures=("ForImageClassification", "ForImageClassificationWithTeacher"),
            files=_IMAGE_PROCESSOR_FILES,
        ),
    ),
    TaskSpec(
        name="image-embedding",
        target="spark_scoring.models.tasks.image_embedding:ImageEmbeddingTask",
        input_kind="image",
        flavors=("transformers",),
        pipeline_tasks=("image-feature-extraction", "zero-shot-image-classification"),
        hf_directory=HfDirectory(
            log_as="image-feature-extraction",
            needs="a vision encoder or CLIP-style model saved with its image processor",
            refuse_generative=True,
            files=_IMAGE_PROCESSOR_FILES,
        ),
    ),
    TaskSpec(
        name="pyfunc",
        target="spark_scoring.models.tasks.pyfunc:PyfuncTask",
        input_kind="columns",
        flavors=("python_function",),
    ),
)

_BY_NAME: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
TASK_SPECS: tuple[TaskSpec, ...] = _SPECS
TASK_NAMES: tuple[str, ...] = tuple(_BY_NAME)


def task_spec(name: str) -> TaskSpec:
    """The registry entry of task `name`.

    Raises:
        KeyError: `name` is not a registered task (the message lists the known ones).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}") from None


def get_task(name: str) -> type[Task]:
    """The Task class registered under `name`.

    Raises:
        KeyError: `name` is not a registered task (the message lists the known ones).
    """
    return task_spec(name).load()


def task_option_problems(task: str, options: Mapping[str, Any]) -> list[str]:
    """Every problem with `model.options` for `task`, each starting with `model.options.<name>:`.

    An unknown task yields no problems here: the config's `model.task` check reports it.
    """
    if task not in _BY_NAME:
        return []
    if not isinstance(options, Mapping):
        return [f"model.options: expected a mapping of option -> value, got {options!r}"]
    return get_task(task).option_problems(options)


def or_list(names: Iterable[str]) -> str:
    """`'a'`, `'a' or 'b'`, `'a', 'b' or 'c'`: task names as error messages list them."""
    quoted = [repr(n) for n in names]
    if len(quoted) < 2:
        return quoted[0] if quoted else "none"
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def __getattr__(name: str) -> Any:
    # `Task` and `LoadedModel` stay importable from here without making this module heavy.
    if name in ("Task", "LoadedModel"):
        from spark_scoring.models.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FLAVORS",
    "INPUT_KINDS",
    "TASK_NAMES",
    "TASK_SPECS",
    "HfDirectory",
    "InputKind",
    "LoadedModel",
    "Task",
    "TaskSpec",
    "get_task",
    "or_list",
    "task_option_problems",
    "task_spec",
]
