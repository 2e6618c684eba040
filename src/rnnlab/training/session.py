"""What every task's ``train_*`` function does around ``fit``: read the run a resume continues,
start this process (threads, torchrun's launch, the device), and run ``fit`` inside the signal
guard, the process group and the run directory's lock.

    config, ckpt, emit = begin(KIND, config, resume, changes, on_event)
    launch, device = start_process(config)
    data = ...                                               # the task's own files
    return run_task(lambda dp: MyTask(config, data, dp), launch, device, run_dir, emit, ckpt)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from rnnlab.loading import LoadedRun, RunKind, load_run_of
from rnnlab.runtime import set_threads
from rnnlab.training.config import RunConfig, resumed_config
from rnnlab.training.distributed import (
    DataParallel,
    Launch,
    launch_from_env,
    main_reports,
    rank_device,
)
from rnnlab.training.loop import Event, FitResult, Task, fit
from rnnlab.training.tools import GracefulStop, TrainingError

# The keyword arguments of every task's train function.
RunPath = str | Path | None  # resume=RUN_DIR (or a step-N/ or best/ in it)
Changes = Mapping[str, Any] | None  # field -> value, applied to a resumed run by the resume rules
OnEvent = Callable[[Event], None] | None  # progress events; the library never prints


def begin(
    kind: RunKind, config: Any, resume: RunPath, changes: Changes, on_event: OnEvent
) -> tuple[Any, LoadedRun | None, Callable[[Event], None]]:
    """(the run's config, the checkpoint it resumes or None, the event sink) of a train call.

    A fresh run needs ``config``. A resume reads the latest checkpoint of ``resume`` through the
    one loader and applies ``changes`` by the resume rules (a note event for each); a ``config``
    given with ``resume`` counts as the changes: its fields that differ from the saved ones
    (an empty location such as ``input`` is not a change). A resume writes into its own run
    directory: an ``out_dir`` elsewhere is a TrainingError. Under torchrun only rank 0's events
    reach ``on_event``; errors are raised on every rank."""
    emit = main_reports(on_event or _ignore, launch_from_env())
    if resume is None:
        if config is None:
            raise TypeError(f"needs a {kind.train_config.__name__}, or resume=RUN_DIR")
        if changes:
            raise TypeError("changes= only applies with resume=RUN_DIR")
        return config, None, emit
    ckpt = load_run_of([kind], resume, "latest", need_trainer=True)
    wanted = dict(changes or {})
    if config is not None:
        saved = ckpt.train_config.to_dict()
        for name, value in config.to_dict().items():
            if value != saved[name] and value != "":
                wanted.setdefault(name, value)
    out_dir = wanted.pop("out_dir", "")
    if out_dir and Path(out_dir).resolve() != ckpt.run_dir.resolve():
        raise TrainingError(
            f"out_dir: a resume writes into its own run directory {ckpt.run_dir}, not {out_dir}; "
            f"copy the run first (cp -a {ckpt.run_dir} {out_dir}) and resume the copy"
        )
    resumed, notes = resumed_config(ckpt.train_config, wanted)
    for note in notes:
        emit({"kind": "note", "text": f"resume changes {note}"})
    return resumed, ckpt, emit


def _ignore(event: Event) -> None:
    """No one listens."""


def start_process(config: RunConfig) -> tuple[Launch, torch.device]:
    """Set torch's threads, read torchrun's launch (or one process) and pick this rank's device."""
    set_threads(config.threads)
    launch = launch_from_env()  # torchrun's WORLD_SIZE/RANK/LOCAL_RANK, or one process
    return launch, rank_device(config.device, launch)


def run_task(
    make_task: Callable[[DataParallel], Task],
    launch: Launch,
    device: torch.device,
    run_dir: Path,
    emit: Callable[[Event], None],
    resume: LoadedRun | None = None,
) -> FitResult:
    """``fit`` the task ``make_task(dp)`` builds, in ``run_dir`` (rank 0 creates and locks it; a
    fresh run refuses one that holds checkpoints). SIGTERM and Ctrl-C stay deferred to step
    boundaries until the process group is closed: when one rank exits, torchrun stops the
    others, and rank 0 must not die between its last checkpoint and the end."""
    with GracefulStop() as stop, DataParallel(launch, device) as dp, contextlib.ExitStack() as own:
        task = make_task(dp)
        dp.open_run_directory(run_dir, resume is None, own)
        return fit(task, run_dir.resolve(), dp, stop, emit, resume)
