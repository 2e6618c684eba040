"""The options of ``rnnlab cells``, ``rnnlab gradients`` and ``rnnlab view``, as config dataclasses.

Each flag is a field with its range (``rnnlab.validation.setting``), so the command line is
checked by the one validator before any file is read or any model is traced: a negative count or
a ``--max-chars`` that would not fit in memory is one line naming the flag, never numpy's words or
a MemoryError. The bounds are measured costs, not taste:

- ``max_chars``: the analysis keeps about 120 bytes per character (the features, one float per
  feature and character, twice; the loss; the ids) and traces about 10k characters a second on
  one thread, so 10 million characters is about 1.2 GB and a quarter of an hour.
- ``view_chars``: the viewer embeds the chosen units' activations and the top predictions for
  every character (about 300 bytes of JSON each), so 200k characters is a 60 MB page.
- ``gradients``: backpropagation keeps (T, B, H) activations per layer several times over; the
  product ``steps * batch_size * hidden_size`` is bounded to 2^26 (256 MB of float32 per copy).
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnlab.validation import ConfigError, setting, validate

MAX_SEED = 2**63 - 1
MAX_GRADIENT_ELEMENTS = 2**26  # steps * batch_size * hidden_size
CELL_NAMES = ("rnn", "lstm", "gru", "mut1", "mut2", "mut3", "indrnn", "layernorm_lstm",
              "layernorm_gru")  # fmt: skip


@dataclass
class TextOptions:
    """The flags ``cells`` and ``view`` share: which text, how much of it, which features."""

    max_chars: int = setting(
        200_000, "characters of --text analysed", low=4, high=10_000_000, unit="characters"
    )
    view_chars: int = setting(
        4000, "characters shown in the viewer", low=1, high=200_000, unit="characters"
    )
    fit_frac: float = setting(
        0.5, "leading fraction of the text that ranks units (the rest scores them)", low=0.01,
        high=0.99,
    )  # fmt: skip
    streams: int = setting(
        1,
        "read the text as S segments side by side (faster on several threads; each segment "
        "starts from a zero state; 1: one stream, state carried throughout)",
        low=1,
        high=1024,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class CellsOptions(TextOptions):
    """``rnnlab cells``: the text flags, and what the report holds."""

    top: int = setting(5, "units reported per feature (table and cells.json)", low=1, high=1000)
    ngram_order: int = setting(20, "n of the n-gram baseline", low=1, high=64)


@dataclass
class ViewOptions(TextOptions):
    """``rnnlab view``: the text flags and the address served."""

    max_chars: int = setting(
        20_000, "characters of --text analysed", low=4, high=10_000_000, unit="characters"
    )
    port: int = setting(8765, "port (0: any free one)", low=0, high=65535)


@dataclass
class GradientsOptions:
    """``rnnlab gradients``: the fresh models' shapes and the sequences averaged over."""

    cells: str = setting("rnn,lstm", "comma-separated cells of the fresh models (no RUN_DIR)")
    hidden_size: int = setting(128, "H of the fresh models", low=1, high=4096)
    input_size: int = setting(64, "I of the fresh models", low=1, high=4096)
    steps: int = setting(100, "sequence length T", low=2, high=10_000)
    batch_size: int = setting(8, "sequences averaged over", low=1, high=4096)
    seed: int = setting(0, "seed of the fresh models and inputs", low=0, high=MAX_SEED)

    def __post_init__(self) -> None:
        validate(self)
        names = self.cells.split(",")
        if not all(n in CELL_NAMES for n in names) or len(set(names)) != len(names):
            expected = "distinct names of " + "|".join(CELL_NAMES) + ", comma-separated"
            raise ConfigError("cells", expected, self.cells)
        size = self.steps * self.batch_size * self.hidden_size
        if size > MAX_GRADIENT_ELEMENTS:
            raise ConfigError(
                "steps * batch_size * hidden_size",
                f"at most {MAX_GRADIENT_ELEMENTS:_} (the activations backpropagation keeps)",
                size,
            )
