"""Tiny random rerankers built locally, for tests, examples and offline trials. Nothing here downloads.

Each builder writes a complete ``transformers`` checkpoint folder (config, safetensors weights, tokenizer) that
``PixieScorer``, sentence-transformers ``CrossEncoder`` and ``from_pretrained`` load like a hub model:

- :func:`build_tiny_reranker` - a Qwen3 sequence classifier with one logit, PIXIE's architecture in miniature;
- :func:`build_tiny_qwen3_reranker_pair` - a Qwen3 causal LM (Qwen3-Reranker style) and the seq-cls conversion of
  the same weights (head = ``W[yes] - W[no]``);
- :func:`build_tiny_encoder_reranker` - a BERT cross-encoder with one logit (the bge-reranker family's shape).

The tokenizers are byte-level BPE (Korean and English both encode) trained here on a small built-in corpus, with
Qwen's pre-tokenizer and the chat special tokens the PIXIE template uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .template import DEFAULT_INSTRUCTION, format_document, format_query

__all__ = [
    "SAMPLE_DOCUMENTS",
    "SAMPLE_QUERIES",
    "build_tiny_encoder_reranker",
    "build_tiny_qwen3_reranker_pair",
    "build_tiny_reranker",
    "build_tiny_tokenizer",
]

# The model card's Korean example, plus English text, so the tokenizer learns merges for both scripts.
SAMPLE_QUERIES = [
    "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?",
    "국방 분야에 어떤 위성 서비스가 제공되나요?",
    "텔레픽스의 기술 수준은 어느 정도인가요?",
    "What does a satellite imaging company do?",
    "How are reranking models evaluated?",
]
SAMPLE_DOCUMENTS = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.",
    "텔레픽스는 우주에서 수집한 정보를 분석하여 '우주 경제(Space Economy)'라는 새로운 가치를 창출하고 있습니다.",
    "텔레픽스는 위성 영상 획득부터 분석, 서비스 제공까지 전 주기를 아우르는 솔루션을 제공합니다.",
    "A satellite imaging company analyses earth observation data for agriculture, defence and the ocean.",
    "Rerankers are evaluated with NDCG at cut-offs 1, 3, 5 and 10 over a first-stage shortlist.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
]
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_ADDED_TOKENS = ["<think>", "</think>"]


def _corpus() -> list[str]:
    lines = [
        format_query(q, DEFAULT_INSTRUCTION) + format_document(d) for q in SAMPLE_QUERIES for d in SAMPLE_DOCUMENTS
    ]
    lines += ["yes no " * 20, "Answer: yes", "Answer: no"]
    return lines


def build_tiny_tokenizer(path: str | os.PathLike[str], *, vocab_size: int = 1200) -> Any:
    """Train and save a byte-level BPE tokenizer shaped like Qwen's (no chat template, so pairs stay pairs)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    state = bpe.model
    vocab = bpe.get_vocab(with_added_tokens=False)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        state.save(tmp)
        merges = [
            tuple(line.split(" "))
            for line in Path(tmp, "merges.txt").read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")
        ]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_tokens(_ADDED_TOKENS)
    tokenizer.model_max_length = 40960
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    return tokenizer


def _qwen3_config(vocab_size: int, *, layers: int, hidden: int, pad_token_id: int | None, **extra: Any) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        **extra,
    )


def _vocab_size(tokenizer: Any) -> int:
    return len(tokenizer)


def build_tiny_reranker(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    pad_token_id: bool = True,
) -> Path:
    """Build a tiny random Qwen3 sequence classifier with one logit (PIXIE's shape in miniature).

    Args:
        path: Folder to write the checkpoint to.
        seed: Weight seed: the same seed gives the same weights.
        num_layers: Decoder layers.
        hidden_size: Hidden width (4 query heads, 2 KV heads).
        pad_token_id: Whether the config names a pad token; ``False`` reproduces checkpoints that lack it.
    """
    import torch
    from transformers import Qwen3ForSequenceClassification

    out = Path(path)
    tokenizer = build_tiny_tokenizer(out)
    config = _qwen3_config(
        _vocab_size(tokenizer),
        layers=num_layers,
        hidden=hidden_size,
        pad_token_id=tokenizer.pad_token_id if pad_token_id else None,
        num_labels=1,
        architectures=["Qwen3ForSequenceClassification"],
    )
    torch.manual_seed(seed)
    model = Qwen3ForSequenceClassification(config)
    _spread_head(model.score.weight, seed)
    model.save_pretrained(out)
    return out


def build_tiny_qwen3_reranker_pair(
    path: str | os.PathLike[str], *, seed: int = 0, num_layers: int = 2, hidden_size: int = 64
) -> tuple[Path, Path]:
    """Build a Qwen3-Reranker-style causal LM and its seq-cls conversion (same weights, head ``W[yes] - W[no]``).

    Returns:
        ``(causal_lm_folder, seq_cls_folder)``, under ``path``.
    """
    import torch
    from transformers import Qwen3ForCausalLM, Qwen3ForSequenceClassification

    root = Path(path)
    causal_dir, seq_cls_dir = root / "causal-lm", root / "seq-cls"
    tokenizer = build_tiny_tokenizer(causal_dir)
    build_tiny_tokenizer(seq_cls_dir)
    yes = tokenizer.convert_tokens_to_ids("yes")
    no = tokenizer.convert_tokens_to_ids("no")
    base = _qwen3_config(
        _vocab_size(tokenizer), layers=num_layers, hidden=hidden_size, pad_token_id=tokenizer.pad_token_id
    )
    torch.manual_seed(seed)
    causal = Qwen3ForCausalLM(base)
    with torch.no_grad():
        # Random logits for yes/no would be tiny; widen them so scores spread over (0, 1).
        causal.lm_head.weight[yes] *= 8.0
        causal.lm_head.weight[no] *= 8.0
    causal.config.architectures = ["Qwen3ForCausalLM"]
    causal.save_pretrained(causal_dir)

    seq_config = _qwen3_config(
        _vocab_size(tokenizer),
        layers=num_layers,
        hidden=hidden_size,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
        architectures=["Qwen3ForSequenceClassification"],
    )
    seq_cls = Qwen3ForSequenceClassification(seq_config)
    missing = seq_cls.model.load_state_dict(causal.model.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys
    with torch.no_grad():
        head = causal.lm_head.weight
        seq_cls.score.weight.copy_((head[yes] - head[no]).unsqueeze(0))
    seq_cls.save_pretrained(seq_cls_dir)
    return causal_dir, seq_cls_dir


def build_tiny_encoder_reranker(
    path: str | os.PathLike[str], *, seed: int = 0, num_layers: int = 2, hidden_size: int = 64
) -> Path:
    """Build a tiny random BERT cross-encoder with one logit and a WordPiece tokenizer trained here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=800, special_tokens=specials, show_progress=False)
    wordpiece.train_from_iterator(SAMPLE_QUERIES + SAMPLE_DOCUMENTS * 3, trainer=trainer)
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    tokenizer.save_pretrained(out)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["BertForSequenceClassification"],
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    _spread_head(model.classifier.weight, seed)
    model.save_pretrained(out)
    return out


def _spread_head(weight: Any, seed: int) -> None:
    """Scale a random one-logit head so that scores spread over (0, 1) instead of all sitting near 0.5."""
    import torch

    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        weight.copy_(torch.randn(weight.shape, generator=generator) * 4.0 / weight.shape[-1] ** 0.5)
