"""``python -m rnnlab``: the ``rnnlab`` command, so ``torchrun -m rnnlab train ...`` runs it."""

import sys

from rnnlab.cli import main

sys.exit(main())
