"""g2p-en's published G2P model as an rnnlab Seq2Seq: a model no one here trained.

``g2p-en`` 2.1.0 (Park & Kim; Apache-2.0) ships ``g2p_en/checkpoint20.npz``: a GRU encoder-decoder
(embeddings 64, 128 GRU units, one layer each, no attention) that its ``G2p.predict`` runs in NumPy.
Importing ``g2p_en`` downloads NLTK tagger data and needs nltk and inflect, so the weights are read
from the package's files instead: an installed ``g2p_en`` is located without importing it, or its
wheel is fetched with ``pip download --no-deps`` into rnnlab's cache, its sha256 checked, and the
``.npz`` read from the zip (``numpy.load`` with ``allow_pickle=False``).

The mapping is a renaming; the equations agree. g2p-en's ``grucell`` computes
``[r, z] = sigmoid(x W_ih[:2H]^T + b_ih[:2H] + h W_hh[:2H]^T + b_hh[:2H])``,
``n = tanh(x W_ih[2H:]^T + b_ih[2H:] + r * (h W_hh[2H:]^T + b_hh[2H:]))``, ``h' = (1 - z) n + z h``:
torch's GRU, gate order (r, z, n) and b_hn inside the reset product, which is rnnlab's GRU. Its
``predict`` encodes ``chars + </s>`` from h = 0, starts the decoder at the encoder's last state
with ``<s>``, feeds back the argmax and stops at ``</s>`` or after 20 steps: rnnlab's
``translate`` with ``method="greedy"`` and ``max_length=20``. Its vocabularies are rnnlab's
special-token layout (source ``<pad> <unk> </s>``, target ``<pad> <unk> <s> </s>``).
"""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from rnnlab.data.corpus import cache_root
from rnnlab.data.errors import DataError
from rnnlab.data.fetch import pip_download
from rnnlab.data.pairs import SOURCE_SPECIALS, TARGET_SPECIALS, Symbols
from rnnlab.data.text import sha256_file
from rnnlab.models.seq2seq import Seq2Seq, Seq2SeqConfig

REQUIREMENT = "g2p-en==2.1.0"
WHEEL_NAME = "g2p_en-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "2a7aabf1fc7f270fcc3349881407988c9245173c2413debbe5432f4a4f31319f"
WEIGHTS = "g2p_en/checkpoint20.npz"
MAX_STEPS = 20  # g2p-en's decoding loop
GRAPHEMES = list("abcdefghijklmnopqrstuvwxyz")
PHONEMES = (
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 "
    "ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 "
    "P R S SH T TH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
).split()  # g2p-en's order (its list has an unstressed "UW" too)


def g2p_en_weights_bytes(cache_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The bytes of ``checkpoint20.npz``: from an installed g2p_en (not imported), else from the
    wheel in ``cache_dir`` (default ``cache_root()/g2p-en``), fetched there if missing."""
    spec = importlib.util.find_spec("g2p_en")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / "checkpoint20.npz"
        if installed.is_file():
            return installed.read_bytes()
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / "g2p-en"
    wheel = cache / WHEEL_NAME
    if not wheel.is_file() or sha256_file(wheel) != WHEEL_SHA256:
        pip_download(REQUIREMENT, WHEEL_NAME, cache, sha256=WHEEL_SHA256)
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(WEIGHTS)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{wheel}: not the g2p-en wheel ({e}); delete it to fetch again") from None


def g2p_en_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The named arrays of the ``.npz`` (never unpickled)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def load_g2p_en(
    arrays: dict[str, np.ndarray] | None = None,
) -> tuple[Seq2Seq, Symbols, Symbols]:
    """(model, source symbols, target symbols) with g2p-en's weights; float32, eval mode."""
    arrays = arrays if arrays is not None else g2p_en_arrays(g2p_en_weights_bytes())
    source = Symbols((*SOURCE_SPECIALS, *GRAPHEMES), len(SOURCE_SPECIALS))
    target = Symbols((*TARGET_SPECIALS, *PHONEMES), len(TARGET_SPECIALS))
    E, H = arrays["enc_emb"].shape[1], arrays["enc_w_hh"].shape[1]
    config = Seq2SeqConfig(
        source_vocab_size=len(source), target_vocab_size=len(target), embedding_size=E,
        hidden_size=H, num_layers=1, encoder_cell="gru", decoder_cell="gru",
    )  # fmt: skip
    model = Seq2Seq(config)
    names = {
        "source_embedding.weight": "enc_emb",
        "encoder.weight_ih_l0": "enc_w_ih",
        "encoder.weight_hh_l0": "enc_w_hh",
        "encoder.bias_ih_l0": "enc_b_ih",
        "encoder.bias_hh_l0": "enc_b_hh",
        "target_embedding.weight": "dec_emb",
        "decoder.weight_ih_l0": "dec_w_ih",
        "decoder.weight_hh_l0": "dec_w_hh",
        "decoder.bias_ih_l0": "dec_b_ih",
        "decoder.bias_hh_l0": "dec_b_hh",
        "output.weight": "fc_w",
        "output.bias": "fc_b",
    }
    state = {ours: torch.from_numpy(np.asarray(arrays[theirs], np.float32)) for ours, theirs in
             names.items()}  # fmt: skip
    model.load_state_dict(state, strict=True)
    return model.eval(), source, target
