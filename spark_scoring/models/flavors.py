"""What registration and resolution agree on: model directories and MLflow flavours.

`spark_scoring.models.register` writes models to MLflow and
`spark_scoring.models.resolve` reads them back; both ask this module the same questions,
and this module answers them from the task registry (`spark_scoring.models.tasks`):

* what a local directory is (`directory_kind`: an MLflow model, a sentence-transformers
  model, or a plain Hugging Face transformers model);
* which flavour of an MLflow model serves a task (`serving_flavor`);
* whether a plain directory can serve a task (`check_plain_directory`) and, before
  registering, whether its `config.json` architectures fit (`check_architectures`);
* where MLflow keeps what inside its artifacts (the `*_DIR` names below) and which
  registry tag names the task (`TASK_TAG`).

Light on purpose: reading an MLmodel file needs only PyYAML, so no check here imports
MLflow, torch or transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from spark_scoring.errors import ModelError
from spark_scoring.models.tasks import TASK_SPECS, or_list, task_spec

#: Registered-version tag naming the task a model was registered for.
TASK_TAG = "spark_scoring.task"

MLMODEL = "MLmodel"
#: Inside an MLflow model directory (MLflow 3.x layout):
ST_DATA_DIR = "model.sentence_transformer"  # mlflow.sentence_transformers.SENTENCE_TRANSFORMERS_DATA_PATH
HF_MODEL_DIR = "model"  # mlflow.transformers.model_io._MODEL_BINARY_FILE_NAME
HF_COMPONENTS_DIR = "components"  # mlflow.transformers.model_io._COMPONENTS_BINARY_DIR_NAME

#: The flavours that name the library a model is for, in the order they are looked for
#: (an MLflow sentence-transformers model also carries python_function, and so on).
LIBRARY_FLAVORS: tuple[str, ...] = ("sentence_transformers", "transformers")
PYFUNC_FLAVOR = "python_function"
#: `config.json` architecture suffixes of generative models (besides `is_encoder_decoder`).
GENERATIVE_ARCHITECTURES: tuple[str, ...] = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")

DirectoryKind = Literal["mlflow", "sentence_transformers", "transformers"]
_LIST_LIMIT = 20


def directory_kind(path: Path) -> DirectoryKind:
    """'mlflow', 'sentence_transformers' or 'transformers', from the files in `path`.

    Raises:
        ModelError: `path` holds none of MLmodel, modules.json or config.json.
    """
    if (path / MLMODEL).is_file():
        return "mlflow"
    if (path / "modules.json").is_file():
        return "sentence_transformers"
    if (path / "config.json").is_file():
        return "transformers"
    files = sorted(p.name for p in path.iterdir())[:_LIST_LIMIT]
    raise ModelError(
        f"{path} is not a model directory: it has no MLmodel (MLflow model), modules.json "
        f"(sentence-transformers) or config.json (Hugging Face transformers); files there: {files}"
    )


def read_flavors(root: Path) -> dict[str, Any]:
    """The `flavors` section of `root/MLmodel` (flavour name -> its configuration).

    Raises:
        ModelError: the MLmodel file cannot be read or parsed.
    """
    import yaml

    try:
        meta = yaml.safe_load((root / MLMODEL).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read {root / MLMODEL}: {exc}") from exc
    return dict(meta.get("flavors") or {})


def serving_flavor(flavors: Mapping[str, Any], task: str, label: str) -> str:
    """The flavour of an MLflow model (its `flavors`) that serves `task`.

    The model's library flavour (sentence_transformers, else transformers) serves a task
    that lists it, a transformers pipeline only a task that lists its pipeline task;
    otherwise a task served by python_function loads the MLflow model itself.

    Args:
        flavors: the model's flavours (`read_flavors`).
        task: a registered task name.
        label: how messages name the model (a path or URI).

    Raises:
        ModelError: no flavour of the model serves `task`; says which tasks it serves.
    """
    spec = task_spec(task)
    native = next((f for f in LIBRARY_FLAVORS if f in flavors), None)
    pipeline_task = (flavors.get("transformers") or {}).get("task")
    if native is not None and native in spec.flavors:
        if native == "transformers" and pipeline_task not in spec.pipeline_tasks:
            raise ModelError(
                f"{label} is a transformers {pipeline_task!r} pipeline; task {task!r} needs one of "
                f"{sorted(spec.pipeline_tasks)}; fix the task or the model"
            )
        return native
    if PYFUNC_FLAVOR in spec.flavors:
        if PYFUNC_FLAVOR in flavors:
            return PYFUNC_FLAVOR
        raise ModelError(
            f"task {task!r} needs an MLflow model with the python_function flavour; {label} has "
            f"flavours {sorted(flavors)}"
        )
    pyfunc_tasks = [s.name for s in TASK_SPECS if PYFUNC_FLAVOR in s.flavors]
    if native is None:
        needs = " or ".join(f for f in LIBRARY_FLAVORS if f in spec.flavors)
        raise ModelError(
            f"{label} has flavours {sorted(flavors)}; task {task!r} needs a {needs} model; use "
            f"task {or_list(pyfunc_tasks)} for other MLflow models"
        )
    serves = [
        s.name
        for s in TASK_SPECS
        if native in s.flavors and (native != "transformers" or pipeline_task in s.pipeline_tasks)
    ]
    also = f" (or {or_list(pyfunc_tasks)})" if PYFUNC_FLAVOR in flavors and pyfunc_tasks else ""
    what = "a sentence-transformers model" if native == "sentence_transformers" else (
        f"a transformers {pipeline_task!r} pipeline"
    )
    raise ModelError(f"{label} is {what}: it serves task {or_list(serves)}{also}, not {task!r}")


def check_plain_directory(path: Path, kind: DirectoryKind, task: str) -> None:
    """Raise `ModelError` when the plain (non-MLflow) model directory `path` cannot serve `task`.

    A sentence-transformers directory serves the tasks with that flavour, a plain Hugging
    Face directory the tasks with an `hf_directory` entry; MLflow-only tasks (pyfunc)
    need an MLflow model directory.
    """
    spec = task_spec(task)
    if kind == "sentence_transformers":
        serving = [s.name for s in TASK_SPECS if "sentence_transformers" in s.flavors]
    else:
        serving = [s.name for s in TASK_SPECS if s.hf_directory is not None]
    if task in serving:
        return
    if not set(LIBRARY_FLAVORS) & set(spec.flavors):
        raise ModelError(
            f"task {task!r} needs an MLflow model directory (with an MLmodel file); {path} is a "
            f"plain Hugging Face directory: save it with mlflow.pyfunc.save_model, or use task "
            f"{or_list(serving)}"
        )
    what = (
        "a sentence-transformers model (modules.json)"
        if kind == "sentence_transformers"
        else "a plain Hugging Face model (config.json)"
    )
    raise ModelError(f"{path} is {what}: it serves task {or_list(serving)}, not {task!r}")


def check_architectures(path: Path, task: str) -> None:
    """Raise `ModelError` when the plain Hugging Face directory `path` does not fit `task`.

    The rules are the task's `hf_directory` entry: one of its architecture suffixes must
    match the `config.json` architectures, generative models are refused where it says so,
    and one of its `files` (an image task's image processor) must be there. Called before
    registering a plain Hugging Face directory (resolution leaves this to the task's own
    model check).
    """
    rule = task_spec(task).hf_directory
    if rule is None:  # check_plain_directory refuses such a directory first
        return
    archs, config = _architectures(path)
    if rule.files and not any((path / name).is_file() for name in rule.files):
        raise ModelError(
            f"task {task!r} needs {rule.needs}; {path} has no {' or '.join(rule.files)}: save "
            "the model's processor next to it (processor.save_pretrained(dir))"
        )
    if rule.architectures and not any(a.endswith(rule.architectures) for a in archs):
        raise ModelError(f"task {task!r} needs {rule.needs}; {path} has architectures {archs}")
    if rule.refuse_generative and is_generative(archs, config):
        raise ModelError(f"task {task!r} needs {rule.needs}; {path} is a generative model (architectures {archs})")


def is_generative(archs: list[str], config: Mapping[str, Any]) -> bool:
    """A causal LM, LM head or encoder-decoder model, from its config.json."""
    return bool(config.get("is_encoder_decoder")) or any(a.endswith(GENERATIVE_ARCHITECTURES) for a in archs)


def _architectures(path: Path) -> tuple[list[str], dict[str, Any]]:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path / 'config.json'}: {exc}") from exc
    return list(config.get("architectures") or []), config
