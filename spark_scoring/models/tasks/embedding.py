"""Task `embedding`: one float vector per text.

A sentence-transformers model directory (it has `modules.json`) is loaded with
`SentenceTransformer` and scored with `encode`, so its own pooling, Normalize and prompt
modules apply exactly as they do for its authors. Any other Hugging Face encoder is
mean-pooled over the attention mask (`AutoModel` + `AutoTokenizer`), not normalised.

Output column: `embedding` array<float>.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql.types import ArrayType, FloatType, StructField

from spark_scoring.models.tasks.base import (
    LoadedModel,
    Task,
    TextModel,
    autocast_context,
    model_max_length,
    quiet_transformers,
)


class EmbeddingTask(Task):
    """Sentence embeddings (sentence-transformers semantics, else mean pooling)."""

    name = "embedding"
    options = {}

    @classmethod
    def output_fields(cls, model_dir: str, options: Mapping[str, Any]) -> list[StructField]:
        return [StructField("embedding", ArrayType(FloatType(), containsNull=False), nullable=True)]

    @classmethod
    def load(
        cls, model_dir: str, options: Mapping[str, Any], device: str, precision: str
    ) -> LoadedModel:
        quiet_transformers()
        if (Path(model_dir) / "modules.json").is_file():
            return _SentenceTransformerModel(model_dir, device, precision)
        return _MeanPoolingModel(model_dir, device, precision)


class _SentenceTransformerModel(TextModel):
    outputs = {"embedding": "vector"}

    def __init__(self, model_dir: str, device: str, precision: str):
        from sentence_transformers import SentenceTransformer

        autocast_context(device, precision)  # refuses fp16 on CPU before loading anything
        self.device, self.precision = device, precision
        self.model = SentenceTransformer(model_dir, device=device, local_files_only=True)
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        first = self.model[0]
        self.max_length = self.model.max_seq_length or model_max_length(
            self.model.tokenizer, getattr(getattr(first, "auto_model", None), "config", None)
        )

    def predict(self, inputs: pd.DataFrame) -> Mapping[str, Any]:
        import torch

        texts = inputs.iloc[:, 0].tolist()
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            emb = self.model.encode(
                texts, batch_size=len(texts), show_progress_bar=False, convert_to_numpy=True
            )
        return {"embedding": np.asarray(emb, dtype=np.float32)}


class _MeanPoolingModel(TextModel):
    outputs = {"embedding": "vector"}

    def __init__(self, model_dir: str, device: str, precision: str):
        from transformers import AutoModel, AutoTokenizer

        autocast_context(device, precision)  # refuses fp16 on CPU before loading anything
        self.device, self.precision = device, precision
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        self.max_length = model_max_length(self.tokenizer, self.model.config)

    def predict(self, inputs: pd.DataFrame) -> Mapping[str, Any]:
        import torch

        enc = self.tokenize(inputs)
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            hidden = self.model(**enc).last_hidden_state
            emb = mean_pool(hidden, enc["attention_mask"])
        return {"embedding": emb.float().cpu().numpy()}


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Average of the token vectors the attention mask keeps (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts
