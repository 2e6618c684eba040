"""Seq2Seq: padded batches equal sequences alone, the step path equals the whole-target path,
beam 1 equals greedy, an independent attention computation, learning to reverse and copy."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from rnnlab.decoding import beam_search, greedy
from rnnlab.models.seq2seq import BOS, EOS, DecodeConfig, Seq2Seq, Seq2SeqConfig, translate

COMBOS = [
    ("lstm", "lstm", False, "none"),
    ("gru", "lstm", True, "luong"),
    ("lstm", "gru", True, "bahdanau"),
    ("mut1", "rnn", False, "luong"),
    ("rnn", "mut3", True, "none"),
    ("minlstm", "mingru", True, "luong"),
    ("mingru", "minlstm", False, "bahdanau"),
]


def make(enc, dec, bi, attention, layers=2, seed=0):
    torch.manual_seed(seed)
    config = Seq2SeqConfig(source_vocab_size=11, target_vocab_size=9, embedding_size=6,
                           hidden_size=8, num_layers=layers, encoder_cell=enc, decoder_cell=dec,
                           bidirectional=bi, attention=attention)  # fmt: skip
    return Seq2Seq(config).eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 2, 7, 3])
    source = torch.randint(3, 11, (4, 7), generator=g)
    source[torch.arange(7)[None, :] >= lengths[:, None]] = 0  # padding
    tlengths = torch.tensor([4, 6, 1, 3])
    target = torch.randint(4, 9, (4, 6), generator=g)
    target[:, 0] = BOS
    target[torch.arange(6)[None, :] >= tlengths[:, None]] = 0
    return source, lengths, target, tlengths


@pytest.mark.parametrize("enc,dec,bi,attention", COMBOS)
def test_padded_batch_equals_each_sequence_alone(enc, dec, bi, attention):
    model = make(enc, dec, bi, attention)
    source, lengths, target, tlengths = batch()
    with torch.no_grad():
        together = model(source, lengths, target)  # (B, T, V)
        for i in range(4):
            S, T = int(lengths[i]), int(tlengths[i])
            alone = model(source[i : i + 1, :S], lengths[i : i + 1], target[i : i + 1, :T])
            torch.testing.assert_close(together[i, :T], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("enc,dec,bi,attention", COMBOS)
def test_step_path_equals_whole_target_path_with_gradients(enc, dec, bi, attention):
    model = make(enc, dec, bi, attention)
    source, lengths, target, _ = batch(2)
    state = model.encode(source, lengths)
    steps = model._forward_steps(state, target, 0.0, None)
    whole = model(source, lengths, target)
    torch.testing.assert_close(steps, whole, atol=1e-5, rtol=1e-5)
    g1 = torch.autograd.grad(steps.square().sum(), list(model.parameters()), allow_unused=True)
    g2 = torch.autograd.grad(whole.square().sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(g1, g2, strict=True):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_decoding_logprobs_equal_teacher_forced_logits():
    """Greedy decoding's per-token log-probabilities are the teacher-forced model's on its own
    output: the decoder state is carried correctly through step() and row dropping."""
    for enc, dec, bi, attention in COMBOS:
        model = make(enc, dec, bi, attention, seed=3)
        source, lengths, _, _ = batch(3)
        hyps = translate(model, source, lengths, DecodeConfig(max_length=6))
        for i, h in enumerate(hyps):
            out = h.tokens + ([EOS] if h.finished else [])
            target_in = torch.tensor([[BOS, *out[:-1]]]) if out else None
            if target_in is None:
                continue
            with torch.no_grad():
                logp = model(source[i : i + 1], lengths[i : i + 1], target_in).log_softmax(-1)
            want = logp[0, torch.arange(len(out)), torch.tensor(out)]
            torch.testing.assert_close(torch.tensor(h.steps), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("enc,dec,bi,attention", COMBOS[:3])
def test_beam_one_equals_greedy(enc, dec, bi, attention):
    model = make(enc, dec, bi, attention, seed=5)
    with torch.no_grad():
        model.output.weight.mul_(3)  # peaked distributions: decisive, varied outputs
    source, lengths, _, _ = batch(4)
    g = translate(model, source, lengths, DecodeConfig(method="greedy", max_length=12))
    b = translate(model, source, lengths, DecodeConfig(method="beam", beam=1, max_length=12))
    assert [h.tokens for h in g] == [h.tokens for h in b]
    wide = translate(model, source, lengths, DecodeConfig(method="beam", beam=4, max_length=12))
    for x, y in zip(g, wide, strict=True):  # a wider beam never scores worse (alpha 0)
        if x.finished and y.finished:
            assert y.logprob >= x.logprob - 1e-6


def test_luong_attention_against_a_direct_formula():
    """Luong 'general' attention, written out: a_ts = softmax_s(h_t^T W_a m_s) over real source
    positions; output tanh(W_c [sum_s a_ts m_s; h_t])."""
    model = make("gru", "gru", False, "luong", layers=1)
    source, lengths, target, _ = batch(6)
    with torch.no_grad():
        memory, _ = model.encoder(F.embedding(source, model.source_embedding.weight),
                                  lengths=lengths)  # fmt: skip
        state = model.encode(source, lengths)
        h, _ = model.decoder(F.embedding(target, model.target_embedding.weight), state.hidden)
        for b in range(4):
            m = memory[b, : lengths[b]]  # (S_b, H)
            scores = h[b] @ model.attn_key.weight @ m.T  # (T, S_b)
            context = scores.softmax(-1) @ m
            out = torch.tanh(torch.cat([context, h[b]], -1) @ model.attn_combine.weight.T)
            want = out @ model.output.weight.T + model.output.bias
            torch.testing.assert_close(model(source, lengths, target)[b], want, atol=1e-5,
                                       rtol=1e-5)  # fmt: skip


def test_bidirectional_bridge_concatenates_directions():
    model = make("lstm", "lstm", True, "none", layers=2)
    source, lengths, _, _ = batch(7)
    with torch.no_grad():
        _, (h, c) = model.encoder(source, lengths=lengths, embedding=model.source_embedding.weight)
        state = model.encode(source, lengths)
    for k in range(2):  # layer k: [forward; backward]
        torch.testing.assert_close(state.hidden[0][k], torch.cat([h[2 * k], h[2 * k + 1]], -1))
        torch.testing.assert_close(state.hidden[1][k], torch.cat([c[2 * k], c[2 * k + 1]], -1))


def test_scheduled_sampling_all_and_none():
    model = make("gru", "gru", False, "none", layers=1).train()
    source, lengths, target, _ = batch(8)
    torch.manual_seed(0)
    teacher = model(source, lengths, target, sampling=0.0)
    torch.manual_seed(0)
    own = model(source, lengths, target, sampling=1.0)
    torch.testing.assert_close(own[:, 0], teacher[:, 0])  # the first input is always <s>
    assert not torch.allclose(own[:, 1:], teacher[:, 1:])
    with pytest.raises(ValueError, match="sampling"):
        model(source, lengths, target, sampling=1.5)


def test_shape_errors_name_the_argument():
    model = make("gru", "gru", False, "none", layers=1)
    source, lengths, target, _ = batch()
    with pytest.raises(ValueError, match="source"):
        model(source[0], lengths, target)
    with pytest.raises(ValueError, match="target_in"):
        model(source, lengths, target[:2])
    with pytest.raises(ValueError, match="hidden_size"):
        Seq2SeqConfig(hidden_size=7, bidirectional=True)
    with pytest.raises(ValueError, match="attention"):
        Seq2SeqConfig(attention="dot")


def test_decoding_protocol_used_directly():
    model = make("lstm", "gru", True, "bahdanau", seed=9)
    source, lengths, _, _ = batch(9)
    with torch.no_grad():
        state = model.encode(source, lengths)
        g = greedy(model.step, model.reorder, state, BOS, max_length=8, eos=EOS, batch_size=4)
        b = beam_search(model.step, model.reorder, state, BOS, beam=3, max_length=8, eos=EOS,
                        batch_size=4, num_return=3)  # fmt: skip
    assert len(g) == 4 and all(len(x) == 3 for x in b)
    assert all(x[0].score >= x[1].score >= x[2].score for x in b)


def write_task(path, task, n=3000, seed=0):
    rng = random.Random(seed)
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice("abcde") for _ in range(rng.randint(2, 6))))
    with open(path, "w") as f:
        for w in sorted(words):
            f.write(f"{w}\t{w[::-1] if task == 'reverse' else w}\n")


@pytest.mark.slow
@pytest.mark.parametrize("task,attention,steps", [("reverse", "none", 700), ("copy", "luong", 500)])
def test_learns_to_reverse_and_copy_held_out_strings(tmp_path, task, attention, steps):
    from rnnlab.runs import load_run
    from rnnlab.tasks.seq2seq import Seq2SeqTrainConfig, train_seq2seq

    write_task(tmp_path / "pairs.tsv", task)
    config = Seq2SeqTrainConfig(pairs=str(tmp_path / "pairs.tsv"), out_dir=str(tmp_path / "run"),
                                hidden_size=64, embedding_size=16, num_layers=1,
                                attention=attention, batch_size=32, max_steps=steps,
                                eval_every=steps, lr=1e-2, warmup_steps=20, val_frac=0.1,
                                eval_size=0, threads=1)  # fmt: skip
    result = train_seq2seq(config)
    assert result.best["val_wer"] == 0.0  # every held-out string (about 300) exactly right
    run = load_run(tmp_path / "run", tasks=("seq2seq",))
    from rnnlab.tasks.seq2seq import decode_sources

    held = ["abcde", "eedcb", "ab"]  # may or may not be training strings; all must be right
    out = decode_sources([list(w) for w in held], run.model, run.source, run.target)
    assert ["".join(o) for o in out] == [w[::-1] if task == "reverse" else w for w in held]


def test_translate_sampling_is_seeded_and_temperature_zero_is_greedy():
    model = make("gru", "lstm", True, "luong", seed=11)
    source, lengths, _, _ = batch(11)
    sample = DecodeConfig(method="sample", max_length=10, seed=3)
    a = translate(model, source, lengths, sample)
    b = translate(model, source, lengths, sample)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    cold = DecodeConfig(method="sample", max_length=10, temperature=0.0)
    g = translate(model, source, lengths, DecodeConfig(max_length=10))
    assert [h.tokens for h in translate(model, source, lengths, cold)] == [h.tokens for h in g]
