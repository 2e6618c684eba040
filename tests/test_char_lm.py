"""CharLM: shapes, the one-step sampling path against the full forward, weight tying, errors."""

import pytest
import torch

from rnnlab.cells import CELLS
from rnnlab.models import CharLM, CharLMConfig


@pytest.mark.parametrize("cell", list(CELLS))
def test_step_equals_forward(cell):
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(11, cell=cell, hidden_size=12, num_layers=2)).eval()
    idx = torch.randint(0, 11, (3, 6))
    full, state_full = model(idx)
    state = None
    for t in range(idx.shape[1]):
        logits, state = model.step(idx[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=0, atol=1e-5)
    for a, b in zip(
        state if isinstance(state, tuple) else (state,),
        state_full if isinstance(state_full, tuple) else (state_full,),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_shapes_and_explicit_state():
    model = CharLM(CharLMConfig(7, hidden_size=8, num_layers=3, embedding_size=5))
    logits, (h, c) = model(torch.zeros(2, 4, dtype=torch.long))
    assert logits.shape == (2, 4, 7) and h.shape == (3, 2, 8) and c.shape == (3, 2, 8)
    h0 = model.initial_state(2)
    assert h0[0].shape == (3, 2, 8) and not h0[0].any()


def test_tied_weights_share_one_matrix():
    model = CharLM(CharLMConfig(9, hidden_size=8, tie_weights=True))
    assert model.head.weight.data_ptr() == model.embedding.weight.data_ptr()
    with pytest.raises(ValueError, match="tie_weights: needs embedding_size == hidden_size"):
        CharLMConfig(9, hidden_size=8, embedding_size=4, tie_weights=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="cell: expected one of"):
        CharLMConfig(9, cell="transformer")
    with pytest.raises(ValueError, match="vocab_size: expected a positive integer"):
        CharLMConfig(0)
    with pytest.raises(ValueError, match=r"idx: expected a 2-D \(B, T\) tensor"):
        CharLM(CharLMConfig(9, hidden_size=8))(torch.zeros(4, dtype=torch.long))


# -- the embedding folded into layer 0's input projection (fused backend on CPU) -------------------


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _folded_and_reference(cell, num_layers, tie, embedding_size=8, dtype=torch.float32):
    torch.manual_seed(0)
    kw = dict(cell=cell, hidden_size=8, num_layers=num_layers, tie_weights=tie,
              embedding_size=embedding_size)  # fmt: skip
    ref = CharLM(CharLMConfig(7, backend="reference", **kw)).to(dtype)
    folded = CharLM(CharLMConfig(7, backend="fused", **kw)).to(dtype)
    folded.load_state_dict(ref.state_dict())
    return folded, ref


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", list(CELLS))
def test_folded_embedding_equals_reference(cell, num_layers, tie):
    """Logits, final state and every parameter's gradient, over two chunks with carried state."""
    from rnnlab.kernels import extension_status

    if not extension_status().available:
        pytest.skip("the C++ engine is not built")
    folded, ref = _folded_and_reference(cell, num_layers, tie)
    idx = torch.randint(0, 7, (4, 10))
    assert folded.folds_embedding(idx[:, :5]) and not ref.folds_embedding(idx[:, :5])
    state0 = [torch.randn_like(s) for s in _flat(ref.initial_state(4))]
    results = []
    for model in (folded, ref):
        state = tuple(state0) if CELLS[cell].has_cell_state else state0[0]
        loss, logits = 0.0, []
        for chunk in idx.split(5, dim=1):  # carried state, graph kept across chunks
            out, state = model(chunk, state)
            logits.append(out)
            loss = loss + torch.nn.functional.cross_entropy(out.reshape(-1, 7), chunk.reshape(-1))
        loss = loss + 0.1 * sum(s.sum() for s in _flat(state))
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results.append((torch.cat(logits, 1), _flat(state), grads))
    (lf, sf, gf), (lr, sr, gr) = results
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-5)
    for a, b in zip(sf, sr, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert gf.keys() == gr.keys()
    for name in gr:
        torch.testing.assert_close(gf[name], gr[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("cell", ["mut1", "mut2"])
def test_folded_embedding_with_input_projection(cell):
    """MUT1/MUT2 with E != H carry a weight_proj, folded into the table too."""
    from rnnlab.kernels import extension_status

    if not extension_status().available:
        pytest.skip("the C++ engine is not built")
    folded, ref = _folded_and_reference(cell, 2, False, embedding_size=5)
    idx = torch.randint(0, 7, (4, 6))
    assert "rnn.weight_proj_l0" in dict(folded.named_parameters())
    for model in (folded, ref):
        model(idx)[0].logsumexp(-1).sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(folded(idx)[0], ref(idx)[0], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(folded.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("cell", list(CELLS))
def test_folded_embedding_gradcheck_float64(cell):
    from rnnlab.kernels import extension_status

    if not extension_status().available:
        pytest.skip("the C++ engine is not built")
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(3, cell=cell, hidden_size=3, num_layers=2, backend="fused"))
    model = model.double()
    idx = torch.randint(0, 3, (2, 4))
    assert model.folds_embedding(idx)
    state = [torch.randn_like(s) for s in _flat(model.initial_state(2))]
    state = [s.requires_grad_() for s in state]

    def f(*leaves):  # the state and every parameter (perturbed in place by gradcheck)
        logits, new_state = model(idx, tuple(state) if CELLS[cell].has_cell_state else state[0])
        return (logits, *_flat(new_state))

    assert torch.autograd.gradcheck(f, (*state, *model.parameters()), eps=1e-6, atol=1e-5)


def test_fold_only_where_it_pays():
    from rnnlab.kernels import extension_status

    if not extension_status().available:
        pytest.skip("the C++ engine is not built")
    model = CharLM(CharLMConfig(7, cell="gru", hidden_size=8, backend="fused"))
    assert model.folds_embedding(torch.zeros(4, 5, dtype=torch.long))  # 20 tokens > 2V
    assert not model.folds_embedding(torch.zeros(2, 5, dtype=torch.long))  # the table costs more
    assert not CharLM(CharLMConfig(7, cell="gru", hidden_size=8, backend="native")).folds_embedding(
        torch.zeros(4, 5, dtype=torch.long)
    )
    with pytest.raises(ValueError, match="hx: expected h_0 of shape"):
        model(torch.zeros(4, 5, dtype=torch.long), torch.zeros(1, 3, 8))


def test_auto_counts_the_fold():
    from rnnlab.kernels import extension_status

    if not extension_status().available:
        pytest.skip("the C++ engine is not built")
    model = CharLM(CharLMConfig(7, cell="lstm", hidden_size=8))  # auto
    assert model.rnn.resolved_backend() == "native" and model.resolved_backend() == "fused"
    assert model.folds_embedding(torch.zeros(4, 5, dtype=torch.long))
    assert (
        CharLM(CharLMConfig(7, cell="lstm", hidden_size=8, backend="native")).resolved_backend()
        == "native"
    )


@pytest.mark.parametrize("cell", ["lstm", "gru", "mut1"])
def test_double_backward_through_the_folded_embedding(cell):
    """A gradient penalty through the engine (embedding folded) equals the reference loop's."""
    from rnnlab.kernels import extension_status

    if not extension_status().available:
        pytest.skip("the C++ engine is not built")
    folded, ref = _folded_and_reference(cell, 2, False)
    idx = torch.randint(0, 7, (4, 6))
    assert folded.folds_embedding(idx)
    grads = []
    for model in (folded, ref):
        logits, _ = model(idx)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), idx.reshape(-1))
        (g,) = torch.autograd.grad(loss, model.embedding.weight, create_graph=True)
        penalty = g.pow(2).sum()
        grads.append(torch.autograd.grad(penalty, [*model.parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert grads[0][2].abs().sum() > 0  # weight_hh_l0 gets a second-order term


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reorder_gathers_streams_and_they_continue_as_their_sources(cell):
    """CharLM.reorder (the decoding protocol's): rows of the state (L, B, H) follow the index,
    and a reordered stream continues exactly as the stream it was taken from."""
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(vocab_size=7, cell=cell, hidden_size=8, num_layers=2)).eval()
    idx = torch.randint(0, 7, (3, 5))
    with torch.no_grad():
        _, state = model(idx)
        picked = CharLM.reorder(state, torch.tensor([2, 0, 2]))
        parts = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
        for got, full in zip(parts(picked), parts(state), strict=True):
            assert torch.equal(got, full[:, [2, 0, 2]])
        nxt = torch.tensor([4, 1, 4])
        together, _ = model.step(nxt, picked)  # (3, V)
        alone, _ = model.step(nxt[:1], CharLM.reorder(state, torch.tensor([2])))
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together[0], together[2])
