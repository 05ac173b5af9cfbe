"""Forward passes per model family: right-padded batches, the head applied at the last real token only.

Template families can also run a batch whose pairs share one query: the prefix (system prompt, instruction and query,
about a quarter of a typical input) goes through the model once, and its key/value cache serves every document.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch

from .encoding import EncodedPair
from .families import ModelFamily
from .loading import LoadedModel

__all__ = ["ModelRunner", "PrefixState"]

PrefixState = list[tuple[torch.Tensor, torch.Tensor]]
"""Per-layer (keys, values) of one query's prefix, batch size 1."""

logger = logging.getLogger(__name__)


class ModelRunner:
    """Computes float32 logits for batches of encoded pairs on the model's device."""

    def __init__(self, loaded: LoadedModel, *, compile: bool = False) -> None:
        self._loaded = loaded
        model = loaded.model
        tokenizer = loaded.tokenizer
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        # Padding sits right of every sequence and the causal mask keeps it out of the real tokens, so any id works
        # and config.pad_token_id is never needed.
        self._pad_id = int(pad)
        self._head_weight: torch.Tensor | None = None
        self._head_bias: torch.Tensor | None = None
        family = loaded.family
        if family is ModelFamily.ENCODER:
            self._backbone = model
        else:
            self._backbone = getattr(model, model.base_model_prefix)
            if family is ModelFamily.QWEN3_SEQ_CLS:
                head = model.score
                self._head_weight = head.weight.detach().float().reshape(-1).to(loaded.device)
                if getattr(head, "bias", None) is not None:
                    self._head_bias = head.bias.detach().float().reshape(()).to(loaded.device)
            else:
                yes, no = (_single_token_id(tokenizer, word) for word in ("yes", "no"))
                lm_head = model.get_output_embeddings().weight.detach()
                # log P(yes)/P(no) over {yes, no} is one row difference: the seq-cls conversion of the same weights.
                self._head_weight = (lm_head[yes].float() - lm_head[no].float()).to(loaded.device)
        # transformers 5.24 renamed `past_key_values` to `cache`; earlier 5.x releases only know the old name.
        parameters = inspect.signature(self._backbone.forward).parameters
        self._cache_kw = "cache" if "cache" in parameters else "past_key_values"
        self._forward = self._backbone
        if compile:
            self._forward = _compiled(loaded, self._backbone)

    @property
    def supports_shared_prefix(self) -> bool:
        """Whether :meth:`encode_prefix` / :meth:`run_with_prefix` apply (template families only)."""
        return self._loaded.family.uses_template

    @torch.inference_mode()
    def __call__(self, batch: Sequence[EncodedPair]) -> torch.Tensor:
        """Logits for whole inputs, one row each."""
        device = self._loaded.device
        ids, mask, lengths = _pad([pair.input_ids for pair in batch], self._pad_id)
        padded = bool((lengths < ids.shape[1]).any())
        if self._loaded.family is ModelFamily.ENCODER:
            inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            if batch[0].token_type_ids is not None:
                types, _, _ = _pad([pair.token_type_ids or () for pair in batch], 0)
                inputs["token_type_ids"] = types.to(device)
            return self._forward(**inputs).logits[:, 0].float().cpu()
        hidden = self._forward(
            input_ids=ids.to(device), attention_mask=mask.to(device) if padded else None, use_cache=False
        ).last_hidden_state
        return self._head(hidden, lengths)

    @torch.inference_mode()
    def encode_prefix(self, prefix: Sequence[int]) -> PrefixState:
        """Run a query's prefix (system prompt, instruction, query) once; its per-layer keys and values."""
        cache = _new_cache(self._loaded.model.config)
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=self._loaded.device)
        self._forward(input_ids=ids, use_cache=True, **{self._cache_kw: cache})  # fills the cache in place
        return [(layer.keys, layer.values) for layer in cache.layers]

    @torch.inference_mode()
    def run_with_prefix(self, state: PrefixState, batch: Sequence[EncodedPair]) -> torch.Tensor:
        """Logits for pairs sharing the prefix that ``state`` holds: only their documents and suffixes run."""
        device = self._loaded.device
        cache = _new_cache(self._loaded.model.config)
        for layer, (keys, values) in enumerate(state):
            size = (len(batch), -1, -1, -1)
            cache.update(keys.expand(size), values.expand(size), layer)
        prefix_len = state[0][0].shape[-2]
        ids, mask, lengths = _pad([pair.rest for pair in batch], self._pad_id)
        mask = torch.cat([torch.ones((len(batch), prefix_len), dtype=torch.long), mask], dim=1)
        hidden = self._forward(
            input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, **{self._cache_kw: cache}
        ).last_hidden_state
        return self._head(hidden, lengths)

    def _head(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The one-logit head at each row's last real token, in float32."""
        assert self._head_weight is not None
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, (lengths - 1).to(hidden.device)].float()
        logits = last @ self._head_weight
        if self._head_bias is not None:
            logits = logits + self._head_bias
        return logits.cpu()


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad rows of ids; returns (ids, attention mask, lengths) on the CPU."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max())
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return ids, mask, lengths


def _new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=config)


def _compiled(loaded: LoadedModel, backbone: torch.nn.Module) -> torch.nn.Module:
    """One compiled backbone per loaded model: compilation takes minutes, so every scorer shares it."""
    if loaded.compiled is None:
        logger.info("Compiling %s with torch.compile(dynamic=True); the first batches are slow.", loaded.name)
        loaded.compiled = torch.compile(backbone, dynamic=True)
    return loaded.compiled


def _single_token_id(tokenizer: object, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    if len(ids) != 1:
        raise ValueError(f"The tokenizer splits {word!r} into {len(ids)} tokens; a Qwen3-Reranker needs one.")
    return int(ids[0])
