"""Long documents in the core: chunking (where chunks are cut, what each chunk input is) and aggregation."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import pytest
import torch

from pixie_integrations import ChunkSpan, LongDocuments, PixieScorer
from pixie_integrations.chunking import plan_windows, resolve_long_documents
from pixie_integrations.template import SUFFIX

QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
# Rare syllables (뷁, 똠) are split into byte tokens by the tiny vocabulary: chunk cuts must not land inside them.
SENTENCES = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석합니다.",
    "The quick brown fox jumps over the lazy dog!",
    "뷁똠 둘째 문장입니다?",
    "Satellite imagery supports agriculture, ocean monitoring and defence.",
]
LONG = " ".join(SENTENCES * 5)
DOCUMENTS = [LONG, "short document", LONG[:150], "\n".join(SENTENCES * 3)]


def _logits_of_chunks(scorer: PixieScorer, settings: LongDocuments, docs: list[str]) -> tuple[torch.Tensor, list]:
    encoded, plan, _ = scorer.encoder.encode_chunked([(QUERY, d) for d in docs], scorer.instruction, settings)
    return scorer.pipeline.run(encoded), plan


@pytest.mark.parametrize("family", ["template", "encoder"])
def test_a_chunk_as_long_as_the_document_gives_the_whole_document_score(
    family: str, tiny_scorer: PixieScorer, tiny_encoder: Path
) -> None:
    scorer = tiny_scorer if family == "template" else PixieScorer(str(tiny_encoder), device="cpu", dtype="float32")
    whole = scorer.score(QUERY, DOCUMENTS)
    assert scorer.score(QUERY, DOCUMENTS, long_documents="chunk", chunk_tokens=100_000) == whole
    # The default chunk is all that fits in max_length: the same, for documents that fit.
    assert scorer.score(QUERY, DOCUMENTS, long_documents="chunk") == whole
    pairs = [(QUERY, d) for d in DOCUMENTS]
    assert scorer.score_pairs(pairs, long_documents=LongDocuments("chunk", chunk_tokens=100_000)) == whole
    ranked = scorer.rank(QUERY, DOCUMENTS, long_documents="chunk", chunk_tokens=100_000)
    assert [r.score for r in sorted(ranked, key=lambda r: r.index)] == whole
    assert all(r.chunk == ChunkSpan(0, 0, len(DOCUMENTS[r.index]), 1) for r in ranked)


def test_each_chunk_is_a_whole_template_input_sharing_the_query_prefix(tiny_scorer: PixieScorer) -> None:
    settings = LongDocuments("chunk", chunk_tokens=24, chunk_overlap=6)
    encoded, plan, truncated = tiny_scorer.encoder.encode_chunked([(QUERY, LONG)], tiny_scorer.instruction, settings)
    assert truncated == 0 and plan.chunks == len(encoded) > 5
    whole, _ = tiny_scorer.encoder.encode([(QUERY, LONG)], tiny_scorer.instruction)
    suffix = tiny_scorer.tokenizer(SUFFIX, add_special_tokens=False)["input_ids"]
    head = tiny_scorer.tokenizer("<Document>:", add_special_tokens=False)["input_ids"]
    body = list(whole[0].rest[len(head) : -len(suffix)])
    start, end = 0, 0  # the previous window's place in the document's tokens
    for number, pair in enumerate(encoded):
        assert pair.prefix == whole[0].prefix  # one prefix per query: reused, packed with the rest
        assert list(pair.rest[: len(head)]) == head and list(pair.rest[-len(suffix) :]) == suffix
        window = list(pair.rest[len(head) : -len(suffix)])
        assert 0 < len(window) <= 24
        # Each window continues the one before: it starts inside its last 6 tokens (the overlap; up to 3 more when
        # the 6th token back is inside a character) or right after.
        candidates = [0] if number == 0 else range(max(start + 1, end - 9), end + 1)
        start = next(a for a in candidates if body[a : a + len(window)] == window)
        end = start + len(window)
    assert end == len(body)  # the last window reaches the document's end


def test_chunks_end_on_boundaries_that_decode_cleanly(tiny_scorer: PixieScorer) -> None:
    text = "뷁똠" * 40 + " 끝"
    for boundary in ("token", "sentence"):
        settings = LongDocuments("chunk", chunk_tokens=5, chunk_boundary=boundary)
        encoded, plan, _ = tiny_scorer.encoder.encode_chunked([(QUERY, text)], tiny_scorer.instruction, settings)
        assert plan.chunks > 10
        for pair, (start, end) in zip(encoded, plan.spans):
            decoded = tiny_scorer.tokenizer.decode(list(pair.rest))
            assert "\ufffd" not in decoded  # no character cut in half
            assert text[start:end] in decoded


def test_sentence_boundaries_end_chunks_after_a_sentence(tiny_scorer: PixieScorer) -> None:
    settings = LongDocuments("chunk", chunk_tokens=48, chunk_boundary="sentence")
    _, plan, _ = tiny_scorer.encoder.encode_chunked([(QUERY, LONG)], tiny_scorer.instruction, settings)
    assert plan.chunks > 3
    for start, end in plan.spans[:-1]:
        assert LONG[start:end].rstrip()[-1] in ".!?", LONG[start:end]
    token = LongDocuments("chunk", chunk_tokens=48)
    _, token_plan, _ = tiny_scorer.encoder.encode_chunked([(QUERY, LONG)], tiny_scorer.instruction, token)
    assert any(LONG[s:e].rstrip()[-1] not in ".!?" for s, e in token_plan.spans[:-1])  # the test can tell


def test_plan_windows_prefers_word_starts_and_covers_every_token() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"
    words = text.split(" ")
    offsets, at = [], 0
    for word in words:  # two tokens per word: "al", "pha" / " be", "ta" ...
        start = text.index(word, at)
        space = start - 1 if start else start
        mid = start + 2
        offsets += [(space, mid), (mid, start + len(word))]
        at = start + len(word)
    windows = plan_windows(text, offsets, window=5, overlap=1)
    assert windows[0][0] == 0 and windows[-1][1] == len(offsets)
    for (_, b), (c, _) in itertools.pairwise(windows):
        assert b % 2 == 0  # ends before a word, never inside one
        assert b - 1 <= c < b
    assert plan_windows(text, offsets, window=100, overlap=0) == [(0, len(offsets))]


def test_aggregates_are_the_max_first_and_mean_of_the_chunk_logits(tiny_scorer: PixieScorer) -> None:
    settings = LongDocuments("chunk", chunk_tokens=32)
    logits, plan = _logits_of_chunks(tiny_scorer, settings, DOCUMENTS)
    per_doc = [logits[[i for i, o in enumerate(plan.owners) if o == d]] for d in range(len(DOCUMENTS))]
    expected = {
        "max": [p.max() for p in per_doc],
        "first": [p[0] for p in per_doc],
        "mean": [p.mean() for p in per_doc],
    }
    for aggregate, values in expected.items():
        raw = tiny_scorer.score(
            QUERY, DOCUMENTS, raw=True, long_documents="chunk", chunk_tokens=32, aggregate=aggregate
        )
        assert raw == pytest.approx([float(v) for v in values], abs=1e-6)
        probs = tiny_scorer.score(QUERY, DOCUMENTS, long_documents="chunk", chunk_tokens=32, aggregate=aggregate)
        assert probs == pytest.approx([float(torch.sigmoid(v)) for v in values], abs=1e-6)
    # "first" is the document cut to its first chunk: the truncating path with that cap gives the same number.
    first_window = (
        next(
            len(p.rest)
            for p in tiny_scorer.encoder.encode_chunked([(QUERY, LONG)], tiny_scorer.instruction, settings)[0]
        )
        - 2
        - len(tiny_scorer.tokenizer(SUFFIX)["input_ids"])
    )
    capped = tiny_scorer.score(QUERY, [LONG], max_doc_tokens=first_window)
    first = tiny_scorer.score(QUERY, [LONG], long_documents="chunk", chunk_tokens=32, aggregate="first")
    assert first == pytest.approx(capped, abs=1e-6)


def test_rank_says_which_chunk_won_and_where(tiny_scorer: PixieScorer) -> None:
    settings = LongDocuments("chunk", chunk_tokens=32, chunk_overlap=4)
    logits, plan = _logits_of_chunks(tiny_scorer, settings, DOCUMENTS)
    ranked = tiny_scorer.rank(QUERY, DOCUMENTS, top_n=3, long_documents=settings)
    assert len(ranked) == 3 and [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    for result in ranked:
        rows = [i for i, o in enumerate(plan.owners) if o == result.index]
        best = int(logits[rows].argmax())
        assert result.chunk is not None
        assert result.chunk.index == best and result.chunk.chunks == len(rows)
        assert (result.chunk.start, result.chunk.end) == plan.spans[rows[best]]
        assert result.document[result.chunk.start : result.chunk.end] in result.document
    assert tiny_scorer.rank(QUERY, DOCUMENTS)[0].chunk is None  # truncating: no chunk to name


def test_chunks_beyond_max_chunks_are_counted_and_logged_once(
    tiny_scorer: PixieScorer, caplog: pytest.LogCaptureFixture
) -> None:
    unlimited = tiny_scorer.rank(QUERY, DOCUMENTS, long_documents="chunk", chunk_tokens=32)
    total = {r.index: r.chunk.chunks for r in unlimited if r.chunk is not None}
    with caplog.at_level(logging.WARNING, logger="pixie_integrations"):
        ranked = tiny_scorer.rank(QUERY, DOCUMENTS, long_documents="chunk", chunk_tokens=32, max_chunks=2)
    for result in ranked:
        assert result.chunk is not None and result.chunk.chunks == min(2, total[result.index])
        assert result.chunk.chunks_dropped == max(0, total[result.index] - 2)
    cut = [r for r in ranked if r.chunk is not None and r.chunk.chunks_dropped]
    records = [r for r in caplog.records if "max_chunks" in r.getMessage()]
    assert len(records) == 1 and f"{len(cut)} of {len(DOCUMENTS)} documents" in records[0].getMessage()


def test_chunks_of_different_documents_share_forward_passes(tiny_scorer: PixieScorer) -> None:
    settings = LongDocuments("chunk", chunk_tokens=32)
    encoded, plan, _ = tiny_scorer.encoder.encode_chunked(
        [(QUERY, d) for d in DOCUMENTS], tiny_scorer.instruction, settings
    )
    batches = tiny_scorer.pipeline.plan(encoded)
    assert sum(len(batch) for batch, _ in batches) == plan.chunks
    assert any(len({plan.owners[i] for i in batch}) > 1 for batch, _ in batches)
    assert all(shared for _, shared in batches)  # one query: its prefix runs once per batch (CPU default)


def test_async_and_engine_give_the_synchronous_chunked_scores(tiny_scorer: PixieScorer) -> None:
    settings = LongDocuments("chunk", chunk_tokens=32, chunk_overlap=4, aggregate="mean", chunk_boundary="sentence")
    sync = tiny_scorer.rank(QUERY, DOCUMENTS, long_documents=settings)

    async def both() -> tuple[list, list[float]]:
        return await asyncio.gather(
            tiny_scorer.arank(QUERY, DOCUMENTS, long_documents=settings),
            tiny_scorer.ascore(QUERY, DOCUMENTS),  # an unchunked request sharing the engine meanwhile
        )

    ranked, plain = asyncio.run(both())
    assert [(r.index, r.chunk) for r in ranked] == [(r.index, r.chunk) for r in sync]
    assert [r.score for r in ranked] == pytest.approx([r.score for r in sync], abs=1e-6)
    assert plain == pytest.approx(tiny_scorer.score(QUERY, DOCUMENTS), abs=1e-6)


def test_max_doc_tokens_cuts_the_document_before_it_is_chunked(tiny_scorer: PixieScorer) -> None:
    ranked = tiny_scorer.rank(QUERY, [LONG], long_documents="chunk", chunk_tokens=16, max_doc_tokens=40)
    assert ranked[0].chunk is not None and ranked[0].chunk.chunks == 3  # 40 tokens in windows of at most 16
    assert ranked[0].chunk.end < len(LONG)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"long_documents": "split"}, ValueError, "long_documents must be one of"),
        ({"long_documents": 3}, TypeError, "long_documents must be"),
        ({"long_documents": "chunk", "aggregate": "median"}, ValueError, "aggregate must be one of"),
        ({"long_documents": "chunk", "chunk_boundary": "page"}, ValueError, "chunk_boundary must be one of"),
        ({"long_documents": "chunk", "chunk_tokens": 2}, ValueError, "chunk_tokens must be an int of at least 4"),
        ({"long_documents": "chunk", "chunk_tokens": 8, "chunk_overlap": 8}, ValueError, "less than chunk_tokens"),
        ({"long_documents": "chunk", "max_chunks": 0}, ValueError, "max_chunks must be"),
        ({"long_documents": "truncate", "chunk_tokens": 64}, ValueError, "only apply with long_documents='chunk'"),
    ],
)
def test_bad_settings_are_clear_errors_before_any_scoring(
    tiny_scorer: PixieScorer, kwargs: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        tiny_scorer.score(QUERY, DOCUMENTS, **kwargs)
    with pytest.raises(error, match=match):
        asyncio.run(tiny_scorer.ascore(QUERY, DOCUMENTS, **kwargs))


def test_an_overlap_too_large_for_the_room_is_a_clear_error(tiny_reranker: Path) -> None:
    scorer = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32", max_length=160)
    with pytest.raises(ValueError, match="chunk_overlap=200 must be less than the chunk's"):
        scorer.score(QUERY, [LONG], long_documents="chunk", chunk_overlap=200)


def test_settings_round_trip_and_resolve() -> None:
    settings = LongDocuments("chunk", chunk_tokens=512, chunk_overlap=64, max_chunks=8, aggregate="mean")
    assert LongDocuments.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="unknown long-document settings: size"):
        LongDocuments.from_dict({"size": 3})
    assert resolve_long_documents(None) == LongDocuments()
    assert resolve_long_documents(None, default=settings) == settings
    assert resolve_long_documents("chunk", default=settings, chunk_tokens=256).chunk_tokens == 256
    assert resolve_long_documents("truncate", default=settings).strategy == "truncate"
    assert resolve_long_documents(settings, aggregate="max").aggregate == "max"


def test_the_example_runs_offline(run_example) -> None:
    out = run_example("long_documents.py", "--tiny").stdout
    rows = [line for line in out.splitlines() if " of " in line and "characters" in line]
    assert len(rows) == 3, out  # one row per document, each naming its winning chunk
