"""rnnlab.data: text -> vocabulary -> cached memory-mapped tokens -> truncated-BPTT batches.

Nothing here imports the rest of rnnlab. Every user-facing problem raises ``DataError`` with a
one-line message.
"""

from rnnlab.data.corpus import Corpus, cached_corpus, corpus_info, prepare_corpus
from rnnlab.data.errors import DataError, InvalidUTF8Error
from rnnlab.data.shakespeare import build_shakespeare
from rnnlab.data.tbptt import StreamBatcher
from rnnlab.data.vocab import Vocab

__all__ = [
    "Corpus",
    "DataError",
    "InvalidUTF8Error",
    "StreamBatcher",
    "Vocab",
    "build_shakespeare",
    "cached_corpus",
    "corpus_info",
    "prepare_corpus",
]
