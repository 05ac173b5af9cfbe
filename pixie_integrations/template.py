"""The PIXIE / Qwen3-Reranker prompt template: the one place it is written down.

The strings are the model card's ``format_queries`` / ``format_document``, character for character. Text A (the
query part) and text B (the document part) are kept apart because sentence-transformers' ``CrossEncoder`` tokenizes
them as a pair, and because truncation may only ever cut the document inside text B.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_INSTRUCTION",
    "DOCUMENT_HEAD",
    "PREFIX",
    "SUFFIX",
    "SYSTEM_PROMPT",
    "format_document",
    "format_query",
]

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
PREFIX = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DOCUMENT_HEAD = "<Document>: "
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def format_query(query: str, instruction: str | None = None) -> str:
    """Text A of the pair: system prompt, instruction and query (the card's ``format_queries``)."""
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    return f"{PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n"


def format_document(document: str) -> str:
    """Text B of the pair: the document and the assistant-turn suffix (the card's ``format_document``)."""
    return f"{DOCUMENT_HEAD}{document}{SUFFIX}"
