"""evaluate_all scores every next-character prediction of a text, none dropped (a fresh-user
trial found `eval RUN FILE` leaving up to seq_len characters unscored)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnlab.evaluate import evaluate_all
from rnnlab.models import CharLM, CharLMConfig


@pytest.mark.parametrize("n", [2, 10, 101, 1001])
@pytest.mark.parametrize("batch,seq_len", [(1, 64), (1, 7), (4, 16), (32, 5)])
def test_every_character_is_scored(n, batch, seq_len):
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(9, cell="gru", hidden_size=8, num_layers=1)).eval()
    tokens = np.random.default_rng(n).integers(0, 9, n).astype(np.uint8)
    result = evaluate_all(model, tokens, batch, seq_len)
    assert result.tokens == n - 1
    if batch == 1:  # one stream: exactly one pass over the whole text
        ids = torch.as_tensor(tokens, dtype=torch.long)[None]
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])
        want = F.cross_entropy(logits[0], ids[0, 1:]).item()
        assert result.loss == pytest.approx(want, rel=1e-5)


def test_overflowing_logits_are_a_one_line_error_not_nan(monkeypatch, capsys):
    from rnnlab import runs
    from rnnlab.cli import main
    from rnnlab.evaluate import NonFiniteScoreError, require_finite

    torch.manual_seed(0)
    model = CharLM(CharLMConfig(6, "gru", hidden_size=8, backend="reference")).eval()
    with torch.no_grad():
        model.head.weight.zero_()  # finite weights whose loss overflows float32
        model.head.bias.copy_(torch.tensor([3e38, -3e38] * 3))
    result = evaluate_all(model, np.arange(40) % 6, batch_size=2, seq_len=8)
    with pytest.raises(NonFiniteScoreError, match=r"run: val split: expected finite scores"):
        require_finite({"loss": result.loss}, "run: val split")
    monkeypatch.setattr(runs, "evaluate", lambda *a, **k: result)
    assert main(["eval", "some-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "non-finite" in err and "nan nats" not in err
