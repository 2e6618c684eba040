"""Checkpoints are data, never code: safetensors + JSON directories, atomic, verified on load.

``state`` flattens nested training state exactly; ``store`` writes and finds checkpoint
directories (layout, atomic save, retention); ``load`` reads one back, checking it cheapest
first. Nothing here unpickles.
"""

import safetensors.torch  # noqa: F401  (tests patch safetensors.torch.save through this module)

from rnnlab.checkpoint.load import load_checkpoint, read_header, read_safetensors
from rnnlab.checkpoint.state import CheckpointError, flatten_state, unflatten_state
from rnnlab.checkpoint.store import (
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    MAX_JSON_BYTES,
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_JSON_BYTES",
    "Checkpoint",
    "CheckpointError",
    "flatten_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_header",
    "read_safetensors",
    "resolve_checkpoint",
    "save_checkpoint",
    "unflatten_state",
]
