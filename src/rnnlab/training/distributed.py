"""Data-parallel training on torch.distributed: ranks, sharding, the per-step agreement, reductions
and the gathers a checkpoint needs. One implementation that every task's loop uses.

``torchrun --nproc_per_node=N -m rnnlab train ...`` starts N copies of the normal CLI with
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment. ``launch_from_env`` reads them; ``DataParallel`` opens the process group (gloo on
CPU, NCCL on CUDA with rank r on ``cuda:LOCAL_RANK``), wraps the model in
``DistributedDataParallel`` (gradients averaged over ranks in backward) and shards each batch.
Without torchrun (or with ``WORLD_SIZE=1``) it is a single process: no group, no wrapper, no
collective, and every method is the identity or a plain ``.item()``.

Sharding: rank r of W takes one contiguous block of rows of the global batch. For truncated BPTT
(B streams, see ``rnnlab.data.tbptt``) with B = 6 and W = 2::

    stream 0 | a b | c d | ...    rank 0: streams 0-2, its carried state h[:, 0:3]  (L, B/W, H)
    stream 1 | e f | g h | ...
    stream 2 | i j | k l | ...
    stream 3 | m n | o p | ...    rank 1: streams 3-5, its carried state h[:, 3:6]
    stream 4 | q r | s t | ...
    stream 5 | u v | w x | ...

so a stream's hidden state never leaves its rank, and the mean of the ranks' losses (equal
shards) is the loss of the whole batch: W processes compute what one process computes on the
same global batch, up to float summation order.

Once per step ``agree`` all-reduces one small tensor: the loss, a stop flag (a SIGTERM or
Ctrl-C on any rank) and rank 0's clock (for ``max_minutes`` and a schedule that follows it), so
every rank takes the same decisions and stops at the same step. A rank that dies makes the next
collective of the others fail (gloo sees the closed connection at once; a rank that hangs is
caught by the collective timeout, ``RNNLAB_DIST_TIMEOUT`` seconds, default 300);
``DataParallel`` turns that into one ``RankLostError`` line.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import re
import struct
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from rnnlab.cells import State
from rnnlab.checkpoint import CheckpointError, flatten_state, list_checkpoints, unflatten_state
from rnnlab.io import UnsafePathError
from rnnlab.runtime import resolve_device
from rnnlab.training.tools import RunLock, TrainingError
from rnnlab.validation import ConfigError

Event = dict[str, Any]
TIMEOUT_ENV = "RNNLAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0  # longer than any step, evaluation or checkpoint write on rank 0


class RankLostError(TrainingError):
    """Another rank died or stopped answering: a collective failed or timed out."""


# -- what torchrun says ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """This process's place in the run: ``world_size`` processes, this one is ``rank`` (global)
    and ``local_rank`` (on its node, which picks its GPU). ``timeout_s`` bounds every collective."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch:
    """The launch torchrun describes in ``env`` (default ``os.environ``); no ``WORLD_SIZE``
    means a single process. Malformed values raise ConfigError naming the variable."""
    env = os.environ if env is None else env

    def integer(name: str, default: int, low: int, high: int | None = None) -> int:
        text = env.get(name, "").strip()
        if not text:
            return default
        bound = f"<= {high}" if high is not None else ""
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise ConfigError(name, f"an integer >= {low} {bound}".strip(), text, "environment")
        return value

    world = integer("WORLD_SIZE", 1, 1)
    rank = integer("RANK", 0, 0, world - 1)
    local = integer("LOCAL_RANK", 0, 0, world - 1)
    text = env.get(TIMEOUT_ENV, "").strip()
    try:
        timeout = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < 1e7:
        raise ConfigError(TIMEOUT_ENV, "seconds, a number > 0", text, "environment")
    return Launch(world, rank, local, timeout)


def main_reports(emit: Callable[[Event], None], launch: Launch) -> Callable[[Event], None]:
    """``emit`` on rank 0 and a no-op on the other ranks: rank 0 reports for the run (progress,
    notes, samples); errors are still raised on every rank."""
    return emit if launch.rank == 0 else _ignore


def _ignore(event: Event) -> None:
    """The progress events of a rank other than 0."""


def rank_device(name: str, launch: Launch) -> torch.device:
    """The device of this rank: ``resolve_device(name)`` for one process; under torchrun CPU, or
    ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` (one GPU per process, as NCCL needs)."""
    if not launch.distributed:
        return resolve_device(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise ConfigError(
            "device", "auto, cpu or cuda under torchrun (rank r uses cuda:LOCAL_RANK)", name
        )
    count = torch.cuda.device_count()
    if not count:
        raise ConfigError("device", "cpu: this node has no CUDA GPU", name)
    if launch.local_rank >= count:
        raise ConfigError(
            "LOCAL_RANK", f"< {count}, the GPUs of this node (torchrun --nproc_per_node {count})",
            launch.local_rank, "environment",
        )  # fmt: skip
    return torch.device("cuda", launch.local_rank)


def rank_seed(seed: int, rank: int) -> int:
    """The RNG seed of ``rank`` after the model is built (rank 0 keeps ``seed``, so one process
    runs exactly as before): every rank's dropout draws its own masks, not copies of rank 0's."""
    return seed if rank == 0 else (seed + 0x9E3779B97F4A7C15 * rank) % 2**63


# -- sharding -------------------------------------------------------------------------------------


def shard_rows(total: int, world_size: int, rank: int) -> slice:
    """Rows ``[rank * total // W, (rank + 1) * total // W)`` of a batch of ``total`` rows: one
    contiguous block per rank, disjoint, covering all rows (blocks differ by at most one row
    when ``total`` is not a multiple of W; evaluation allows that, training does not)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < {world_size}, got {rank}")
    return slice(rank * total // world_size, (rank + 1) * total // world_size)


def check_divisible(
    batch_size: int, world_size: int, name: str = "batch_size", *, resuming: bool = False
) -> int:
    """Rows per rank of a global batch; ConfigError when W does not divide it (the global batch
    is the user's setting and every rank must take an equal share). On resume the batch is the
    run's and cannot change, so the error names the process counts that fit it instead."""
    if batch_size % world_size:
        fits = [w for w in range(1, batch_size + 1) if batch_size % w == 0]
        counts = ", ".join(map(str, fits[:16])) + (", ..." if len(fits) > 16 else "")
        if resuming:
            raise ConfigError(
                "world_size",
                f"a process count that divides the run's {name} {batch_size} (a resumed run "
                f"keeps it): torchrun --nproc-per-node one of {counts}",
                world_size,
            )
        lower, upper = batch_size - batch_size % world_size, batch_size + (-batch_size) % world_size
        raise ConfigError(
            name,
            f"a multiple of the {world_size} processes (each trains {name} / {world_size} rows; "
            f"e.g. {lower or upper} or {upper}), or run on {counts} processes",
            batch_size,
        )
    return batch_size // world_size


def shard_state(state: State | None, rows: slice) -> State | None:
    """The rows of a carried state, in fresh memory: (L, B, H) -> (L, rows, H); h and c alike
    for the LSTM. A copy, not a view: a view of a checkpoint's buffer may be misaligned, and a
    GEMM may round differently on misaligned memory (MKL), which would end bit-exact resume."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s[:, rows].clone() for s in state)  # type: ignore[return-value]
    return state[:, rows].clone()


# -- the ranks of one run -------------------------------------------------------------------------


class DataParallel:
    """The ranks of one run (a context manager): opens the process group on entry and closes it
    on exit, turning a failed or timed-out collective into one ``RankLostError`` line.

    With ``world_size`` 1 nothing is opened and every method costs nothing: ``wrap`` returns the
    model, ``shard`` its argument, ``agree`` the loss's ``.item()``.
    """

    def __init__(self, launch: Launch, device: torch.device) -> None:
        self.launch = launch
        self.device = device
        self.rank = launch.rank
        self.world_size = launch.world_size
        self.active = launch.distributed
        self.is_main = launch.rank == 0

    def __enter__(self) -> DataParallel:
        if not self.active:
            return self
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ConfigError(
                    name, "set by torchrun (torchrun --nproc_per_node N -m rnnlab ...)", "unset",
                    "environment",
                )  # fmt: skip
        timeout = datetime.timedelta(seconds=self.launch.timeout_s)
        with self.collectives():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
                dist.init_process_group("nccl", timeout=timeout, device_id=self.device)
            else:
                dist.init_process_group("gloo", timeout=timeout)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any):
        if not self.active or not dist.is_initialized():
            return None
        dist.destroy_process_group()
        # The group's worker threads end only when its last reference (the DDP wrapper, often in
        # a reference cycle) is collected. Left to interpreter shutdown, a gloo thread that then
        # takes the GIL aborts the process ("terminate called without an active exception", about
        # one exit in four with torch 2.13), so collect now; a traceback's finished frames would
        # keep the wrapper alive, so their locals go first.
        if tb is not None:
            traceback.clear_frames(tb)
        gc.collect()
        if error is not None and _collective_failure(error):
            raise self._lost(error) from None
        return None

    @contextlib.contextmanager
    def collectives(self) -> Iterator[None]:
        """Turns a failed collective inside the block into RankLostError (one line)."""
        try:
            yield
        except (RuntimeError, ValueError) as e:
            if self.active and _collective_failure(e):
                raise self._lost(e) from None
            raise

    def _lost(self, error: BaseException) -> RankLostError:
        return RankLostError(
            f"rank {self.rank} of {self.world_size}: another rank died or stopped answering "
            f"({_short(error)}); all ranks stop (collective timeout {self.launch.timeout_s:g} s, "
            f"{TIMEOUT_ENV}); resume from the last checkpoint"
        )

    # -- the model and the data --

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` (rank 0's parameters broadcast, gradients averaged
        in backward), or ``model`` itself for one process. Checkpoint ``model``, not the wrapper."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # rnnlab's models hold no running statistics (GroupNorm, not BatchNorm; their buffers
        # are constants), so DDP need not re-broadcast buffers before every forward.
        with self.collectives():
            return nn.parallel.DistributedDataParallel(
                model, device_ids=ids, forward_sync_buffers=False
            )

    def rows(self, total: int) -> slice | None:
        """This rank's block of a batch of ``total`` rows (see ``shard_rows``); None (all rows,
        nothing to slice) for one process."""
        return shard_rows(total, self.world_size, self.rank) if self.active else None

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's rows of a (B, ...) batch: (B / W, ...)."""
        rows = self.rows(batch.shape[0])
        return batch if rows is None else batch[rows]

    def shard_examples(self, batch: list[int]) -> tuple[list[int], float]:
        """This rank's block of a batch of example indices, and its weight in the loss: 1, or 0
        for a rank whose block is empty (a batch with fewer examples than ranks), which then
        trains on the batch's last example with weight 0: DDP needs every rank's backward, and
        it adds nothing. Blocks may differ by one example; weigh each rank's summed loss by the
        whole batch's count (see the seq2seq loop) and the step is the one-process step."""
        rows = self.rows(len(batch))
        if rows is None:
            return batch, 1.0
        return (batch[rows], 1.0) if batch[rows] else (batch[-1:], 0.0)

    def shard_state(self, state: State | None) -> State | None:
        """This rank's streams of a whole carried state, copied (see ``shard_state``): (L, B, H)
        -> (L, B / W, H); all of it for one process."""
        whole = state[0] if isinstance(state, tuple) else state
        if whole is None:
            return None
        return shard_state(state, self.rows(whole.shape[1]) or slice(None))

    # -- collectives (each a no-op for one process) --

    def agree(self, loss: Tensor, stop: bool, clock: float) -> tuple[float, bool, float]:
        """The step's one collective: (the mean of the ranks' losses, whether any rank's
        ``stop`` is set, rank 0's ``clock``). ``stop``: this rank was signalled; ``clock``: its
        elapsed seconds, of which only rank 0's counts, so that decisions by the wall clock
        (``max_minutes``, a schedule that follows it) are the same on every rank."""
        if not self.active:
            return loss.item(), stop, clock
        values = torch.tensor(
            [float(loss.detach()), float(stop), clock if self.is_main else 0.0],
            dtype=torch.float64,
            device=self.device,
        )
        with self.collectives():
            dist.all_reduce(values)
        total, stops, main_clock = values.tolist()
        return total / self.world_size, stops > 0, main_clock

    def stop_now(self, agreed: bool, signalled: bool) -> bool:
        """Whether a signal stops the run at this step: the flag ``agree`` returned under DDP
        (all ranks at one step); for one process, the signal flag as it is now, so a signal that
        lands while a step is reported still stops that step, as it always did."""
        return agreed if self.active else signalled

    def sum(self, *values: float) -> tuple[float, ...]:
        """Sums over ranks in float64, e.g. (nats, characters) of a sharded evaluation: the
        exact totals, not a mean of means."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        with self.collectives():
            dist.all_reduce(t)
        return tuple(t.tolist())

    def gather_state(self, state: State | None) -> State | None:
        """Every rank's carried state joined along the batch, on every rank: (L, B / W, H) ->
        (L, B, H) in rank (= stream) order, so a checkpoint holds the whole batch's state."""
        if not self.active or state is None:
            return state

        def join(t: Tensor) -> Tensor:
            parts = [torch.empty_like(t) for _ in range(self.world_size)]
            with self.collectives():
                dist.all_gather(parts, t.contiguous())
            return torch.cat(parts, dim=1)

        return tuple(join(s) for s in state) if isinstance(state, tuple) else join(state)

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank in rank order, on every rank; ``[obj]`` for one process.

        ``obj`` is anything ``flatten_state`` stores (RNG states, counters, dicts of tensors); it
        travels as JSON + safetensors bytes, never pickled (unlike ``all_gather_object``).
        Tensors come back on the CPU.
        """
        if not self.active:
            return [obj]
        blob = _encode(obj)
        data = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(self.device)
        size = torch.tensor([len(blob)], dtype=torch.int64, device=self.device)
        sizes = [torch.empty_like(size) for _ in range(self.world_size)]
        with self.collectives():
            dist.all_gather(sizes, size)
            longest = max(int(s) for s in sizes)
            padded = torch.zeros(longest, dtype=torch.uint8, device=self.device)
            padded[: len(blob)] = data
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded)
        blobs = [bytes(p[: int(n)].cpu().numpy()) for p, n in zip(parts, sizes, strict=True)]
        return [_decode(b) for b in blobs]

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (anything ``gather_objects`` carries): decisions only
        rank 0 computes, such as an evaluation's verdict, so every rank acts on the same."""
        return self.gather_objects(value)[0] if self.active else value

    def check_same(self, what: str, value: int, fix: str) -> None:
        """Raise (on every rank) when the ranks hold different ``value``s of ``what``, e.g. the
        step a resume starts from when nodes see different copies of a run directory."""
        if not self.active:
            return
        values = [int(v) for v in self.gather_objects(int(value))]
        if len(set(values)) > 1:
            seen = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise TrainingError(f"{what} differs between ranks ({seen}); {fix}")

    @contextlib.contextmanager
    def together(self, what: str) -> Iterator[None]:
        """A set-up block that may fail on some ranks only (a file one node lacks, the run lock
        rank 0 takes): afterwards every rank learns whether all succeeded, and if one failed the
        others stop too, with one line, instead of waiting in the next collective until the
        timeout. The failed rank raises its own error."""
        failed: BaseException | None = None
        try:
            yield
        except Exception as e:
            failed = e
        if self.active:
            flags = self.gather_objects(failed is not None)
            ranks = [r for r, bad in enumerate(flags) if bad]
            if failed is None and ranks:
                raise TrainingError(
                    f"{what} failed on rank {', '.join(map(str, ranks))} (its error is above); "
                    f"rank {self.rank} stops too"
                )
        if failed is not None:
            raise failed

    def open_run_directory(self, run_dir: Path, fresh: bool, stack: contextlib.ExitStack) -> None:
        """Rank 0 creates ``run_dir`` and takes its RunLock for as long as ``stack`` is open; a
        ``fresh`` run refuses a directory that already holds checkpoints (ValueError). Every
        rank learns the outcome (``together``); the other ranks never touch the directory."""
        with self.together("opening the run directory"):
            if self.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                refuse_links(run_dir)
                stack.enter_context(RunLock(run_dir))
                if fresh and list_checkpoints(run_dir):
                    raise ValueError(
                        f"out_dir: {run_dir} already holds a run; resume it with --resume "
                        f"{run_dir} or choose another --out-dir"
                    )

    def wait_for_all(self) -> None:
        """A barrier (one tiny all-reduce, which gloo and NCCL both run): no rank goes on, or
        exits, before every rank has got here, e.g. rank 0 has finished writing a checkpoint."""
        if self.active:
            self.sum(0.0)


# -- checkpoints ----------------------------------------------------------------------------------


RUN_FILES = (".lock", "metrics.jsonl", "loss.png", "best")  # what training writes into a run


def refuse_links(run_dir: Path) -> None:
    """Refuse, before any work, a run directory in which what training writes (its lock, log,
    plot and checkpoints) is a symbolic link: a run directory may come from anyone, and every
    write stays inside it (``rnnlab.io``) - better said now than after an hour of training."""
    names = [*RUN_FILES, *(p.name for p in run_dir.glob("step-*"))]
    for name in names:
        if (run_dir / name).is_symlink():
            raise UnsafePathError(f"{run_dir / name}: is a symbolic link; the files of a run "
                                  "directory must be its own (remove the link)")  # fmt: skip


def rank_rng_fields(states: list[Any]) -> dict[str, Any]:
    """The trainer-state fields for every rank's RNG state (``gather_objects(capture_rng())``):
    ``rng`` is rank 0's (a one-process checkpoint has only it, as before), ``rank_rng`` the
    others' in rank order."""
    return {"rng": states[0], **({"rank_rng": states[1:]} if len(states) > 1 else {})}


def saved_rng(trainer: Mapping[str, Any], rank: int, source: str) -> tuple[Any, int]:
    """(the RNG state ``rank`` saved, or None for a rank the checkpoint did not have; how many
    processes saved it), from the fields ``rank_rng_fields`` wrote."""
    extra = trainer.get("rank_rng", [])
    if not isinstance(extra, list) or not all(isinstance(r, dict) for r in extra):
        raise CheckpointError(f"{source}: rank_rng: expected a list of RNG states")
    states = [trainer["rng"], *extra]
    return (states[rank] if rank < len(states) else None), len(states)


# -- helpers --------------------------------------------------------------------------------------

_FAILURE_WORDS = (
    "gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe",
    "processgroup", "socket",
)  # fmt: skip


def _collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because a peer died or timed out."""
    if isinstance(error, RankLostError):
        return False  # already said
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(word in text for word in _FAILURE_WORDS)


def _short(error: BaseException) -> str:
    """The gist of a backend's message: first line, no ``[file.cc:123]`` prefix or advice."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\[[^\]]*:\d+\]\s*", "", text)
    return text.split(". This is typically")[0].strip().rstrip(".")


def _encode(obj: Any) -> bytes:
    tensors, tree = flatten_state(obj)
    header = json.dumps(tree).encode()
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return struct.pack("<Q", len(header)) + header + save_tensors(plain)


def _decode(blob: bytes) -> Any:
    (n,) = struct.unpack("<Q", blob[:8])
    tree = json.loads(blob[8 : 8 + n])
    return unflatten_state(load_tensors(blob[8 + n :]), tree)


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "DataParallel",
    "Launch",
    "RankLostError",
    "check_divisible",
    "launch_from_env",
    "main_reports",
    "rank_device",
    "rank_rng_fields",
    "rank_seed",
    "saved_rng",
    "shard_rows",
    "shard_state",
]
