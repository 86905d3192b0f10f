"""Resolve a model URI ONCE on the driver, pin it, and download it for the executors.

`resolve_model` turns what a job config names (`models:/name@alias`, `models:/name/3`,
`runs:/<run_id>/<path>`, or a local directory) into a `ResolvedModel`: the exact registry
version, the run that produced it, and `local_dir`, a directory the scoring engine loads
directly. A run uses that object from start to end, so an alias that moves while the run
is going does not change which model scores its rows.

Downloads land in a cache (`$SPARK_SCORING_MODEL_CACHE`, default
`~/.cache/spark_scoring/models/`) once per registered (name, version) or run artifact. A
download goes to a private temporary directory which is renamed into place after a marker
file is written, so concurrent processes never see half a model: the loser of the rename
race simply uses the winner's copy.

What `local_dir` points at:
* task "pyfunc": the MLflow model directory itself (has `MLmodel`).
* sentence-transformers flavour: the ST model directory MLflow stores inside the
  artifacts (`model.sentence_transformer/`).
* transformers flavour: MLflow stores the weights in `model/` and each pipeline component
  in `components/<name>/`; they are merged into one plain Hugging Face directory.
* a local directory without `MLmodel`: the directory itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_scoring.errors import ModelError, TrackingError
from spark_scoring.mlflow_env import existing_store_uris, make_client, quiet_mlflow
from spark_scoring.models.flavors import (
    HF_COMPONENTS_DIR,
    HF_MODEL_DIR,
    MLMODEL,
    ST_DATA_DIR,
    TASK_TAG,
    check_plain_directory,
    directory_kind,
    read_flavors,
    serving_flavor,
)
from spark_scoring.models.tasks import TASK_NAMES

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow import MlflowClient

_MARKER = ".spark_scoring_complete"
_LIST_LIMIT = 20
_ALLOWED_FORMS = (
    "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, or a local model directory"
)


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned for one run.

    Attributes:
        requested_uri: what the config asked for, unchanged.
        resolved_uri: the pinned URI: "models:/name/3" for registry URIs, the runs:/ URI,
            or the absolute path of a local directory.
        name: registered model name (None unless from the registry).
        version: registered model version as a string (None unless from the registry).
        run_id: the MLflow run that logged the model, when known.
        flavor: how the model was stored: "sentence_transformers", "transformers" or
            "python_function" (MLflow flavours), or for a plain local directory the
            library that reads it ("sentence_transformers" / "transformers").
        task_tag: the registered version's `spark_scoring.task` tag, if any.
        local_dir: absolute directory the scoring engine loads (see module docstring).
        model_hash: short stable hash of this exact model + task (the pinned version, or a
            local directory's content: names, sizes and bytes of its files, never their
            paths or modification times); `incremental.model_identity` builds the
            model identity (and so the executor cache key) from it.
    """

    requested_uri: str
    resolved_uri: str
    name: str | None
    version: str | None
    run_id: str | None
    flavor: str
    task_tag: str | None
    local_dir: str
    model_hash: str


def default_cache_dir() -> Path:
    """`$SPARK_SCORING_MODEL_CACHE`, else `~/.cache/spark_scoring/models`."""
    env = os.environ.get("SPARK_SCORING_MODEL_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spark_scoring" / "models"


def resolve_model(
    uri: str,
    *,
    task: str,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ResolvedModel:
    """Pin `uri` to one exact model and make it available as a local directory.

    Call this once on the driver at the start of a run and hand the result to everything
    else; never resolve again during the run.

    Args:
        uri: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, or a local
            directory (absolute or relative to the working directory; `file://` allowed).
        task: the job's task (one of `spark_scoring.models.tasks.TASK_NAMES`).
        tracking_uri: MLflow tracking URI; default `spark_scoring.mlflow_env.default_tracking_uri()`.
        registry_uri: model registry URI; default the tracking URI.
        cache_dir: where downloads go; default `default_cache_dir()`.

    Returns:
        The pinned `ResolvedModel`.

    Raises:
        ModelError: unknown model/alias/version/run, a task mismatch, a missing local
            directory, or artifacts that hold no loadable model.
        TrackingError: the tracking server or registry cannot be reached.

    Example:
        >>> m = resolve_model("models:/minilm@champion", task="embedding")
        >>> m.resolved_uri, m.version
        ('models:/minilm/3', '3')
    """
    if task not in TASK_NAMES:
        raise ModelError(f"task {task!r} is not supported; use one of {', '.join(TASK_NAMES)}")
    if not isinstance(uri, str) or not uri.strip():
        raise ModelError(f"model.uri must not be empty; give {_ALLOWED_FORMS}")
    uri = uri.strip()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if uri.startswith("models:/"):
        return _resolve_registry(uri, task, tracking_uri, registry_uri, cache)
    if uri.startswith("runs:/"):
        return _resolve_run(uri, task, tracking_uri, cache)
    if uri.startswith("file://"):
        uri_path = uri[len("file://") :]
        return _resolve_local(uri, uri_path, task, cache)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", uri):
        raise ModelError(f"model URI {uri!r} has an unsupported scheme; use {_ALLOWED_FORMS}")
    return _resolve_local(uri, uri, task, cache)


# --------------------------------------------------------------------------------------
# registry and runs
# --------------------------------------------------------------------------------------


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


@contextlib.contextmanager
def _registry_errors(what: str, where: str):
    """Turn MLflow's transport failures into a TrackingError naming the server."""
    from mlflow.exceptions import MlflowException

    try:
        with quiet_mlflow(fail_fast=True):
            yield
    except (ModelError, TrackingError):
        raise
    except MlflowException as exc:
        if _not_found(exc):
            raise
        raise TrackingError(f"{what} failed at {where}: {exc.message}") from exc
    except OSError as exc:
        raise TrackingError(f"{what} failed at {where}: {exc}") from exc


def _parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> (name, alias, version)."""
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        if name and alias and "/" not in alias:
            return name, alias, None
    elif "/" in rest:
        name, _, version = rest.rpartition("/")
        if name and version.isdigit():
            return name, None, version
        if name and version:
            raise ModelError(
                f"model URI {uri!r}: {version!r} is not a version number (stages are not "
                f"supported); use models:/{name}/<number> or models:/{name}@<alias>"
            )
    raise ModelError(f"model URI {uri!r} is not understood; use {_ALLOWED_FORMS}")


def _version_list(client: MlflowClient, name: str) -> list[str]:
    versions = client.search_model_versions(f"name = '{name}'", max_results=200)
    nums = sorted({int(v.version) for v in versions})
    if len(nums) > _LIST_LIMIT:
        return [str(n) for n in nums[-_LIST_LIMIT:]] + [f"... ({len(nums)} in all)"]
    return [str(n) for n in nums]


def _resolve_registry(
    uri: str, task: str, tracking_uri: str | None, registry_uri: str | None, cache: Path
) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    name, alias, version = _parse_models_uri(uri)
    tracking, registry = existing_store_uris(tracking_uri, registry_uri)
    client = make_client(tracking, registry)
    where = f"the model registry {registry}"
    with _registry_errors(f"resolving {uri}", where):
        try:
            registered = client.get_registered_model(name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            names = [m.name for m in client.search_registered_models(max_results=_LIST_LIMIT)]
            raise ModelError(
                f"registered model {name!r} (from {uri!r}) does not exist in {where}; existing "
                f"models: {names or 'none'}; register it first (spark_scoring."
                "register_model) or fix model.uri"
            ) from exc
        if alias is not None:
            aliases = {k: str(v) for k, v in (registered.aliases or {}).items()}
            if alias not in aliases:
                raise ModelError(
                    f"registered model {name!r} has no alias {alias!r} (from {uri!r}); its "
                    f"aliases: {aliases or 'none'}; its versions: {_version_list(client, name)}; "
                    f"set the alias (MlflowClient().set_registered_model_alias({name!r}, "
                    f"{alias!r}, <version>)) or use models:/{name}/<version>"
                )
            version = str(aliases[alias])
        try:
            mv = client.get_model_version(name, version)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            raise ModelError(
                f"registered model {name!r} has no version {version} (from {uri!r}); its "
                f"versions: {_version_list(client, name)}"
            ) from exc
    task_tag = (mv.tags or {}).get(TASK_TAG)
    if task_tag is not None and task_tag != task:
        raise ModelError(
            f"models:/{name}/{mv.version} (from {uri!r}) is registered for task {task_tag!r} "
            f"(tag {TASK_TAG}), but the job config says model.task={task!r}; fix model.task "
            "or point model.uri at a model registered for that task"
        )
    resolved_uri = f"models:/{name}/{mv.version}"
    slot = cache / "registry" / _slug(registry) / _slug(name) / str(mv.version)
    with _registry_errors(f"downloading {resolved_uri}", where):
        # Download from the version's storage location, not "models:/name/3": MLflow
        # resolves models:/ URIs against the process-wide registry URI, not ours.
        source = client.get_model_version_download_uri(name, str(mv.version))
        root = _cached_download(
            slot, lambda dst: _download(source, dst, tracking, registry), resolved_uri, task
        )
    flavor, local_dir = _locate(root, task, resolved_uri)
    return ResolvedModel(
        requested_uri=uri,
        resolved_uri=resolved_uri,
        name=name,
        version=str(mv.version),
        run_id=mv.run_id or None,
        flavor=flavor,
        task_tag=task_tag,
        local_dir=str(local_dir),
        model_hash=_model_hash(resolved_uri, task, registry, mv.run_id or "", str(mv.source or "")),
    )


def _resolve_run(uri: str, task: str, tracking_uri: str | None, cache: Path) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    rest = uri[len("runs:/") :].strip("/")
    run_id, _, artifact_path = rest.partition("/")
    if not run_id or not artifact_path:
        raise ModelError(f"model URI {uri!r} is not understood; use runs:/RUN_ID/PATH (e.g. runs:/abc123/model)")
    tracking, _registry = existing_store_uris(tracking_uri, None)
    client = make_client(tracking, tracking)
    where = f"the MLflow tracking store {tracking}"
    with _registry_errors(f"resolving {uri}", where):
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            raise ModelError(
                f"MLflow run {run_id!r} (from {uri!r}) does not exist in {where}; check the run id "
                "and mlflow.tracking_uri"
            ) from exc
        source = _run_model_location(client, run, artifact_path, uri)
        resolved_uri = f"runs:/{run_id}/{artifact_path}"
        slot = cache / "runs" / _slug(tracking) / run_id / _slug(artifact_path)
        root = _cached_download(slot, lambda dst: _download(source, dst, tracking, tracking), resolved_uri, task)
    flavor, local_dir = _locate(root, task, resolved_uri)
    return ResolvedModel(
        requested_uri=uri,
        resolved_uri=resolved_uri,
        name=None,
        version=None,
        run_id=run_id,
        flavor=flavor,
        task_tag=None,
        local_dir=str(local_dir),
        model_hash=_model_hash(resolved_uri, task, tracking),
    )


def _run_model_location(client: MlflowClient, run: Any, artifact_path: str, uri: str) -> str:
    """The storage URI of the model a runs:/ URI names.

    MLflow 2 kept models among the run's artifacts; MLflow 3 logs them as LoggedModels
    (their own artifact location) linked to the run by name. Both are looked up here with
    our client: MLflow's own runs:/ resolution falls back to the process-wide tracking URI.
    """
    import mlflow

    run_id = run.info.run_id
    in_run = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    try:
        listed = mlflow.artifacts.list_artifacts(artifact_uri=in_run, tracking_uri=client.tracking_uri)
    except Exception:  # noqa: BLE001 - nothing there (each store says so differently)
        listed = []
    if any(Path(f.path).name == MLMODEL for f in listed or []):
        return in_run
    models = [
        m
        for m in client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{artifact_path}'"
        )
        if m.source_run_id == run_id
    ]
    if not models:
        logged = [
            m.name
            for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])
            if m.source_run_id == run_id
        ]
        raise ModelError(
            f"run {run_id} has no model at {artifact_path!r} (from {uri!r}); models logged by "
            f"that run: {logged or 'none'}; use runs:/{run_id}/<one of those>"
        )
    # Several models under one name: the last logged wins, as in mlflow.register_model.
    latest = max(models, key=lambda m: m.creation_timestamp or 0)
    return latest.artifact_location


def _download(artifact_uri: str, dst: Path, tracking: str, registry: str) -> None:
    """Download `artifact_uri` so that its files land directly in `dst`."""
    import mlflow

    staging = dst.parent / (dst.name + ".dl")
    staging.mkdir(parents=True, exist_ok=True)
    got = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=str(staging), tracking_uri=tracking, registry_uri=registry
        )
    )
    if not (got / MLMODEL).is_file():
        raise ModelError(
            f"{artifact_uri} holds no MLflow model (no MLmodel file among "
            f"{sorted(p.name for p in got.iterdir())[:_LIST_LIMIT]})"
        )
    got.rename(dst)
    shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------
# local directories
# --------------------------------------------------------------------------------------


def _resolve_local(requested: str, path_text: str, task: str, cache: Path) -> ResolvedModel:
    path = Path(path_text).expanduser()
    path = (Path.cwd() / path if not path.is_absolute() else path).resolve()
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise ModelError(
            f"local model directory {path} (from model.uri {requested!r}) {what}; give an "
            f"existing model directory, or {_ALLOWED_FORMS}"
        )
    # The content, not the path: a copy of the same model elsewhere is the same model.
    model_hash = _model_hash(task, _fingerprint(path, cache))
    kind = directory_kind(path)
    if kind == "mlflow":
        # Merging a transformers model writes a new directory: keep it in the cache, keyed
        # by the content fingerprint so an edited directory gets a fresh merge.
        merge_slot = cache / "local" / model_hash
        flavor, local_dir = _locate(path, task, str(path), merge_slot=merge_slot)
    else:
        # The config.json architectures are left to the task's own check when the model
        # is prepared (registration checks them up front).
        check_plain_directory(path, kind, task)
        flavor, local_dir = kind, path
    return ResolvedModel(
        requested_uri=requested,
        resolved_uri=str(path),
        name=None,
        version=None,
        run_id=None,
        flavor=flavor,
        task_tag=None,
        local_dir=str(local_dir),
        model_hash=model_hash,
    )


#: Files up to this size are hashed on every resolve; larger ones once per (path, size,
#: mtime), remembered in the cache (hashing all-MiniLM-L6-v2's 90 MB of weights takes
#: ~0.2 s here, a 7B model's 14 GB half a minute).
_HASH_ALWAYS_BELOW = 1 << 20
_CHUNK = 1 << 22


def _fingerprint(path: Path, cache: Path) -> str:
    """A hash of what the model directory holds: every file's relative name, size and content.

    Modification times are not part of it, so a copy of the same weights (a redeploy, a
    directory copied elsewhere) keeps the model identity and needs no rescore, while one
    changed byte anywhere changes it. Hidden files and folders (`.git`, `.cache`) are not
    the model and are left out. Large files are hashed once: their content hash is kept in
    the cache under their (real path, size, mtime, inode), so a nightly run reads only the
    small files again.
    """
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            file = Path(root, name)
            st = file.stat()
            digest = _content_hash(file, st, cache)
            h.update(f"{file.relative_to(path).as_posix()}\0{st.st_size}\0{digest}\n".encode())
    return h.hexdigest()


def _content_hash(file: Path, st: os.stat_result, cache: Path) -> str:
    if st.st_size < _HASH_ALWAYS_BELOW:
        return hashlib.sha256(file.read_bytes()).hexdigest()
    key = f"{os.path.realpath(file)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    entry = cache / "local" / "file-hashes" / hashlib.sha256(key.encode()).hexdigest()
    with contextlib.suppress(OSError):
        known = entry.read_text().strip()
        if len(known) == 64:
            return known
    h = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with contextlib.suppress(OSError):  # an unwritable cache only costs the next run a rehash
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(digest)
        os.replace(tmp, entry)
    return digest


# --------------------------------------------------------------------------------------
# inside the MLflow artifacts
# --------------------------------------------------------------------------------------


def _locate(root: Path, task: str, label: str, merge_slot: Path | None = None) -> tuple[str, Path]:
    """(flavor, directory the engine loads) for the MLflow model directory `root`.

    For a downloaded registry/run model the transformers merge was already done inside the
    cache slot (`root.parent / "hf"`); for a local MLflow directory it goes to `merge_slot`.
    """
    flavors = read_flavors(root)
    flavor = serving_flavor(flavors, task, label)
    if flavor == "sentence_transformers":
        data = flavors.get("python_function", {}).get("data") or ST_DATA_DIR
        st_dir = root / data
        if not (st_dir / "modules.json").is_file() and not (st_dir / "config.json").is_file():
            raise ModelError(f"{label}: the sentence-transformers model directory {st_dir} is missing or empty")
        return flavor, st_dir
    if flavor == "transformers":
        merged = root.parent / "hf" if merge_slot is None else merge_slot / "hf"
        if not (merged / _MARKER).is_file():
            _merge_hf(root, flavors["transformers"], merged, label)
        return flavor, merged
    return flavor, root  # python_function: the MLflow model directory itself


def _merge_hf(root: Path, conf: dict[str, Any], merged: Path, label: str) -> None:
    """Copy MLflow's `model/` and `components/<name>/` into ONE Hugging Face directory."""
    model_dir = root / HF_MODEL_DIR
    if not (model_dir / "config.json").is_file():
        repo = conf.get("source_model_name") or conf.get("_name_or_path") or "?"
        raise ModelError(
            f"{label} holds no model weights (no {HF_MODEL_DIR}/config.json): it was logged with "
            f"save_pretrained=False and refers to the hub repository {repo!r}, which cannot be "
            "reached here; log it again with save_pretrained=True"
        )

    def build(tmp: Path) -> None:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        for component in conf.get("components") or []:
            comp_dir = root / HF_COMPONENTS_DIR / component
            if not comp_dir.is_dir():
                continue
            for item in comp_dir.iterdir():
                target = tmp / item.name
                if target.exists():  # the model's own files win (config.json)
                    continue
                if item.is_dir():
                    shutil.copytree(item, target)
                else:
                    shutil.copy2(item, target)

    _atomic_dir(merged, build)


# --------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    """A readable, filesystem-safe, collision-free name for `text`."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:40] or "x"
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _model_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _atomic_dir(final: Path, build) -> Path:
    """Build `final` in a private temp dir, write the marker last, rename into place.

    Tolerates concurrent processes: whoever renames first wins and the others reuse it.
    A directory without the marker is a leftover of a crash and is replaced.
    """
    if (final / _MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        build(tmp)
        (tmp / _MARKER).write_text(json.dumps({"created": time.time(), "pid": os.getpid()}))
        for _attempt in range(3):
            try:
                tmp.rename(final)
                return final
            except OSError:
                if (final / _MARKER).is_file():
                    return final  # another process finished first
                # A crashed earlier attempt left an incomplete directory: clear it.
                shutil.rmtree(final, ignore_errors=True)
        raise ModelError(f"could not move the model into the cache at {final}; check permissions")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.parent / (tmp.name + ".dl"), ignore_errors=True)


def _cached_download(slot: Path, fetch, label: str, task: str) -> Path:
    """Download once into `slot/mlflow` (reused when complete); return that directory.

    For the transformers flavour the merged Hugging Face directory is built inside the
    same slot (`slot/hf`) by `_locate`.
    """

    def build(tmp: Path) -> None:
        tmp.rmdir()  # _download renames the fetched directory onto this path
        fetch(tmp)

    try:
        return _atomic_dir(slot / "mlflow", build)
    except ModelError:
        raise
    except OSError as exc:
        raise ModelError(f"downloading {label} into the cache {slot} failed: {exc}") from exc
