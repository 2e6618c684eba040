"""rnnlab.training: the one training loop every task runs on, and what it is built from.

``loop`` (``fit`` and the ``Task`` contract), ``config`` (``RunConfig``: the settings every task
shares, with their resume rules), ``tools`` (optimizer, schedule, clipping, the guard, signals,
the lock, the metrics log, trainer state), ``distributed`` (torchrun data parallel) and ``plots``
(the loss plot). The tasks themselves are in ``rnnlab.tasks``.
"""
