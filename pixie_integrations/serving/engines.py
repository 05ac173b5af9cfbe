"""What each rerank engine does to the text, as far as the client must know: which model families it scores as the
model card does (:func:`engine_family`), and the client-side cut of long documents for template models
(:class:`DocumentCutter`). Nothing here imports torch; the cutter loads only a tokenizer, when first used.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping

from ..families import ModelFamily
from ..template import DOCUMENT_HEAD, SUFFIX, format_query

__all__ = [
    "PIXIE_OWNER",
    "PIXIE_SERVER_HEADER",
    "REFUSALS",
    "TEMPLATE_NAME",
    "VLLM_ON_PIXIE",
    "DocumentCutter",
    "engine_family",
    "served_by_pixie",
]

TEMPLATE_NAME = re.compile(r"pixie|qwen3[-_]?reranker", re.IGNORECASE)
"""Served names of PIXIE-template models (to refuse them on TEI/Infinity when no family is given)."""


def engine_family(api: str, family: ModelFamily | str | None, model: str | None) -> ModelFamily:
    """The family the client formats for; a template family on TEI or Infinity is a ``ValueError``."""
    if family is not None:
        try:
            family = ModelFamily(family)
        except ValueError:
            raise ValueError(f"family must be one of {[f.value for f in ModelFamily]}, got {family!r}") from None
    if api in ("tei", "infinity"):
        looks_template = family is None and model is not None and TEMPLATE_NAME.search(model) is not None
        if (family is not None and family.uses_template) or looks_template:
            what = family.value if family is not None else f"the template model {model!r}"
            raise ValueError(REFUSALS[api].format(what=what))
        return ModelFamily.ENCODER
    if family is None:
        return ModelFamily.QWEN3_SEQ_CLS
    return family


REFUSALS = {
    "tei": (
        "text-embeddings-inference cannot score {what} as the model card does: TEI's /rerank does not serve Qwen3 "
        "sequence classifiers, and its truncation cuts the end of the pair, which is the template's suffix. Serve "
        "it with `pixie-rerank serve` (api='pixie'), Ray Serve (pixie_integrations.ray) or vLLM (api='vllm'); use "
        "TEI for encoder cross-encoders such as BAAI/bge-reranker-v2-m3."
    ),
    "infinity": (
        "Infinity cannot score {what} as the model card does: it strips leading and trailing whitespace from the "
        "query and every document, which deletes the newlines that end the template's suffix, so the score would "
        "be read at another token. Serve it with `pixie-rerank serve` (api='pixie'), Ray Serve "
        "(pixie_integrations.ray) or vLLM (api='vllm'); use Infinity for encoder cross-encoders such as "
        "BAAI/bge-reranker-v2-m3."
    ),
}


PIXIE_SERVER_HEADER = "X-Pixie-Server"
"""The header on every answer of this project's server (``pixie-integrations/<version>``)."""
PIXIE_OWNER = "pixie-integrations"
"""``owned_by`` of this project's server's ``/v1/models`` entries."""
VLLM_ON_PIXIE = (
    "{url} is a pixie-integrations server, which applies the model's template itself: api='vllm' would apply it "
    "twice and return wrong scores; use RemoteScorer({url!r}, api='pixie')"
)


def served_by_pixie(headers: Mapping[str, str]) -> bool:
    """Whether an answer's headers say it came from this project's server (``pixie-rerank serve``, Ray Serve)."""
    return headers.get(PIXIE_SERVER_HEADER, "").startswith(PIXIE_OWNER)


class DocumentCutter:
    """Cuts documents on the client so that text A + text B fits ``max_length`` tokens, as ``PixieScorer`` cuts.

    The local scorer keeps the first ``room`` tokens of ``"<Document>: " + document``; a server only takes text,
    so the document is cut at the character where token ``room`` starts (the tokenizer's offsets).
    """

    def __init__(self, tokenizer: str, max_length: int) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise ImportError("max_length on the client needs transformers (for the tokenizer only)") from exc
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if not self.tokenizer.is_fast:
            raise ValueError(f"cutting documents needs a fast tokenizer (with offsets); {tokenizer!r} has none")
        self.max_length = max_length
        self.lock = threading.Lock()  # a fast tokenizer is not safe to share between threads
        with self.lock:
            self.suffix = len(self.tokenizer(SUFFIX, add_special_tokens=False)["input_ids"])
            self.head = len(self.tokenizer(DOCUMENT_HEAD.rstrip(), add_special_tokens=False)["input_ids"])

    def cut(self, queries: list[str], documents: list[str], instruction: str) -> tuple[list[str], int]:
        with self.lock:
            unique = list(dict.fromkeys(queries))
            prefix_ids = self.tokenizer([format_query(q, instruction) for q in unique], add_special_tokens=False)
            prefix = dict(zip(unique, map(len, prefix_ids["input_ids"])))
            heads = [DOCUMENT_HEAD + d for d in documents]
            encoded = self.tokenizer(heads, add_special_tokens=False, return_offsets_mapping=True)
        out, truncated = [], 0
        for query, document, head, ids, offsets in zip(
            queries, documents, heads, encoded["input_ids"], encoded["offset_mapping"]
        ):
            room = self.max_length - prefix[query] - self.suffix
            if room < self.head:
                raise ValueError(
                    f"max_length={self.max_length} cannot hold the template and the query: they take "
                    f"{prefix[query] + self.suffix} tokens and the document marker {self.head}"
                )
            if len(ids) <= room:
                out.append(document)
                continue
            truncated += 1
            out.append(head[: offsets[room][0]][len(DOCUMENT_HEAD) :])
        return out, truncated
