"""Task `text-generation`: a continuation per prompt with a causal language model.

`AutoModelForCausalLM`, prompts LEFT-padded (so every row's new tokens start at the same
position; pad token = EOS when the tokenizer has none), prompts truncated to the model
limit minus `max_new_tokens`. `generated_text` holds only the new tokens, decoded with
`skip_special_tokens`. An empty prompt that tokenizes to nothing is given the BOS token
(EOS when there is no BOS) so that the model has something to continue.

Options:
    max_new_tokens (int, default 32): tokens to generate per row.
    do_sample (bool, default false): greedy decoding when false.
    seed (int, default 0), temperature (number), top_p (number in (0, 1]), top_k (int):
        sampling settings, used only with do_sample.

Reproducibility: greedy decoding is deterministic and does not depend on how rows are
packed (up to float rounding on near-ties). With `do_sample`, torch's generator is seeded
with `seed` before every model batch, so a rerun over the same data with the same
partitioning, batch settings, hardware and library versions gives the same texts; a row's
sample does depend on which rows share its batch (and its position there), so changing
`model.batch`, the partitioning or the data changes sampled outputs.

Output column: `generated_text` string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql.types import StringType, StructField

from spark_scoring.models.tasks.base import (
    LoadedModel,
    OptionSpec,
    Task,
    TextModel,
    autocast_context,
    model_max_length,
    non_negative_int,
    positive_int,
    positive_number,
    probability,
    quiet_transformers,
)

DEFAULT_MAX_NEW_TOKENS = 32


class TextGenerationTask(Task):
    """Causal language model continuation (greedy by default, seeded sampling on request)."""

    name = "text-generation"
    options = {
        "max_new_tokens": OptionSpec(
            (int,), f"tokens to generate per row, default {DEFAULT_MAX_NEW_TOKENS}", positive_int
        ),
        "do_sample": OptionSpec((bool,), "sample instead of greedy decoding, default false"),
        "seed": OptionSpec(
            (int,), "seed for sampling, set before every batch, default 0", non_negative_int
        ),
        "temperature": OptionSpec((int, float), "sampling temperature > 0", positive_number),
        "top_p": OptionSpec((int, float), "nucleus sampling probability in (0, 1]", probability),
        "top_k": OptionSpec((int,), "sample from the k most likely tokens, k >= 1", positive_int),
    }

    @classmethod
    def output_fields(cls, model_dir: str, options: Mapping[str, Any]) -> list[StructField]:
        return [StructField("generated_text", StringType(), True)]

    @classmethod
    def load(
        cls, model_dir: str, options: Mapping[str, Any], device: str, precision: str
    ) -> LoadedModel:
        return _GeneratorModel(model_dir, dict(options), device, precision)


def generation_kwargs(options: Mapping[str, Any], pad_token_id: int) -> dict[str, Any]:
    """The `generate()` keyword arguments these task options mean."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
        "do_sample": bool(options.get("do_sample", False)),
        "pad_token_id": pad_token_id,
    }
    if kwargs["do_sample"]:
        for name in ("temperature", "top_p", "top_k"):
            if name in options:
                kwargs[name] = options[name]
    else:
        # Greedy: neutralise sampling knobs a model's generation_config may carry.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


class _GeneratorModel(TextModel):
    outputs = {"generated_text": "string"}

    def __init__(self, model_dir: str, options: dict[str, Any], device: str, precision: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_transformers()
        autocast_context(device, precision)  # refuses fp16 on CPU before loading anything
        self.device, self.precision = device, precision
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, padding_side="left")
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.tokenizer = tok
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        )
        self.kwargs = generation_kwargs(options, tok.pad_token_id)
        self.seed = int(options.get("seed", 0))
        self.row_overhead = self.kwargs["max_new_tokens"]
        self.max_length = max(
            1, model_max_length(tok, self.model.config, fallback=2048) - self.row_overhead
        )
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.empty_prompt = [start] if start is not None else [tok.pad_token_id]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per prompt (truncated; never empty)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)[
            "input_ids"
        ]
        return [row if row else list(self.empty_prompt) for row in ids]

    def lengths(self, inputs: pd.DataFrame) -> np.ndarray:
        ids = self.encode(inputs.iloc[:, 0].tolist())
        return np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))

    def tokenize(self, inputs: pd.DataFrame) -> Any:
        """The prompts, left-padded into tensors on the CPU (an empty one given BOS)."""
        ids = self.encode(inputs.iloc[:, 0].tolist())
        return self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")

    def forward(self, features: Mapping[str, Any]) -> Mapping[str, Any]:
        import torch

        if self.kwargs["do_sample"]:
            torch.manual_seed(self.seed)
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            out = self.model.generate(**features, **self.kwargs)
        new = out[:, features["input_ids"].shape[1] :]
        return {"generated_text": self.tokenizer.batch_decode(new, skip_special_tokens=True)}
