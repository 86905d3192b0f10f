"""Task `image-classification`: a label and its score per image.

`AutoModelForImageClassification` (ViT, ConvNeXt, DeiT, ResNet, ...) on images decoded
and processed as `spark_scoring.models.tasks.vision` describes; `label` is
`config.id2label` of the arg-max class, `score` its softmax probability (sigmoid for
"multi_label_classification"), exactly as for `text-classification`.

Options:
    return_all_scores (bool, default false): also output `scores`, a map label -> score
        over every class.
    max_image_pixels (int, default 89,478,485): the decompression-bomb limit per image.

Output columns: `label` string, `score` double (+ `scores` map<string,double>).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from pyspark.sql.types import StructField

from spark_scoring.models.tasks.base import autocast_context
from spark_scoring.models.tasks.classification import (
    RETURN_ALL_SCORES,
    ClassScores,
    classification_fields,
)
from spark_scoring.models.tasks.vision import MAX_IMAGE_PIXELS, ImageModel, ImageTask


class _ImageClassifierModel(ImageModel):
    def __init__(self, model_dir: str, options: Mapping[str, Any], device: str, precision: str):
        from transformers import AutoModelForImageClassification

        super().__init__(model_dir, options, device, precision)
        self.model = (
            AutoModelForImageClassification.from_pretrained(model_dir, local_files_only=True)
            .to(device)
            .eval()
        )
        self.head = ClassScores(self.model.config, bool(options.get("return_all_scores", False)))
        self.outputs = self.head.outputs

    def predict(self, inputs: pd.DataFrame) -> Mapping[str, Any]:
        import torch

        pixels = self.pixel_values(inputs)  # decodes first: a bad image fails before the model
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            logits = self.model(pixel_values=pixels).logits
        return self.head(logits)


class ImageClassificationTask(ImageTask):
    """Image classification with a Hugging Face model and its image processor."""

    name = "image-classification"
    options = {"return_all_scores": RETURN_ALL_SCORES, "max_image_pixels": MAX_IMAGE_PIXELS}
    model_class = _ImageClassifierModel

    @classmethod
    def output_fields(cls, model_dir: str, options: Mapping[str, Any]) -> list[StructField]:
        return classification_fields(options)
