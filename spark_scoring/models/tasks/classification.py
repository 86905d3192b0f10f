"""Task `text-classification`: a label and its score per text.

`AutoModelForSequenceClassification`; `label` is `config.id2label` of the arg-max class,
`score` its softmax probability, or its sigmoid when `config.problem_type` is
"multi_label_classification" (classes are independent there). `ClassScores` and
`classification_fields` say that once for `image-classification` too.


Options:
    return_all_scores (bool, default false): also output `scores`, a map label -> score
        over every class.

Output columns: `label` string, `score` double (+ `scores` map<string,double>).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pyspark.sql.types import DoubleType, MapType, StringType, StructField

from spark_scoring.models.tasks.base import (
    LoadedModel,
    OptionSpec,
    Task,
    TextModel,
    autocast_context,
    model_max_length,
    quiet_transformers,
)

#: The option both classifiers (text and image) take.
RETURN_ALL_SCORES = OptionSpec((bool,), "also output `scores`, a map label -> score over all classes")


def classification_fields(options: Mapping[str, Any]) -> list[StructField]:
    """`label`, `score` (+ `scores` with `return_all_scores`): the classifiers' output fields."""
    fields = [
        StructField("label", StringType(), True),
        StructField("score", DoubleType(), True),
    ]
    if options.get("return_all_scores", False):
        fields.append(
            StructField("scores", MapType(StringType(), DoubleType(), valueContainsNull=False), True)
        )
    return fields


class ClassScores:
    """How a classifier's logits become `label`, `score` and `scores` (text and image alike).

    Attributes:
        labels: `config.id2label` in class order (`LABEL_<i>` where a class has none).
        multi_label: `config.problem_type` is "multi_label_classification" (sigmoid scores).
        outputs: the output columns and their kinds, for `LoadedModel.outputs`.
    """

    def __init__(self, config: Any, all_scores: bool):
        self.all_scores = all_scores
        self.multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
        id2label = getattr(config, "id2label", None) or {}
        self.labels = np.array(
            [
                str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}")))
                for i in range(config.num_labels)
            ],
            dtype=object,
        )
        self.outputs = {"label": "string", "score": "double"}
        if all_scores:
            self.outputs["scores"] = "map"

    def __call__(self, logits: Any) -> dict[str, Any]:
        """A batch's logits (a torch tensor, rows x classes) -> column -> one value per row."""
        import torch

        logits = logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        probs = probs.cpu().numpy().astype(np.float64)
        top = probs.argmax(axis=1)
        out: dict[str, Any] = {
            "label": self.labels[top].tolist(),
            "score": probs[np.arange(len(top)), top],
        }
        if self.all_scores:
            labels = self.labels.tolist()
            out["scores"] = [dict(zip(labels, row, strict=True)) for row in probs.tolist()]
        return out


class TextClassificationTask(Task):
    """Sequence classification with a Hugging Face model."""

    name = "text-classification"
    options = {"return_all_scores": RETURN_ALL_SCORES}

    @classmethod
    def output_fields(cls, model_dir: str, options: Mapping[str, Any]) -> list[StructField]:
        return classification_fields(options)

    @classmethod
    def load(
        cls, model_dir: str, options: Mapping[str, Any], device: str, precision: str
    ) -> LoadedModel:
        return _ClassifierModel(
            model_dir, device, precision, bool(options.get("return_all_scores", False))
        )


class _ClassifierModel(TextModel):
    def __init__(self, model_dir: str, device: str, precision: str, all_scores: bool):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        quiet_transformers()
        autocast_context(device, precision)  # refuses fp16 on CPU before loading anything
        self.device, self.precision = device, precision
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = (
            AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
            .to(device)
            .eval()
        )
        self.max_length = model_max_length(self.tokenizer, model.config)
        self.head = ClassScores(model.config, all_scores)
        self.outputs = self.head.outputs
        self.model = model

    def forward(self, features: Mapping[str, Any]) -> Mapping[str, Any]:
        import torch

        with torch.inference_mode(), autocast_context(self.device, self.precision):
            logits = self.model(**features).logits
        return self.head(logits)
