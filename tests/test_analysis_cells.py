"""Trace, cell search and gate saturation (rnnlab.analysis) on planted and random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from analysis_models import planted_lstm, planted_text

from rnnlab.analysis import analyze, iter_trace, trace_text
from rnnlab.analysis.cellsearch import CellSearch
from rnnlab.analysis.features import bracket_depth, in_quote
from rnnlab.analysis.saturation import SaturationCounter
from rnnlab.cells import CELLS
from rnnlab.models import CharLM, CharLMConfig


@pytest.fixture(scope="module")
def planted():
    model, vocab = planted_lstm()
    text = planted_text(3000, seed=1)
    return model, vocab, text, vocab.encode(text)


def test_planted_counter_is_exact(planted):
    model, _, text, ids = planted
    tr = trace_text(model, ids, chunk_len=97)
    np.testing.assert_array_equal(tr.values["L0.c"][:, 0], bracket_depth(text))


def test_planted_units_rank_first(planted):
    model, _, text, ids = planted
    result = analyze(model, ids, text, ["bracket_depth", "in_quote", "vowel"], chunk_len=128)
    depth = result.cells.features["bracket_depth"].top
    assert depth[0].unit == "L0.c.0"  # the raw count: correlation 1
    assert depth[0].corr == pytest.approx(1.0, abs=1e-6)
    assert {s.unit for s in depth[:2]} == {"L0.c.0", "L0.h.0"}
    quote = result.cells.features["in_quote"].top
    assert {s.unit for s in quote[:2]} == {"L0.c.1", "L0.h.1"}
    assert quote[0].corr > 0.9
    assert quote[0].accuracy > 0.95  # held-out threshold classifier
    # nothing else comes close
    assert max(abs(s.corr) for s in depth[2:]) < 0.8
    assert max(abs(s.corr) for s in quote[2:]) < 0.8
    assert result.cells.features["vowel"].binary


def test_trace_loss_matches_forward_with_state_carried():
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(7, "gru", hidden_size=8, num_layers=2, backend="reference")).eval()
    ids = torch.randint(0, 7, (101,))
    with torch.no_grad():
        logp = F.log_softmax(model(ids[None])[0][0], -1)  # (T, V)
    expected = -logp[:-1].gather(1, ids[1:, None])[:, 0].numpy()
    chunks = list(iter_trace(model, ids, chunk_len=10, top_k=3))
    assert [c.start for c in chunks] == list(range(0, 101, 10))
    loss = np.concatenate([c.loss for c in chunks])
    assert np.isnan(loss[0])
    np.testing.assert_allclose(loss[1:], expected, rtol=1e-5, atol=1e-5)
    top = np.concatenate([c.top_ids for c in chunks])
    np.testing.assert_array_equal(top[:, 0], logp.argmax(-1).numpy())
    assert set(chunks[0].values) == {f"L{k}.{g}" for k in (0, 1) for g in "rznh"}


def test_trace_rejects_bad_ids():
    model = CharLM(CharLMConfig(5, "rnn", hidden_size=4, num_layers=1))
    with pytest.raises(ValueError, match="vocabulary"):
        next(iter_trace(model, [0, 5]))
    with pytest.raises(ValueError, match="empty"):
        next(iter_trace(model, []))
    with pytest.raises(ValueError, match="max_chars"):
        trace_text(model, [0] * 20, max_chars=10)


def test_streaming_search_equals_one_shot():
    """Chunk boundaries and the fit/held split do not change the statistics."""
    model, vocab = planted_lstm()
    text = planted_text(800, seed=3)
    ids = vocab.encode(text)
    feats = np.stack([bracket_depth(text), in_quote(text)], 1)
    results = []
    for chunk_len in (800, 33):
        search = CellSearch(["bracket_depth", "in_quote"], [False, True], fit_chars=400)
        for chunk in iter_trace(model, ids, chunk_len):
            search.add(chunk, feats[chunk.start : chunk.start + len(chunk.ids)])
        results.append(search.result())
    np.testing.assert_allclose(results[0].corr, results[1].corr, atol=1e-9)
    np.testing.assert_allclose(results[0].accuracy, results[1].accuracy)
    # held-out correlation equals numpy's on the held-out half
    tr = trace_text(model, ids)
    names, a = tr.units()
    u = names.index("L0.c.0")
    np.testing.assert_allclose(
        results[0].corr[u, 0], np.corrcoef(a[400:, u], feats[400:, 0])[0, 1], atol=1e-6
    )


def test_saturation_counts_planted_gates(planted):
    model, _, _, ids = planted
    counter = SaturationCounter("lstm")
    for chunk in iter_trace(model, ids, 256):
        counter.add(chunk)
    sat = counter.result()
    assert sat.steps == len(ids)
    f_right = sat.right["L0"]["f"]
    assert f_right[0] == 1.0  # the counter never forgets
    quotes = float(np.mean(np.asarray(ids) == 1))  # '"' is token 1 of ' "()ab'
    assert sat.left["L0"]["f"][1] == pytest.approx(quotes)  # unit 1 forgets only at quotes
    assert set(sat.left["L0"]) == {"i", "f", "o"}
    assert SaturationCounter("rnn").cell == "rnn"
    with pytest.raises(ValueError, match="cell"):
        SaturationCounter("transformer")


def test_iter_trace_memory_does_not_grow_with_the_text():
    """Streaming a 6x longer text keeps the same peak of traced (numpy) memory; keeping every
    chunk would add ~2.3 MB (6000 steps x 6 gates x 16 units x 4 bytes)."""
    import tracemalloc

    torch.manual_seed(0)
    model = CharLM(CharLMConfig(5, "lstm", hidden_size=16, num_layers=1, backend="reference"))
    peaks = []
    for n in (1_000, 6_000):
        ids = np.random.default_rng(0).integers(0, 5, n)
        tracemalloc.start()
        total = 0
        for chunk in iter_trace(model, ids, chunk_len=250):
            total += len(chunk.ids)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert total == n
    assert peaks[1] < 1.5 * peaks[0] + 100_000


def test_parallel_streams_trace_each_segment_from_zero():
    torch.manual_seed(2)
    model = CharLM(CharLMConfig(6, "lstm", hidden_size=8, num_layers=2, backend="reference"))
    ids = np.random.default_rng(1).integers(0, 6, 103)
    chunks = list(iter_trace(model, ids, chunk_len=10, streams=4))  # segments of 26 chars
    assert sorted({c.start // 26 for c in chunks}) == [0, 1, 2, 3]
    assert sum(len(c.ids) for c in chunks) == 103
    for b in range(4):
        seg = ids[26 * b : 26 * (b + 1)]
        alone = trace_text(model, seg, chunk_len=7)
        mine = sorted((c for c in chunks if c.start // 26 == b), key=lambda c: c.start)
        got = np.concatenate([c.values["L1.c"] for c in mine])
        np.testing.assert_allclose(got, alone.values["L1.c"], atol=1e-6)
        np.testing.assert_allclose(
            np.concatenate([c.loss for c in mine]), alone.loss, atol=1e-5, equal_nan=True
        )
    with pytest.raises(ValueError, match="single stream"):
        next(iter_trace(model, ids, streams=2, state=chunks[0].state))


def test_analyze_with_streams_finds_the_planted_units(planted):
    model, _, text, ids = planted
    result = analyze(model, ids, text, ["bracket_depth", "in_quote"], streams=6, view_chars=700)
    assert result.cells.best("bracket_depth").unit == "L0.c.0"
    assert result.cells.best("in_quote").unit in ("L0.c.1", "L0.h.1")
    w = result.window
    assert w.activations.shape == (700, 8) and w.start == 1500
    np.testing.assert_array_equal(w.ids, ids[1500:2200])
    # chunks arrive segment by segment; the window puts each at its position in the text
    chunks = sorted(iter_trace(model, ids, 512, streams=6), key=lambda c: c.start)
    full = np.concatenate([c.units()[1] for c in chunks])[1500:2200]
    np.testing.assert_allclose(w.activations.astype(np.float32), full, atol=2e-3, rtol=1e-3)
    loss = np.concatenate([c.loss for c in chunks])
    np.testing.assert_array_equal(result.loss, loss)


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_cell_analyses_and_exports(cell, tmp_path):
    import json

    from rnnlab.analysis.export import viewer_payload
    from rnnlab.analysis.plots import plot_saturation
    from rnnlab.analysis.saturation import SIGMOID_GATES

    torch.manual_seed(0)
    model = CharLM(CharLMConfig(6, cell, hidden_size=6, num_layers=2, backend="reference"))
    text = planted_text(300, seed=4)
    ids = np.array([' "()ab'.index(c) for c in text])
    result = analyze(model, ids, text, ["bracket_depth", "in_quote"], view_chars=100)
    kinds = {u.split(".")[1] for u in result.cells.units}
    assert kinds == ({"h", "c"} if CELLS[cell].has_cell_state else {"h"})
    assert len(result.cells.units) == 2 * 6 * len(kinds)
    assert set(result.saturation.left.get("L1", {})) == set(SIGMOID_GATES[cell])
    payload = viewer_payload(result, list(' "()ab'), {"cell": cell})
    assert len(json.loads(json.dumps(payload, allow_nan=False))["text"]) == 100
    if SIGMOID_GATES[cell]:
        assert plot_saturation(result.saturation, tmp_path / "s.png").stat().st_size > 1000
    else:
        with pytest.raises(ValueError, match="no sigmoid gates"):
            plot_saturation(result.saturation, tmp_path / "s.png")
