"""Packed batches: one sequence per batch, attention per pair; the same scores as padded batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pixie_integrations import PixieScorer
from pixie_integrations import packing as packing_module
from pixie_integrations.cpu import cpu_defaults
from pixie_integrations.packing import PACKED_ATTENTION, fast_kernel, pack, pack_with_prefix, varlen_causal
from pixie_integrations.segment_attention import segment_attention
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

# Lengths from a few tokens to a few hundred, Korean and English, so batches mix very different rows.
DOCS = [*SAMPLE_DOCUMENTS, "x", "정밀 위성 영상 분석 " * 40, "satellite " * 90]
PAIRS = [(q, d) for q in SAMPLE_QUERIES for d in DOCS]


def _scorer(path: Path, **kwargs: object) -> PixieScorer:
    # Each setting gets its own copy of the weights (a distinct config), so no test changes the shared model.
    return PixieScorer(str(path), device="cpu", dtype="float32", config_kwargs={"test_pack": repr(kwargs)}, **kwargs)  # type: ignore[arg-type]


def test_pack_lays_pairs_end_to_end_with_positions_restarting() -> None:
    packed = pack([[5, 6, 7], [8], [9, 10]])
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert packed.cu_seq_lens_q.tolist() == [0, 3, 4, 6] and packed.cu_seq_lens_q.dtype == torch.int32
    assert packed.cu_seq_lens_k is packed.cu_seq_lens_q and packed.kv_index is None
    assert packed.last.tolist() == [2, 3, 5] and packed.max_length_q == packed.max_length_k == 3
    with pytest.raises(ValueError, match="empty"):
        pack([])
    with pytest.raises(ValueError, match="empty row"):
        pack([[1], []])
    after_prefix = pack([[5, 6], [7]], first_position=4)  # documents after a cached prefix of 4 tokens
    assert after_prefix.position_ids.tolist() == [[4, 5, 4]] and after_prefix.last.tolist() == [1, 2]


def test_varlen_attention_equals_attention_of_each_sequence_alone() -> None:
    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [5, 1, 9], 4, 2, 8
    q = torch.randn(sum(lengths), heads, dim)
    k, v = torch.randn(2, sum(lengths), kv_heads, dim)
    cu = torch.tensor([0, 5, 6, 15], dtype=torch.int32)
    out = varlen_causal(q, k, v, cu, cu, max(lengths), max(lengths), None)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[start:end].transpose(0, 1),
            k[start:end].transpose(0, 1).repeat_interleave(2, 0),
            v[start:end].transpose(0, 1).repeat_interleave(2, 0),
            is_causal=True,
        )
        assert torch.allclose(out[start:end], alone.transpose(0, 1), atol=1e-6)
    # More keys than queries: the queries are each sequence's last tokens (a cached prefix before them).
    tail = varlen_causal(q[4:5], k[:5], v[:5], torch.tensor([0, 1]), torch.tensor([0, 5]), 1, 5, None)
    assert torch.allclose(tail, out[4:5], atol=1e-6)


def test_packed_scores_equal_padded_scores(tiny_reranker: Path) -> None:
    padded = _scorer(tiny_reranker, pack=False, reuse_prefix=False)
    packed = _scorer(tiny_reranker, pack=True, reuse_prefix=False)
    assert packed.pack and not padded.pack
    assert packed.model.config._attn_implementation == PACKED_ATTENTION
    expected = padded.score_pairs(PAIRS)
    assert packed.score_pairs(PAIRS) == pytest.approx(expected, abs=1e-5)
    assert packed.score_pairs(PAIRS, raw=True) == pytest.approx(padded.score_pairs(PAIRS, raw=True), abs=1e-5)
    # Many small batches, one pair per batch, a single pair: the layout holds at every size.
    packed.token_budget = 256
    assert packed.score_pairs(PAIRS) == pytest.approx(expected, abs=1e-5)
    packed.batch_size = 1
    assert packed.score_pairs(PAIRS[:3]) == pytest.approx(expected[:3], abs=1e-5)
    assert packed.score(PAIRS[0][0], [PAIRS[0][1]]) == pytest.approx(expected[:1], abs=1e-5)


def test_packed_prefix_runs_once_per_batch_with_the_same_scores(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    prefix = (1, 2, 3)
    packed = pack_with_prefix(prefix, [[4, 5], [6], [7, 8, 9]])
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 3, 4, 5]]  # each document continues the prefix
    assert packed.cu_seq_lens_q.tolist() == [0, 3, 5, 6, 9] and packed.cu_seq_lens_k.tolist() == [0, 3, 8, 12, 18]
    assert packed.kv_index is not None and packed.kv_index.tolist()[3:8] == [0, 1, 2, 3, 4]
    assert packed.last.tolist() == [4, 5, 8]  # the documents' last tokens; the prefix segment is not scored

    # The layout CUDA runs (a scorer on a CPU reads a cached prefix instead, below): the runner on one query's pairs.
    scorer = _scorer(tiny_reranker, pack=True, reuse_prefix=True)
    query = SAMPLE_QUERIES[1]
    encoded, _ = scorer._encoder.encode([(query, d) for d in DOCS], scorer.instruction)
    logits = scorer._runner(encoded, share_prefix=True)
    assert torch.sigmoid(logits).tolist() == pytest.approx(tiny_scorer.score(query, DOCS), abs=1e-5)


def test_packed_batches_on_a_cpu_read_the_cached_prefix_once_per_query(
    tiny_reranker: Path, tiny_scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = _scorer(tiny_reranker, pack=True, reuse_prefix=True)
    assert scorer.pack and scorer.reuse_prefix and not scorer._runner.prefix_in_batch
    prefixes: list[int] = []
    encode_prefix = scorer._runner.encode_prefix
    monkeypatch.setattr(scorer._runner, "encode_prefix", lambda p: prefixes.append(len(p)) or encode_prefix(p))
    expected = tiny_scorer.score_pairs(PAIRS)
    scorer.token_budget = 128  # a query's documents over several batches, all reading one cached prefix
    assert scorer.score_pairs(PAIRS) == pytest.approx(expected, abs=1e-5)
    assert len(prefixes) == len(SAMPLE_QUERIES)
    assert len(scorer._plan(scorer._encoder.encode(PAIRS, scorer.instruction)[0])) > 2 * len(SAMPLE_QUERIES)
    scorer.token_budget = 4096
    assert scorer.score_pairs(PAIRS, raw=True) == pytest.approx(tiny_scorer.score_pairs(PAIRS, raw=True), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_attention_equals_sdpa_per_segment(dtype: torch.dtype) -> None:
    # Segments shorter and longer than a block of queries (64 or 128 rows), with and without a cached prefix.
    torch.manual_seed(0)
    lengths, heads, kv_heads, dim, n_prefix = [1, 70, 300, 600], 4, 2, 16, 7
    total = sum(lengths)
    q = torch.randn(heads, total, dim, dtype=dtype)
    k, v = torch.randn(2, kv_heads, total, dim, dtype=dtype)
    prefix_k, prefix_v = torch.randn(2, kv_heads, n_prefix, dim, dtype=dtype)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    plain = segment_attention(q, k, v, cu, cu, 0.3)
    with_prefix = segment_attention(q, k, v, cu, cu, 0.3, prefix_k, prefix_v)
    tolerance = 1e-5 if dtype is torch.float32 else 2e-2
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        n = end - start
        for out, keys, values in (
            (plain, k[:, start:end], v[:, start:end]),
            (with_prefix, torch.cat([prefix_k, k[:, start:end]], 1), torch.cat([prefix_v, v[:, start:end]], 1)),
        ):
            mask = torch.ones(n, keys.shape[1], dtype=torch.bool).tril(keys.shape[1] - n)
            expected = torch.nn.functional.scaled_dot_product_attention(
                q[:, start:end].float(),
                keys.repeat_interleave(2, 0).float(),
                values.repeat_interleave(2, 0).float(),
                attn_mask=mask,
                scale=0.3,
            )
            assert out.dtype == dtype and out.shape == (total, heads, dim)
            assert (out[start:end].float() - expected.transpose(0, 1)).abs().max() < tolerance


def _tiny_qwen2_reranker(path: Path) -> Path:
    """A tiny Qwen2 seq-cls checkpoint: the same template family, no per-head norms, biased projections."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from pixie_integrations.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(path)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
        architectures=["Qwen2ForSequenceClassification"],
    )
    torch.manual_seed(5)
    Qwen2ForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("model_type", ["qwen3", "qwen2"])
def test_the_last_layer_runs_for_the_scored_tokens_only(model_type: str, tiny_reranker: Path, tmp_path: Path) -> None:
    path = tiny_reranker if model_type == "qwen3" else _tiny_qwen2_reranker(tmp_path)
    padded = _scorer(path, pack=False, reuse_prefix=False)
    expected = padded.score_pairs(PAIRS)
    for reuse_prefix in (False, True):  # plain packed batches, and documents reading a cached prefix
        scorer = _scorer(path, pack=True, reuse_prefix=reuse_prefix)
        assert scorer._runner._scored_only
        rows: list[int] = []
        backbone = getattr(scorer.model, scorer.model.base_model_prefix)
        hook = backbone.layers[-1].mlp.register_forward_hook(
            lambda _m, args, _o, rows=rows: rows.append(args[0].shape[1])
        )
        try:
            assert scorer.score_pairs(PAIRS) == pytest.approx(expected, abs=1e-5)
        finally:
            hook.remove()
        # The last layer's MLP saw one token per pair (and, with a cached prefix, each query's prefix once).
        prefixes = [scorer._encoder.encode([(q, "d")], scorer.instruction)[0][0].prefix for q in SAMPLE_QUERIES]
        assert sum(rows) == len(PAIRS) + (sum(map(len, prefixes)) if reuse_prefix else 0)
    # The prefix as a segment of the batch (its keys repeated per document; no scored token of its own).
    query = SAMPLE_QUERIES[1]
    encoded, _ = scorer._encoder.encode([(query, d) for d in DOCS], scorer.instruction)
    logits = scorer._runner(encoded, share_prefix=True)
    assert torch.sigmoid(logits).tolist() == pytest.approx(padded.score(query, DOCS), abs=1e-5)
    # Compiled, the last layer stays whole (one graph for every layer).
    assert not _scorer(path, pack=True, compile=True)._runner._scored_only


def test_the_last_layer_called_another_way_runs_whole_and_selects(tiny_reranker: Path) -> None:
    from pixie_integrations.last_layer import SCORED_TOKENS

    scorer = _scorer(tiny_reranker, pack=True)
    assert scorer._runner._scored_only
    backbone = getattr(scorer.model, scorer.model.base_model_prefix)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.inference_mode():
        whole = backbone(input_ids=ids).last_hidden_state
        # No packed layout (plain SDPA call): the shortcut cannot apply, the layer runs whole and the rows are picked.
        picked = backbone(input_ids=ids, **{SCORED_TOKENS: torch.tensor([1, 4])}).last_hidden_state
    assert torch.equal(picked, whole[:, [1, 4]])


def test_a_packing_model_keeps_its_unpacked_paths(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    # Scorers sharing one model: the packing one switches its attention; the padded one still runs its KV-cache
    # prefix path (SDPA with its mask) through it, and the engine's batches too.
    settings = {"device": "cpu", "dtype": "float32", "config_kwargs": {"test_pack": "shared"}}
    packing = PixieScorer(str(tiny_reranker), pack=True, **settings)  # type: ignore[arg-type]
    padded = PixieScorer(str(tiny_reranker), pack=False, reuse_prefix=True, **settings)  # type: ignore[arg-type]
    assert padded.model is packing.model and padded.model.config._attn_implementation == PACKED_ATTENTION
    expected = tiny_scorer.score_pairs(PAIRS)
    assert padded.score_pairs(PAIRS) == pytest.approx(expected, abs=1e-5)
    packing.reuse_prefix = True
    query = SAMPLE_QUERIES[0]
    assert asyncio.run(packing.ascore(query, DOCS)) == pytest.approx(tiny_scorer.score(query, DOCS), abs=1e-5)


def test_packing_defaults_on_a_cpu(tiny_reranker: Path, tiny_encoder: Path) -> None:
    assert fast_kernel(torch.device("cpu"), torch.bfloat16) is None  # the CUDA kernels only
    assert fast_kernel(torch.device("cpu"), torch.float32) is None
    assert cpu_defaults().pack
    assert _scorer(tiny_reranker).pack is True  # per CPU class: blocked-matmul attention, no padding
    compiled = _scorer(tiny_reranker, compile=True)  # compiled: packed too, the prefix as a segment of each batch
    assert compiled.pack and compiled.reuse_prefix and compiled._runner.prefix_in_batch
    # Encoders are bidirectional: never packed, scores untouched.
    encoder = PixieScorer(str(tiny_encoder), device="cpu", dtype="float32", pack=True)
    assert encoder.pack is False
    assert encoder.score("q", ["a", "b"]) == pytest.approx(
        PixieScorer(str(tiny_encoder), device="cpu", dtype="float32").score("q", ["a", "b"]), abs=1e-6
    )


def test_packing_needs_sdpa(tiny_reranker: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pixie_integrations.runner"):
        scorer = _scorer(tiny_reranker, pack=True, attn_implementation="eager", reuse_prefix=False)
    assert scorer.pack is False
    assert "packed batches need SDPA" in caplog.text and "'eager'" in caplog.text
    assert scorer.model.config._attn_implementation == "eager"
    assert scorer.score_pairs(PAIRS[:4]) == pytest.approx(
        _scorer(tiny_reranker, pack=False).score_pairs(PAIRS[:4]), abs=1e-5
    )


def test_a_first_packed_failure_falls_back_to_padding_once(
    tiny_reranker: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _scorer(tiny_reranker, pack=False, reuse_prefix=False).score_pairs(PAIRS)
    real = packing_module.varlen_causal

    def missing_kernel(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no kernel image is available for execution on the device")

    # A kernel that fails on the first batch (an old GPU, a changed signature): padded batches, logged, same scores.
    monkeypatch.setattr(packing_module, "varlen_causal", missing_kernel)
    scorer = _scorer(tiny_reranker, pack=True, reuse_prefix=False)
    with caplog.at_level(logging.WARNING, logger="pixie_integrations.runner"):
        assert scorer.score_pairs(PAIRS) == pytest.approx(expected, abs=1e-5)
    assert scorer.pack is False
    assert "Packed batches failed on this setup (RuntimeError: no kernel image" in caplog.text

    # Once packed batches have run, a failure is a real error: it propagates.
    monkeypatch.setattr(packing_module, "varlen_causal", real)
    trusted = _scorer(tiny_reranker, pack=True, reuse_prefix=False, token_budget=512)
    trusted.score_pairs(PAIRS[:2])
    monkeypatch.setattr(packing_module, "varlen_causal", missing_kernel)
    with pytest.raises(RuntimeError, match="no kernel image"):
        trusted.score_pairs(PAIRS)
    assert trusted.pack is True


@pytest.mark.slow
def test_compiled_packed_model_compiles_once_for_every_batch(
    tiny_reranker: Path,
    tiny_scorer: PixieScorer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    expected = tiny_scorer.score_pairs(PAIRS)
    torch._dynamo.utils.counters.clear()
    with caplog.at_level(logging.INFO, logger="pixie_integrations.runner"):
        scorer = _scorer(tiny_reranker, pack=True, compile=True, token_budget=512, reuse_prefix=False)
        assert scorer.pack
        first = scorer.score_pairs(PAIRS)  # several batches of different sizes and widths
        scorer.token_budget = 2048
        again = scorer.score_pairs(PAIRS)
        scorer.reuse_prefix = True  # the shared-prefix layout: one more graph, for all of its batches
        shared = scorer.score_pairs(PAIRS)
        scorer.token_budget = 256
        shared_again = scorer.score_pairs(PAIRS)
    for got in (first, again, shared, shared_again):
        assert got == pytest.approx(expected, abs=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2, dict(torch._dynamo.utils.counters["stats"])
    compiling = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling for")]
    assert compiling == [
        "Compiling for packed batches (dynamic shapes) (graph 1 of this model)...",
        "Compiling for packed batches with a shared prefix (dynamic shapes) (graph 2 of this model)...",
    ]


@pytest.mark.slow
def test_example_runs_offline_with_tiny_model(run_example: Callable[..., Any]) -> None:
    result = run_example("packed_batches.py", "--tiny", "--device", "cpu", timeout=300)
    assert "pack=True" in result.stdout and "for 100 documents" in result.stdout
    difference = float(result.stdout.split("largest score difference: ")[1].split()[0])
    assert difference <= 2e-2  # bf16 on both sides, summed in different orders


@pytest.mark.slow
def test_a_compiler_that_fails_falls_back_to_the_uncompiled_model(
    tiny_reranker: Path,
    tiny_scorer: PixieScorer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import torch._inductor.config as inductor_config
    from torch._inductor.codecache import PyCodeCache

    # A machine without a working C++ compiler (Inductor's CPU backend needs one), and nothing cached to fall on:
    # neither on disk nor in this process (kernels compiled by earlier tests).
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    PyCodeCache.cache_clear()
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    scorer = _scorer(tiny_reranker, pack=True, compile=True, reuse_prefix=False)
    with caplog.at_level(logging.WARNING, logger="pixie_integrations.runner"):
        assert scorer.score_pairs(PAIRS) == pytest.approx(tiny_scorer.score_pairs(PAIRS), abs=1e-5)
    assert "torch.compile failed on this setup" in caplog.text
    assert scorer.pack  # packing itself worked: only compilation fell back
