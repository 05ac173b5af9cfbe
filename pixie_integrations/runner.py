"""Forward passes per model family: right-padded batches, the head applied at the last real token only."""

from __future__ import annotations

import torch

from .encoding import EncodedPair
from .families import ModelFamily
from .loading import LoadedModel

__all__ = ["ModelRunner"]


class ModelRunner:
    """Computes float32 logits for a batch of encoded pairs on the model's device."""

    def __init__(self, loaded: LoadedModel) -> None:
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
        if loaded.family is ModelFamily.QWEN3_SEQ_CLS:
            self._backbone = getattr(model, model.base_model_prefix)
            head = model.score
            self._head_weight = head.weight.detach().float().reshape(-1)
            if getattr(head, "bias", None) is not None:
                self._head_bias = head.bias.detach().float().reshape(())
        elif loaded.family is ModelFamily.QWEN3_CAUSAL_LM:
            self._backbone = getattr(model, model.base_model_prefix)
            yes, no = (_single_token_id(tokenizer, word) for word in ("yes", "no"))
            lm_head = model.get_output_embeddings().weight.detach()
            # log P(yes)/P(no) over {yes, no} is a difference of two rows: the seq-cls conversion of the same weights.
            self._head_weight = lm_head[yes].float() - lm_head[no].float()
        else:
            self._backbone = model

    @torch.inference_mode()
    def __call__(self, batch: list[EncodedPair]) -> torch.Tensor:
        device = self._loaded.device
        lengths = torch.tensor([len(e) for e in batch])
        width = int(lengths.max())
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long) if batch[0].token_type_ids is not None else None
        for row, pair in enumerate(batch):
            n = len(pair)
            ids[row, :n] = torch.tensor(pair.input_ids)
            mask[row, :n] = 1
            if types is not None and pair.token_type_ids is not None:
                types[row, :n] = torch.tensor(pair.token_type_ids)
        padded = bool((lengths < width).any())
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device) if padded else None}
        if self._head_weight is None:
            if types is not None:
                inputs["token_type_ids"] = types.to(device)
            if inputs["attention_mask"] is None:
                inputs["attention_mask"] = mask.to(device)
            logits = self._backbone(**inputs).logits
            return logits[:, 0].float().cpu()
        hidden = self._backbone(**inputs, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(batch), device=device), (lengths - 1).to(device)].float()
        logits = last @ self._head_weight.to(device)
        if self._head_bias is not None:
            logits = logits + self._head_bias.to(device)
        return logits.cpu()


def _single_token_id(tokenizer: object, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    if len(ids) != 1:
        raise ValueError(f"The tokenizer splits {word!r} into {len(ids)} tokens; a Qwen3-Reranker needs one.")
    return int(ids[0])
