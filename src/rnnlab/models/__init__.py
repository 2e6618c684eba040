"""Models built on Recurrent: one model per file."""

from rnnlab.models.char_lm import CharLM, CharLMConfig

__all__ = ["CharLM", "CharLMConfig"]
