"""What the image tasks share: reading and decoding images, pixel lengths, the image processor.

An image task's `model.input` is one column holding, per row, either

* encoded image bytes (a binary column): anything Pillow reads (PNG, JPEG, WebP, GIF,
  BMP, TIFF, ...); or
* the image's path (a string column), read on the executor: an absolute local path
  (`/data/img/1.png`) or `file:` URI (`file:///data/img/1.png`), or a URI pyarrow.fs
  reads (`s3://`, `gs://` / `gcs://`, `hdfs://` / `viewfs://`, `abfs://` / `abfss://`;
  credentials as pyarrow finds them on the executor). Relative paths are refused (an
  executor's working directory is Spark's, not the job author's); `http(s)://` is not
  supported (a nightly job should not depend on a web server: copy the images to storage).

How a row is checked (every problem is that row's `error`, never its batch's):

1. `invalid_rows` reads only each image's header (Pillow opens lazily): a null, a value
   of the wrong type, empty bytes, an unreadable path, bytes Pillow cannot identify, and
   an image over the decompression-bomb limit (option `max_image_pixels`, default
   Pillow's own 89,478,485 pixels, ~0.25 GiB as RGB) are refused here, before any decode.
2. `lengths` is width x height from those headers (kept from step 1, not read again):
   batches are packed by `model.batch.max_pixels` (see `BatchConfig`).
3. `predict` decodes the batch fully as transformers' pipelines do (`load_image`: EXIF
   orientation applied, first frame, RGB) and hands it to the model's own image processor
   (`AutoImageProcessor`). A truncated or corrupt image fails its decode with
   `ImageDecodeError` before the model runs, and `spark_scoring.batching` splits the
   batch until that row is alone: only it gets the error.

Images read by path are identified by the path (it is what `input_hash` hashes): an image
replaced in place under the same path is not rescored by an incremental run.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO, ClassVar
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd

from spark_scoring.models.tasks.base import (
    LoadedModel,
    OptionSpec,
    Task,
    autocast_context,
    positive_int,
    quiet_transformers,
)

#: Pillow's own default decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`).
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
MAX_IMAGE_PIXELS = OptionSpec(
    (int,),
    "decompression-bomb guard: images of more pixels (width x height) are refused per row; "
    f"default {DEFAULT_MAX_IMAGE_PIXELS:,}",
    positive_int,
)
#: URI schemes read through pyarrow.fs (local paths and file: are read directly).
ARROW_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
SUPPORTED_PATHS = "an absolute local path, file://, " + ", ".join(f"{s}://" for s in ARROW_SCHEMES)
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_MAX_DETAIL = 300
_ADDRESS_RE = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


class ImageDecodeError(ValueError):
    """An image whose header reads but whose pixels do not decode (truncated or corrupt).

    A ValueError, not a ScoringError: batching isolates it to its row instead of failing
    the job.
    """


class ImageModel(LoadedModel):
    """A model over one image column with its Hugging Face image processor.

    `__init__` loads the processor (`AutoImageProcessor`, the model's own) and checks the
    precision; subclasses then load their model and call `pixel_values` in `predict`.
    """

    length_unit = "pixels"

    def __init__(self, model_dir: str, options: Mapping[str, Any], device: str, precision: str):
        from transformers import AutoImageProcessor

        quiet_transformers()
        autocast_context(device, precision)  # refuses fp16 on CPU before loading anything
        self.device, self.precision = device, precision
        self.processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        self.max_image_pixels = int(options.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        # (index label, id(value)) -> pixels of the last chunk `invalid_rows` looked at,
        # so that `lengths` does not open every header (or remote file) a second time.
        self._pixels: dict[tuple[Any, int], int] = {}

    def invalid_rows(self, inputs: pd.DataFrame) -> dict[int, str]:
        col = inputs.columns[0]
        problems: dict[int, str] = {}
        self._pixels = {}
        for pos, (label, value) in enumerate(inputs[col].items()):
            try:
                self._pixels[(label, id(value))] = image_pixels(value, col, self.max_image_pixels)
            except _RowProblem as exc:
                problems[pos] = str(exc)
        return problems

    def lengths(self, inputs: pd.DataFrame) -> np.ndarray:
        col = inputs.columns[0]
        out = np.empty(len(inputs), dtype=np.int64)
        for pos, (label, value) in enumerate(inputs[col].items()):
            known = self._pixels.get((label, id(value)))
            out[pos] = known if known is not None else _header_pixels(value, col)
        return out

    def pixel_values(self, inputs: pd.DataFrame) -> Any:
        """The batch decoded and run through the image processor: a tensor on the device.

        Raises:
            ImageDecodeError: an image does not decode (the first one that fails).
        """
        col = inputs.columns[0]
        images = [decode_image(value, col) for value in inputs[col]]
        batch = self.processor(images=images, return_tensors="pt")
        return batch["pixel_values"].to(self.device)


class ImageTask(Task):
    """A task over one image column: shared options, the driver-side check, `load`."""

    options: Mapping[str, OptionSpec] = {"max_image_pixels": MAX_IMAGE_PIXELS}
    #: What `load` builds: an `ImageModel` subclass taking (model_dir, options, device, precision).
    model_class: ClassVar[type[ImageModel]]

    @classmethod
    def check_model(cls, model_dir: str) -> None:
        """The model's config and its image processor's config must both be readable."""
        from transformers import AutoConfig, AutoImageProcessor

        AutoConfig.from_pretrained(model_dir, local_files_only=True)
        AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)

    @classmethod
    def load(
        cls, model_dir: str, options: Mapping[str, Any], device: str, precision: str
    ) -> LoadedModel:
        return cls.model_class(model_dir, options, device, precision)


# --------------------------------------------------------------------------------------
# Reading and decoding one value
# --------------------------------------------------------------------------------------


class _RowProblem(Exception):
    """Why a row cannot be scored; its message is the row's `error`."""


def image_pixels(value: Any, col: str, limit: int) -> int:
    """width x height of the image `value` holds (bytes or a path), read from its header.

    Raises:
        _RowProblem: the value is null, of the wrong type, empty, unreadable, not an
            image, or over `limit` pixels.
    """
    pixels = _header_pixels(value, col)
    if pixels > limit:
        raise _RowProblem(
            f"input column {col!r}: {_subject(value)} has {pixels:,} pixels, over the "
            f"decompression-bomb limit of {limit:,} (model.options.max_image_pixels); raise "
            "the option if such images are expected"
        )
    return pixels


def decode_image(value: Any, col: str) -> Any:
    """The image `value` holds as an RGB `PIL.Image`, as transformers' `load_image` makes it.

    Raises:
        ImageDecodeError: it cannot be read or decoded.
    """
    from PIL import Image, ImageOps

    try:
        with _open(value, col) as stream, _no_pillow_limit():
            image = Image.open(stream)
            image = ImageOps.exif_transpose(image)  # a decoded copy, upright
            return image.convert("RGB")
    except _RowProblem as exc:  # e.g. the file went away since its header was read
        raise ImageDecodeError(str(exc)) from exc
    except Exception as exc:
        raise ImageDecodeError(_corrupt(value, col, exc)) from exc


def _header_pixels(value: Any, col: str) -> int:
    from PIL import Image, UnidentifiedImageError

    with _open(value, col) as stream, _no_pillow_limit():
        try:
            width, height = Image.open(stream).size
        except UnidentifiedImageError as exc:
            raise _RowProblem(
                f"input column {col!r}: {_subject(value, 'the value')} is not an image Pillow can read "
                f"({_detail(exc)}); expected an encoded image such as PNG, JPEG or WebP"
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # a header cut short
            raise _RowProblem(_corrupt(value, col, exc)) from exc
    return int(width) * int(height)


@contextlib.contextmanager
def _open(value: Any, col: str) -> Iterator[BinaryIO]:
    """A seekable binary stream over the image bytes or the file `value` names."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _RowProblem(f"input column {col!r} is null")
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise _RowProblem(
                f"input column {col!r} is empty (0 bytes); expected an encoded image "
                "(PNG, JPEG, WebP, ...)"
            )
        yield io.BytesIO(value)
        return
    if not isinstance(value, str):
        raise _RowProblem(
            f"input column {col!r} holds a value of type {type(value).__name__}; expected "
            "encoded image bytes (a binary column) or an image path (a string column)"
        )
    try:
        stream = _open_path(value, col)
    except _RowProblem:
        raise
    except Exception as exc:  # FileNotFoundError, PermissionError, a store's own errors
        raise _RowProblem(f"input column {col!r}: cannot read {value!r}: {_detail(exc)}") from exc
    with stream:
        yield stream


def _open_path(path: str, col: str) -> BinaryIO:
    if not path.strip():
        raise _RowProblem(f"input column {col!r} is an empty path; expected {SUPPORTED_PATHS}")
    match = _SCHEME_RE.match(path)
    scheme = match.group(1).lower() if match else None
    if scheme is None:
        if not path.startswith("/"):
            raise _RowProblem(
                f"input column {col!r}: {path!r} is a relative path, which executors cannot "
                f"resolve; give {SUPPORTED_PATHS}"
            )
        return open(path, "rb")  # noqa: SIM115 - closed by _open's with-block
    if scheme == "file":
        parts = urlsplit(path)
        if parts.netloc not in ("", "localhost"):
            raise _RowProblem(
                f"input column {col!r}: {path!r} names host {parts.netloc!r}; file:// URIs "
                "must be local (file:///abs/path)"
            )
        return open(unquote(parts.path), "rb")  # noqa: SIM115 - closed by _open's with-block
    if scheme not in ARROW_SCHEMES:
        raise _RowProblem(
            f"input column {col!r}: {path!r} has an unsupported scheme {scheme!r}; supported: "
            f"{SUPPORTED_PATHS}"
        )
    fs, inner = _arrow_filesystem(path)
    return fs.open_input_file(inner)


_FILESYSTEMS: dict[tuple[str, str], Any] = {}


def _arrow_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for `uri`.

    One FileSystem per scheme, host and Python worker, so that a night's rows do not each
    build a client (for S3 that is a region lookup). A FileSystem is cached only when the
    path pyarrow gave for the first URI is the one `_inner_path` computes, so a cached
    one is never handed a path it reads differently.
    """
    from pyarrow import fs

    parts = urlsplit(uri)
    key = (parts.scheme.lower(), parts.netloc)
    cached = _FILESYSTEMS.get(key)
    if cached is not None:
        return cached, _inner_path(parts)
    filesystem, inner = fs.FileSystem.from_uri(uri)
    if inner == _inner_path(parts):
        _FILESYSTEMS[key] = filesystem
    return filesystem, inner


def _inner_path(parts: Any) -> str:
    # s3://bucket/key -> bucket/key; hdfs://host:port/p -> /p;
    # abfss://container@account.dfs.core.windows.net/p -> container/p
    scheme, path = parts.scheme.lower(), unquote(parts.path)
    if scheme in ("hdfs", "viewfs"):
        return path
    if scheme in ("abfs", "abfss"):
        return parts.netloc.partition("@")[0] + path
    return parts.netloc + path


@contextlib.contextmanager
def _no_pillow_limit() -> Iterator[None]:
    """Pillow's process-wide bomb check off: `image_pixels` applies the task's own limit.

    Pillow would warn above its limit and raise above twice it, whatever the option says;
    the Python worker scores one batch at a time, so the swap is not seen elsewhere.
    """
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _corrupt(value: Any, col: str, exc: BaseException) -> str:
    """The one wording for an image that starts like one but does not read to its end."""
    return f"input column {col!r}: {_subject(value)} is truncated or corrupt ({_detail(exc)})"


def _subject(value: Any, inline: str = "the image") -> str:
    """How messages name the image: its path, or `inline` for image bytes in the column."""
    return repr(value) if isinstance(value, str) else inline


def _detail(exc: BaseException) -> str:
    # Without object addresses ("<_io.BytesIO object at 0x7f...>"): rows failing for the
    # same reason must read the same, so that `explore.failures` counts them together.
    text = _ADDRESS_RE.sub("", " ".join(f"{type(exc).__name__}: {exc}".split()))
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."
