"""Sample from an exported rnnlab char-LM with onnxruntime and NumPy alone (no rnnlab, no torch).

    rnnlab export runs/input-lstm --format onnx          # writes runs/input-lstm/export-onnx/
    python examples/sample_onnx.py runs/input-lstm/export-onnx --prime "ROMEO:" --length 200

The exported step is (token (B,), h (L, B, H)[, c]) -> (logits (B, V), h_n[, c_n]); export.json
names the inputs and outputs, vocab.json maps token ids to characters (or bytes).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export_dir", type=Path)
    p.add_argument("--prime", default="")
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy (the argmax)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not a.temperature >= 0 or a.temperature == float("inf"):
        p.error(f"--temperature: expected a finite number >= 0 (0: greedy), got {a.temperature}")
    if not (a.export_dir / "export.json").is_file():
        p.error(f"{a.export_dir}: no export.json here; run `rnnlab export RUN_DIR` first")
    spec = json.loads((a.export_dir / "export.json").read_text())
    vocab = json.loads((a.export_dir / "vocab.json").read_text())
    tokens = vocab["tokens"]
    index = {t: i for i, t in enumerate(tokens)}
    if vocab["kind"] == "bytes":  # a byte-level model reads the prime's UTF-8 bytes
        a.prime = a.prime.encode("utf-8").decode("latin-1")
    unseen = sorted(set(a.prime) - set(index))
    if unseen:
        p.error(f"--prime: characters not in the model's vocabulary: {''.join(unseen)!r}")
    session = onnxruntime.InferenceSession(str(a.export_dir / spec["file"]))
    L, H = spec["num_layers"], spec["hidden_size"]
    state = [np.zeros((L, 1, H), np.float32) for _ in spec["order"]["inputs"][1:]]
    rng = np.random.default_rng(a.seed)
    prime = [index[c] for c in a.prime] or [0]
    out = []
    token = prime[0]
    for i in range(len(prime) - 1 + a.length):
        feed = {"token": np.array([token], np.int64)}
        feed.update(zip(spec["order"]["inputs"][1:], state, strict=True))
        logits, *state = session.run(None, feed)
        if i + 1 < len(prime):  # still reading the prime
            token = prime[i + 1]
            continue
        if a.temperature == 0:  # greedy: the most likely token
            token = int(np.argmax(logits[0]))
        else:
            z = logits[0] / a.temperature
            probs = np.exp(z - z.max())
            token = int(rng.choice(len(probs), p=probs / probs.sum()))
        out.append(token)
    if vocab["kind"] == "bytes":
        text = a.prime.encode("latin-1") + bytes(out)
        print(text.decode("utf-8", errors="replace"))
    else:
        print(a.prime + "".join(tokens[t] for t in out))


if __name__ == "__main__":
    main()
