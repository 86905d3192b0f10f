"""Register a local model directory in MLflow, tagged with the task it serves.

`register_model` logs a local model directory (sentence-transformers, Hugging Face
transformers, or an MLflow model directory) with the fitting MLflow flavour, registers a
new version, tags it with the task it serves (`spark_scoring.task`), and moves an alias
onto it. `spark_scoring.models.resolve.resolve_model` reads it back at the start of a run.
Nothing here prints: MLflow's own progress bars and registration messages are switched
off while we call it.

Example:
    >>> uri = register_model(minilm_dir, "minilm", task="embedding", alias="champion",
    ...                      tracking_uri="sqlite:////tmp/mlflow.db")
    >>> uri
    'models:/minilm/1'
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spark_scoring.errors import ModelError, TrackingError
from spark_scoring.mlflow_env import (
    check_tracking_reachable,
    default_tracking_uri,
    get_or_create_experiment,
    make_client,
    quiet_mlflow,
)
from spark_scoring.models.flavors import (
    TASK_TAG,
    DirectoryKind,
    check_architectures,
    check_plain_directory,
    directory_kind,
    read_flavors,
    serving_flavor,
)
from spark_scoring.models.tasks import TASK_NAMES, task_spec

DEFAULT_REGISTER_EXPERIMENT = "spark-scoring-models"


@contextlib.contextmanager
def _global_uris(tracking_uri: str, registry_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide URIs at ours for the block, then restore them exactly.

    The flavours' `log_model` functions (and a few MLflow internals) only use the global
    URIs. `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI,
    so the previous module globals and environment are saved and put back as they were.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    old_tracking = tracking_utils._tracking_uri
    old_registry = registry_utils._registry_uri
    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    old_env = {k: os.environ.get(k) for k in env_keys}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_tracking)
        registry_utils._registry_uri = old_registry
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_task_matches(path: Path, kind: DirectoryKind, task: str) -> None:
    """Raise `ModelError` when the model in `path` cannot serve `task` (nothing is logged yet)."""
    if task not in TASK_NAMES:
        raise ModelError(f"task {task!r} is not supported; use one of {', '.join(TASK_NAMES)}")
    if kind == "mlflow":
        serving_flavor(read_flavors(path), task, str(path))
        return
    check_plain_directory(path, kind, task)
    if kind == "transformers":
        check_architectures(path, task)


_EXAMPLE_TEXT = ["spark-scoring scores Delta tables with models."]


def _pip_requirements(*packages: str) -> list[str]:
    """Pinned requirements of what is installed; skips MLflow's slow inference subprocess."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", *packages):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _model_card(path: Path) -> Any:
    """The directory's README as a ModelCard, so MLflow does not ask the hub for one."""
    readme = path / "README.md"
    if not readme.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(readme)
    except Exception:  # noqa: BLE001 - the card is decoration, never a reason to fail
        return None


def _log_sentence_transformers(path: Path) -> Any:
    import mlflow
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    signature = mlflow.models.infer_signature(_EXAMPLE_TEXT, model.encode(_EXAMPLE_TEXT))
    return mlflow.sentence_transformers.log_model(
        model,
        name="model",
        signature=signature,
        input_example=_EXAMPLE_TEXT,
        pip_requirements=_pip_requirements("sentence-transformers", "transformers", "torch"),
    )


def _log_transformers(path: Path, task: str) -> Any:
    import mlflow
    import transformers

    pipeline_task = task_spec(task).hf_directory.log_as  # _check_task_matches made sure it has one
    pipe = transformers.pipeline(pipeline_task, model=str(path), tokenizer=str(path), device="cpu")
    kwargs: dict[str, Any] = {}
    card = _model_card(path)
    if card is not None:
        kwargs["model_card"] = card
    # The signature is inferred by MLflow from the example by running the pipeline once,
    # which also proves the model works before it is registered.
    return mlflow.transformers.log_model(
        transformers_model=pipe,
        name="model",
        task=pipeline_task,
        input_example=_EXAMPLE_TEXT,
        pip_requirements=_pip_requirements("transformers", "torch"),
        **kwargs,
    )


def register_model(
    path: str | os.PathLike[str],
    name: str,
    task: str,
    alias: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_REGISTER_EXPERIMENT,
) -> str:
    """Log a local model directory with the fitting MLflow flavour and register a new version.

    * a sentence-transformers directory (has `modules.json`) -> sentence_transformers flavour
    * another Hugging Face directory (`config.json`) -> transformers flavour, logged as the
      pipeline the task registry names (`feature-extraction` for task "embedding")
    * an MLflow model directory (`MLmodel`) -> its files are logged unchanged (flavours,
      signature and input example kept) and registered as is.

    The task is checked against the model before anything is logged. The new version is
    tagged `spark_scoring.task=<task>`, and `alias` (if given) is moved onto it.

    Args:
        path: the local model directory.
        name: registered model name (created when missing).
        task: the task the model serves (one of `spark_scoring.models.tasks.TASK_NAMES`).
        alias: alias to point at the new version, e.g. "champion".
        tracking_uri: MLflow tracking (and registry) URI; default `default_tracking_uri()`.
        experiment: experiment that holds the logging runs.

    Returns:
        "models:/NAME/VERSION" of the new version.

    Raises:
        ModelError: the directory is missing, not a model, or cannot serve `task`.
        TrackingError: the tracking server cannot be used.
    """
    src = Path(path).expanduser().resolve()
    if not src.is_dir():
        raise ModelError(f"model directory {src} does not exist; pass the directory of a saved model")
    kind = directory_kind(src)
    _check_task_matches(src, kind, task)
    uri = tracking_uri or default_tracking_uri()
    check_tracking_reachable(uri)

    import mlflow
    from mlflow.exceptions import MlflowException

    client = make_client(uri)
    try:
        with quiet_mlflow(fail_fast=True), _global_uris(uri, uri):
            experiment_id = get_or_create_experiment(client, uri, experiment)
            run = client.create_run(
                experiment_id, run_name=f"register-{name}", tags={TASK_TAG: task, "spark_scoring.kind": kind}
            )
            run_id = run.info.run_id
            status = "FAILED"
            try:
                model_id = None
                if kind == "mlflow":
                    client.log_artifacts(run_id, str(src), artifact_path="model")
                    source = f"{run.info.artifact_uri.rstrip('/')}/model"
                else:
                    with mlflow.start_run(run_id=run_id):
                        if kind == "sentence_transformers":
                            info = _log_sentence_transformers(src)
                        else:
                            info = _log_transformers(src, task)
                    model_id = info.model_id
                    source = info.model_uri
                try:
                    client.create_registered_model(name)
                except MlflowException as exc:
                    if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                        raise
                mv = client.create_model_version(
                    name, source=source, run_id=run_id, tags={TASK_TAG: task}, model_id=model_id
                )
                if alias:
                    client.set_registered_model_alias(name, alias, mv.version)
                status = "FINISHED"
            finally:
                with contextlib.suppress(Exception):
                    client.set_terminated(run_id, status)
    except MlflowException as exc:
        raise TrackingError(f"registering {src} as {name!r} at {uri} failed: {exc.message}") from exc
    return f"models:/{name}/{mv.version}"
