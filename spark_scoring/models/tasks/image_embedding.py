"""Task `image-embedding`: one float vector per image.

Images are decoded and processed as `spark_scoring.models.tasks.vision` describes, then
the model (`AutoModel`) gives one vector per image, by architecture:

* a CLIP-style model (it has `get_image_features`: CLIP, SigLIP, ChineseCLIP, ...): its
  projected image features, the vectors it compares with its text features;
* a vision tower with a projection (`image_embeds`, e.g. CLIPVisionModelWithProjection):
  those;
* another vision encoder: its `pooler_output` (DINOv2: the normed CLS token; ConvNeXt,
  ResNet, Swin: the pooled feature map), unless the checkpoint holds no weights for the
  pooler (a ViT classifier loaded as a ViTModel gets a newly initialised, random pooler):
  then, as for encoders without a pooler, the mean of `last_hidden_state` over its tokens
  (or over the feature map's height and width).

Options:
    normalize (bool, default false): scale each embedding to unit L2 norm (cosine
        similarity becomes a dot product); off, the vectors are what the model gives.
    max_image_pixels (int, default 89,478,485): the decompression-bomb limit per image.

Output column: `embedding` array<float>.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from pyspark.sql.types import StructField

from spark_scoring.errors import ModelOutputError
from spark_scoring.models.tasks.base import OptionSpec, autocast_context
from spark_scoring.models.tasks.embedding import EmbeddingTask
from spark_scoring.models.tasks.vision import MAX_IMAGE_PIXELS, ImageModel, ImageTask


class _ImageEmbeddingModel(ImageModel):
    outputs = {"embedding": "vector"}

    def __init__(self, model_dir: str, options: Mapping[str, Any], device: str, precision: str):
        from transformers import AutoModel

        super().__init__(model_dir, options, device, precision)
        self.normalize = bool(options.get("normalize", False))
        model, info = AutoModel.from_pretrained(
            model_dir, local_files_only=True, output_loading_info=True
        )
        self.model = model.to(device).eval()
        if callable(getattr(model, "get_image_features", None)):
            self.pooling = "image_features"
        elif any(".pooler." in f".{key}" for key in info.get("missing_keys") or ()):
            self.pooling = "mean"  # the pooler would be random: its weights are not saved
        else:
            self.pooling = "pooler"

    def predict(self, inputs: pd.DataFrame) -> Mapping[str, Any]:
        import torch

        pixels = self.pixel_values(inputs)  # decodes first: a bad image fails before the model
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            if self.pooling == "image_features":
                emb = _features(self.model.get_image_features(pixel_values=pixels))
            else:
                emb = pool_image_outputs(self.model(pixel_values=pixels), self.pooling == "pooler")
            emb = emb.float()
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
        return {"embedding": emb.cpu().numpy()}


class ImageEmbeddingTask(ImageTask):
    """Image embeddings: CLIP-style image features, else the encoder's pooled output."""

    name = "image-embedding"
    options = {
        "normalize": OptionSpec((bool,), "scale each embedding to unit L2 norm"),
        "max_image_pixels": MAX_IMAGE_PIXELS,
    }
    model_class = _ImageEmbeddingModel

    @classmethod
    def output_fields(cls, model_dir: str, options: Mapping[str, Any]) -> list[StructField]:
        return EmbeddingTask.output_fields(model_dir, options)  # the same `embedding` column


def _features(result: Any) -> Any:
    # transformers 4 returned the tensor; 5 returns a model output whose pooler_output
    # holds the projected features.
    if hasattr(result, "ndim"):
        return result
    return result.pooler_output


def pool_image_outputs(outputs: Any, use_pooler: bool) -> Any:
    """One vector per image from a vision model's outputs (see the module docstring).

    Raises:
        ModelOutputError: the outputs hold none of image_embeds, pooler_output or a 3-D /
            4-D last_hidden_state (a model this task cannot pool).
    """
    embeds = getattr(outputs, "image_embeds", None)
    if embeds is not None:
        return embeds
    pooled = getattr(outputs, "pooler_output", None)
    if use_pooler and pooled is not None:
        return pooled.flatten(1)  # ResNet-style pooled maps are (rows, channels, 1, 1)
    hidden = getattr(outputs, "last_hidden_state", None)
    if hidden is not None and hidden.ndim == 3:  # (rows, tokens, dims)
        return hidden.mean(dim=1)
    if hidden is not None and hidden.ndim == 4:  # (rows, channels, height, width)
        return hidden.mean(dim=(2, 3))
    raise ModelOutputError(
        f"image-embedding: the model's outputs ({type(outputs).__name__}) hold no image_embeds, "
        "pooler_output or 3-D/4-D last_hidden_state to pool; use a vision encoder or a "
        "CLIP-style model"
    )
