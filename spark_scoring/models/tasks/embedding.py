"""Task `embedding`: one float vector per text.

A sentence-transformers model directory (it has `modules.json`) is loaded with
`SentenceTransformer` and scored as `encode` scores it: its own `preprocess` (default
prompt included) and its own modules (pooling, Normalize, Dense, ...), so the embeddings
are the ones its authors get (within 1e-4 of `encode`). Each chunk is preprocessed once and
every model batch is a slice of those tensors (`base.TokenBatches`). Any other Hugging Face
encoder is mean-pooled over the attention mask (`AutoModel` + `AutoTokenizer`), not
normalised.

Output column: `embedding` array<float>.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    """The model's own modules (modules.json: Transformer, Pooling, Normalize, ...) on
    features its own `preprocess` made once per chunk: what `encode` computes, tokenizing
    once instead of once for the packing lengths and again inside `encode`."""

    outputs = {"embedding": "vector"}

    def __init__(self, model_dir: str, device: str, precision: str):
        from sentence_transformers import SentenceTransformer

        autocast_context(device, precision)  # refuses fp16 on CPU before loading anything
        self.device, self.precision = device, precision
        model = SentenceTransformer(model_dir, device=device, local_files_only=True).eval()
        self.model = model
        self.tokenizer = model.tokenizer
        first = model[0]
        self.max_length = model.max_seq_length or model_max_length(
            model.tokenizer, getattr(getattr(first, "auto_model", None), "config", None)
        )
        # What `encode` uses without arguments: the default prompt and the truncation.
        name = model.default_prompt_name
        self.prompt = model.prompts.get(name) if name else None
        self.truncate_dim = model.truncate_dim

    def tokenize(self, inputs: pd.DataFrame) -> Any:
        return self.model.preprocess(inputs.iloc[:, 0].tolist(), prompt=self.prompt)

    def forward(self, features: Mapping[str, Any]) -> Mapping[str, Any]:
        import torch

        with torch.inference_mode(), autocast_context(self.device, self.precision):
            emb = self.model(dict(features))["sentence_embedding"]
        if self.truncate_dim is not None:
            emb = emb[..., : self.truncate_dim]
        return {"embedding": emb.float().cpu().numpy()}


class _MeanPoolingModel(TextModel):
    outputs = {"embedding": "vector"}

    def __init__(self, model_dir: str, device: str, precision: str):
        from transformers import AutoModel, AutoTokenizer

        autocast_context(device, precision)  # refuses fp16 on CPU before loading anything
        self.device, self.precision = device, precision
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        self.max_length = model_max_length(self.tokenizer, model.config)
        self.model = model

    def forward(self, features: Mapping[str, Any]) -> Mapping[str, Any]:
        import torch

        with torch.inference_mode(), autocast_context(self.device, self.precision):
            hidden = self.model(**features).last_hidden_state
            emb = mean_pool(hidden, features["attention_mask"])
        return {"embedding": emb.float().cpu().numpy()}


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Average of the token vectors the attention mask keeps (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts
