"""Request and response bodies of the rerank server: the Cohere (v1, v2), Jina and vLLM shapes in one set of models.

Every field those clients send is accepted (``rank_fields``, ``max_tokens_per_doc``, ``max_chunks_per_doc``,
``truncate_prompt_tokens``, ``use_activation``, ``priority``, ``user``, ...), ``null`` included, and a field none of
them knows (a typo such as ``top_k``) is refused: a misspelt option must fail loudly rather than be ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

__all__ = [
    "ChunkSpanBody",
    "ErrorBody",
    "ErrorInfo",
    "PixieScoreRequest",
    "PixieScoreResponse",
    "RerankMeta",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "Usage",
    "VllmScoreData",
    "VllmScoreRequest",
    "VllmScoreResponse",
    "document_text",
]

_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]


def document_text(document: str | Mapping[str, Any], rank_fields: Sequence[str] | None) -> str:
    """The text scored for one document, the way Cohere's v1 API reads object documents.

    A string is scored as it is. An object is scored by its ``"text"`` field, or, with ``rank_fields``, by those of
    the fields it has, in that order, written as YAML (``title: ...`` lines: the form Cohere recommends for
    structured documents and langchain-cohere sends; non-ASCII text such as Korean is kept as it is).

    Raises:
        ValueError: The object has none of the fields to rank by, or its ``"text"`` is not a string.
    """
    if isinstance(document, str):
        return document
    if not rank_fields:
        if "text" not in document:
            raise ValueError("has no 'text' field (send rank_fields to rank objects by other fields)")
        if not isinstance(document["text"], str):
            raise ValueError("'text' must be a string")
        return document["text"]
    chosen = {name: document[name] for name in rank_fields if name in document}
    if not chosen:
        raise ValueError(f"has none of the rank_fields {list(rank_fields)}")
    # No line folding: YAML's default width would break long texts into other texts. libyaml's emitter writes the
    # same text as PyYAML's, about 30 times faster.
    return yaml.dump(chosen, Dumper=_YAML_DUMPER, sort_keys=False, allow_unicode=True, width=2**31 - 1)


# -- requests --------------------------------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(default=None, description="If given, must be one of the served names.")
    instruction: StrictStr | None = Field(default=None, description="Task instruction; null: the server's.")
    truncate_prompt_tokens: StrictInt | None = Field(
        default=None,
        description="vLLM: most tokens of one whole input (-1: the model's limit). Only document tokens are cut.",
    )
    use_activation: StrictBool | None = Field(
        default=None, description="vLLM: false returns logits instead of probabilities."
    )
    priority: StrictInt | None = Field(
        default=None, description="vLLM: lower runs first (default 0); an age bound keeps any request from starving."
    )
    user: StrictStr | None = Field(default=None, description="Accepted for compatibility (OpenAI/vLLM).")
    request_id: StrictStr | None = Field(default=None, description="vLLM: echoed as the response id.")


class _LongDocumentFields(BaseModel):
    """This server's own long-document fields (what ``RemoteScorer`` sends; docs/long_documents.md)."""

    long_documents: Literal["truncate", "chunk"] | None = Field(
        default=None, description="'chunk' scores long documents in chunks, the best kept; null: the server's default."
    )
    chunk_tokens: PositiveInt | None = Field(default=None, description="Document tokens per chunk.")
    chunk_overlap: NonNegativeInt | None = Field(default=None, description="Tokens a chunk repeats from the last.")
    max_chunks: PositiveInt | None = Field(default=None, description="Most chunks scored per document.")
    aggregate: Literal["max", "first", "mean"] | None = Field(default=None, description="How chunk scores combine.")
    chunk_boundary: Literal["token", "sentence"] | None = Field(default=None, description="Where chunks end.")

    def chunk_settings(self) -> dict[str, Any]:
        """The chunk settings this request gives (``None``: not given)."""
        return {
            "chunk_tokens": self.chunk_tokens,
            "chunk_overlap": self.chunk_overlap,
            "max_chunks": self.max_chunks,
            "aggregate": self.aggregate,
            "chunk_boundary": self.chunk_boundary,
        }


class RerankRequest(_Request, _LongDocumentFields):
    """Body of ``POST /rerank``, ``/v1/rerank`` and ``/v2/rerank`` (Cohere v1/v2, Jina and vLLM)."""

    query: StrictStr
    documents: list[StrictStr | dict[str, Any]] = Field(
        description="Texts, or objects scored by 'text' (or by rank_fields); [] gives []."
    )
    top_n: NonNegativeInt | None = Field(default=None, description="Keep the best top_n; 0 or null: all.")
    return_documents: StrictBool | None = Field(default=None, description="Echo each kept document.")
    rank_fields: list[StrictStr] | None = Field(
        default=None, description="Cohere v1: the object fields to score, in order ('field: value' lines)."
    )
    max_tokens_per_doc: PositiveInt | None = Field(
        default=None,
        description="Cohere v2: a document longer than this is scored in chunks of this many tokens, the best kept.",
    )
    max_chunks_per_doc: PositiveInt | None = Field(
        default=None, description="Cohere v1: long documents are scored in at most this many chunks, the best kept."
    )
    relevant_spans: Any = Field(default=None, description="Cohere v2: accepted; not computed.")

    @field_validator("documents", mode="before")
    @classmethod
    def _one_message_per_document(cls, value: Any) -> Any:
        # One clear message per bad item instead of pydantic's error per union member.
        if isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, (str, dict)):
                    # ValueError, not TypeError: pydantic turns only ValueError into a validation error.
                    raise ValueError(f"documents[{i}] must be a string or an object, not {_json_type(item)}")  # noqa: TRY004
        return value

    def texts(self) -> list[str]:
        """The text to score of each document, in order.

        Raises:
            ValueError: A document cannot be read (its index and why).
        """
        texts = []
        for i, document in enumerate(self.documents):
            try:
                texts.append(document_text(document, self.rank_fields))
            except ValueError as exc:
                raise ValueError(f"documents[{i}] {exc}") from None
        return texts


class PixieScoreRequest(_Request, _LongDocumentFields):
    """Body of ``POST /score`` in this server's own shape (what ``RemoteScorer`` sends)."""

    queries: StrictStr | list[StrictStr] = Field(
        description="One query for every document, or one query per document (pairwise)."
    )
    documents: list[StrictStr]
    raw: StrictBool = Field(default=False, description="Return logits instead of probabilities.")

    @field_validator("queries", mode="before")
    @classmethod
    def _one_message_for_queries(cls, value: Any) -> Any:
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(q, str) for q in value)):
            return value
        got = "a list with a non-string" if isinstance(value, list) else _json_type(value)
        raise ValueError(f"queries must be a string or a list of strings, not {got}")


class VllmScoreRequest(_Request):
    """Body of ``POST /score`` and ``/v1/score`` in vLLM's shape: 1:1, 1:N or N:N (query, document) texts."""

    text_1: StrictStr | list[StrictStr] = Field(description="The query, or one query per document.")
    text_2: StrictStr | list[StrictStr] = Field(description="The document(s).")
    encoding_format: Literal["float"] | None = Field(default=None, description="vLLM: only 'float'.")


# -- responses -------------------------------------------------------------------------------------------------------
class Usage(BaseModel):
    """Token counts (template included, after truncation), as vLLM and Jina report them, and what was cut."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    pairs: int
    """(query, document) pairs scored."""
    truncated_documents: int
    """Documents longer than the room left by the length limit, whose ends were cut (the template never is)."""


class ChunkSpanBody(BaseModel):
    """Which chunk of a document decided its score, and where it lies (character offsets into the scored text)."""

    index: int
    start: int
    end: int
    chunks: int
    chunks_dropped: int


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None
    pixie_chunk: ChunkSpanBody | None = None
    """With chunking: the winning chunk's span."""


class RerankMeta(BaseModel):
    """Cohere's ``meta``: billed units, tokens and warnings (e.g. how many documents were truncated)."""

    billed_units: dict[str, int]
    tokens: dict[str, int]
    warnings: list[str] | None = None


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage
    meta: RerankMeta


class PixieScoreResponse(BaseModel):
    id: str
    model: str
    scores: list[float]
    usage: Usage
    chunks: list[ChunkSpanBody] | None = None
    """With chunking: each document's winning chunk, in input order."""


class VllmScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class VllmScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[VllmScoreData]
    usage: Usage


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorBody(BaseModel):
    """Every error: OpenAI's ``{"error": {...}}`` (vLLM, OpenAI-style clients) and ``detail`` (Jina, FastAPI)."""

    error: ErrorInfo
    detail: str


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)
