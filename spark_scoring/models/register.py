"""Register a local model directory in MLflow, tagged with the task it serves.

`register_model` logs a local model directory (sentence-transformers, Hugging Face
transformers, or an MLflow model directory) with the fitting MLflow flavour, registers a
new version, tags it with the task it serves (`spark_scoring.task`), and moves an alias
onto it. `spark_scoring.models.resolve.resolve_model` reads it back at the start of a run.

A flavour is saved with `mlflow.<flavour>.save_model` and uploaded as an MLflow 3
LoggedModel through an explicit client: what `log_model` does, without MLflow's
process-wide URIs or active run. Nothing here prints: MLflow's own progress bars and
registration messages are switched off while we call it.

Example:
    >>> uri = register_model(minilm_dir, "minilm", task="embedding", alias="champion",
    ...                      tracking_uri="sqlite:////tmp/mlflow.db")
    >>> uri
    'models:/minilm/1'
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_scoring.errors import ModelError, TrackingError
from spark_scoring.mlflow_env import (
    check_tracking_reachable,
    default_tracking_uri,
    get_or_create_experiment,
    make_client,
    quiet_mlflow,
    store_resolves_logged_models,
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

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow import MlflowClient

DEFAULT_REGISTER_EXPERIMENT = "spark-scoring-models"


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


def _save_sentence_transformers(path: Path, dst: Path, mlflow_model: Any) -> None:
    import mlflow
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    signature = mlflow.models.infer_signature(_EXAMPLE_TEXT, model.encode(_EXAMPLE_TEXT))
    mlflow.sentence_transformers.save_model(
        model,
        path=str(dst),
        mlflow_model=mlflow_model,
        signature=signature,
        input_example=_EXAMPLE_TEXT,
        pip_requirements=_pip_requirements("sentence-transformers", "transformers", "torch"),
    )


def _save_transformers(path: Path, task: str, dst: Path, mlflow_model: Any) -> None:
    import mlflow
    import transformers

    spec = task_spec(task)
    pipeline_task = spec.hf_directory.log_as  # _check_task_matches made sure it has one
    kwargs: dict[str, Any] = {}
    if spec.input_kind == "image":
        # The pipeline loads the image processor with the model. No input example: MLflow
        # would run it through the pipeline, and the image-feature-extraction pipeline
        # cannot run a CLIP model (its forward wants text too); MLflow's default
        # signature for the pipeline task applies where it has one.
        pipe = transformers.pipeline(pipeline_task, model=str(path), device="cpu")
        requirements = _pip_requirements("transformers", "torch", "pillow")
    else:
        pipe = transformers.pipeline(pipeline_task, model=str(path), tokenizer=str(path), device="cpu")
        # The signature is inferred by MLflow from the example by running the pipeline
        # once, which also proves the model works before it is registered.
        kwargs["input_example"] = _EXAMPLE_TEXT
        requirements = _pip_requirements("transformers", "torch")
    card = _model_card(path)
    if card is not None:
        kwargs["model_card"] = card
    mlflow.transformers.save_model(
        transformers_model=pipe,
        path=str(dst),
        mlflow_model=mlflow_model,
        task=pipeline_task,
        pip_requirements=requirements,
        **kwargs,
    )


def _log_as_logged_model(
    client: MlflowClient, experiment_id: str, run_id: str, save: Callable[[Path, Any], None]
) -> str:
    """Save the model with its flavour and log it as an MLflow 3 LoggedModel; its model id.

    What `mlflow.<flavour>.log_model` does, with our explicit client instead of the
    process-wide URIs and active run: create the LoggedModel (linked to `run_id`), save
    the flavour into a temporary directory whose MLmodel names that LoggedModel, upload
    the files into its artifact location, and mark it READY (FAILED if anything raised).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model
    from mlflow.tracking.context.registry import resolve_tags

    logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id, tags=resolve_tags())
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        mlflow_model = Model(
            artifact_path=logged.artifact_location,
            model_uuid=logged.model_id,
            run_id=run_id,
            model_id=logged.model_id,
        )
        with tempfile.TemporaryDirectory(prefix="spark-scoring-register-") as tmp:
            local = Path(tmp) / "model"
            save(local, mlflow_model)
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id


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

    from mlflow.exceptions import MlflowException

    client = make_client(uri)
    try:
        with quiet_mlflow(fail_fast=True):
            experiment_id = get_or_create_experiment(client, uri, experiment)
            run = client.create_run(
                experiment_id, run_name=f"register-{name}", tags={TASK_TAG: task, "spark_scoring.kind": kind}
            )
            run_id = run.info.run_id
            status = "FAILED"
            try:
                logged_model_id = None
                if kind == "mlflow":
                    client.log_artifacts(run_id, str(src), artifact_path="model")
                    source = f"{run.info.artifact_uri.rstrip('/')}/model"
                else:
                    if kind == "sentence_transformers":
                        save = functools.partial(_save_sentence_transformers, src)
                    else:
                        save = functools.partial(_save_transformers, src, task)
                    logged_model_id = _log_as_logged_model(client, experiment_id, run_id, save)
                    source = f"models:/{logged_model_id}"
                try:
                    client.create_registered_model(name)
                except MlflowException as exc:
                    if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                        raise
                with store_resolves_logged_models(uri, uri):
                    mv = client.create_model_version(
                        name, source=source, run_id=run_id, tags={TASK_TAG: task}, model_id=logged_model_id
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
