"""The visual dialog task: DialogTrainConfig, batches of whole dialogs, VisDial's ranking metrics.

Each epoch visits the training dialogs in a seeded random order; a step trains on every round of
``batch_size`` dialogs (the history of round t is rounds before t of the same dialog)::

    permutation   7 2 9 0 ...                  torch.randperm, seeded by (seed, epoch)
    step k        dialogs perm[k*B:(k+1)*B] -> images (B, 3, S, S), questions (B, R, Tq),
                  facts (B, R, Tf), options (B, R, N), gt_index (B, R)

Validation ranks every round's N candidates (``DialogModel.option_scores``) and reports VisDial's
R@1, R@5, R@10, mean rank, MRR and, where the validation file has dense annotations, NDCG
(``rnnlab.metrics.retrieval``); the loss is the training loss (nats per round for the
discriminative decoder, per word for the generative one). The best checkpoint has the highest
MRR. The step, guard, stop rules and checkpoints are ``rnnlab.training.loop.fit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rnnlab.cells import CELL_HELP, CellName
from rnnlab.data.captions import CaptionVocab
from rnnlab.data.errors import DataError
from rnnlab.data.text import data_sha256
from rnnlab.data.visdial import (
    EncodedDialogs,
    VisDialDataset,
    dialog_words,
    encode_dialogs,
    load_dialog_images,
    read_visdial,
)
from rnnlab.loading import RunKind
from rnnlab.metrics.retrieval import ground_truth_ranks, ndcg, ranking_scores
from rnnlab.models.dialog import DialogConfig, DialogInputs, DialogModel
from rnnlab.training.config import BIG, RunConfig, retune
from rnnlab.training.distributed import DataParallel
from rnnlab.training.loop import Evaluation, FitResult, Score, Task
from rnnlab.training.session import Changes, OnEvent, RunPath, begin, run_task, start_process
from rnnlab.validation import ConfigError, setting

MODEL_FIELDS = (
    "encoder",
    "decoder",
    "history",
    "image",
    "cell",
    "embedding_size",
    "hidden_size",
    "dropout",
    "image_size",
    "cnn_channels",
    "cnn_blocks",
    "feature_size",
)


@dataclass
@retune(lr=2e-3, warmup_steps=50, eval_every=200, seed=1)
class DialogTrainConfig(RunConfig):
    """Every setting of a visual dialog run; CLI flags are these names in kebab-case."""

    data: str = setting("", "training dialogs: a VisDial v1.0 JSON file")
    val_data: str = setting("", "validation dialogs: a VisDial v1.0 JSON file")
    images: str = setting("", "image folder (default: images/ beside the JSON, else its folder)")
    dense: str = setting("", "dense relevance annotations of the validation file (for NDCG)")
    min_count: int = setting(
        1, "keep words seen at least this often in training dialogs", low=1, high=10**9
    )
    max_length: int = setting(
        20, "questions and answers are cut to this many words", low=1, high=1000
    )
    # model (see DialogConfig)
    encoder: Literal["late_fusion", "hierarchical"] = setting(
        "late_fusion", "late fusion (LF) or hierarchical recurrent (HRE) encoder"
    )
    decoder: Literal["discriminative", "generative"] = setting(
        "discriminative", "rank by dot product, or by an answer LM's log-likelihood"
    )
    history: bool = setting(True, "use the dialog history (--no-history: the ablation)")
    image: bool = setting(True, "use the image (--no-image --no-history: question only)")
    cell: CellName = setting("lstm", CELL_HELP)
    embedding_size: int = setting(64, "word embedding size", low=1, high=65536)
    hidden_size: int = setting(128, "hidden units of each recurrent network", low=1, high=65536)
    dropout: float = setting(0.0, "dropout on the fused encoding", low=0.0, high=0.95)
    image_size: int = setting(32, "images are resized to this side", low=8, high=1024)
    cnn_channels: int = setting(16, "CNN first-stage channels", low=1, high=1024)
    cnn_blocks: int = setting(3, "CNN stages", low=1, high=8)
    feature_size: int = setting(128, "image feature size (CNN output)", low=1, high=1_000_000)
    batch_size: int = setting(16, "dialogs per step (each with all its rounds)", low=1, high=65536)
    eval_dialogs: int = setting(
        0, "validation dialogs ranked per evaluation (0: all)", low=0, high=BIG, resume="free"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        step = 2 ** (self.cnn_blocks - 1)
        if self.image and self.image_size % step:
            raise ConfigError(
                "image_size",
                f"a multiple of {step} (--cnn-blocks "
                f"{self.cnn_blocks} pools {self.cnn_blocks - 1} times)",
                self.image_size,
            )

    def model_config(self, vocab_size: int) -> DialogConfig:
        return DialogConfig(
            vocab_size=vocab_size, **{name: getattr(self, name) for name in MODEL_FIELDS}
        )


@dataclass
class DialogSplit:
    """One split ready for the model: the dataset, its arrays and its images (D, 3, S, S)."""

    dataset: VisDialDataset
    encoded: EncodedDialogs
    pixels: Tensor

    def inputs(self, rows: Tensor, device: torch.device) -> DialogInputs:
        """The dialogs at ``rows`` (B,) as model inputs on ``device`` (lengths stay on CPU)."""
        e, r = self.encoded, rows.numpy()
        return DialogInputs(
            images=self.pixels[rows].to(device),
            questions=torch.from_numpy(e.questions[r]).to(device),
            question_lengths=torch.from_numpy(e.question_lengths[r]),
            facts=torch.from_numpy(e.facts[r]).to(device),
            fact_lengths=torch.from_numpy(e.fact_lengths[r]),
        )

    def targets(self, rows: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(options (B, R, N), gt_index (B, R), every answer row (A, T)) on ``device``."""
        e, r = self.encoded, rows.numpy()
        return (
            torch.from_numpy(e.options[r]).to(device),
            torch.from_numpy(e.gt_index[r]).to(device),
            torch.from_numpy(e.answers).to(device),
        )


def load_split(
    path: str | Path, config: Any, vocab: CaptionVocab | None, dense: str = "", images: str = ""
) -> tuple[DialogSplit, CaptionVocab]:
    """Read a VisDial file (its images, its dense annotations) and encode it with ``vocab``
    (None: a vocabulary built from this file's words, ``config.min_count``); ``config`` is a
    train config (max_length, image, image_size). Returns the split and the vocabulary."""
    dataset = read_visdial(path, images or None, dense or None)
    vocab = vocab or CaptionVocab.build(dialog_words(dataset), config.min_count)
    encoded = encode_dialogs(dataset, vocab, config.max_length)
    size = config.image_size
    pixels = (
        torch.from_numpy(load_dialog_images(dataset, size))
        if config.image
        else (torch.zeros(len(dataset.dialogs), 3, size, size, dtype=torch.uint8))
    )
    return DialogSplit(dataset, encoded, pixels), vocab


@torch.no_grad()
def rank_options(
    model: DialogModel,
    split: DialogSplit,
    device: torch.device,
    limit: int = 0,
    batch_size: int = 16,
) -> tuple[Tensor, float]:
    """Scores (D, R, N) of every round's options for the first ``limit`` (0: all) dialogs, and
    the mean loss (nats per round or per word, as in training)."""
    was_training = model.training
    model.eval()
    try:
        D = min(len(split.dataset.dialogs), limit or len(split.dataset.dialogs))
        scores, total, count = [], 0.0, 0
        step = batch_size if model.config.decoder == "discriminative" else max(1, batch_size // 4)
        for i in range(0, D, step):
            rows = torch.arange(i, min(D, i + step))
            e = model.encode(split.inputs(rows, device))
            options, gt, answers = split.targets(rows, device)
            scores.append(model.option_scores(e, options, answers).float().cpu())
            loss, n = model.loss(e, options, gt, answers)
            total, count = total + float(loss), count + n
        return torch.cat(scores), total / max(1, count)
    finally:
        model.train(was_training)


def dialog_metrics(scores: Tensor, encoded: EncodedDialogs) -> dict[str, float]:
    """R@1/5/10, mean rank, MRR, NDCG (where relevance is annotated) of scores (D, R, N), and
    R@1 by coreference distance (``r1_coref_<d>``, where distances are given; 4 and more as
    ``r1_coref_4+``)."""
    D, R, N = scores.shape
    gt = torch.from_numpy(encoded.gt_index[:D])
    ranks = ground_truth_ranks(scores.reshape(D * R, N), gt.reshape(-1))
    relevance = torch.from_numpy(encoded.relevance[:D]).reshape(D * R, N)
    annotated = ~torch.isnan(relevance[:, 0])
    ndcgs = (
        ndcg(scores.reshape(D * R, N)[annotated], relevance[annotated])
        if bool(annotated.any())
        else None
    )
    out = {f"{k}": v for k, v in ranking_scores(ranks, ndcgs).as_dict().items()}
    coref = torch.from_numpy(encoded.coref[:D]).reshape(-1)
    for d in sorted({int(c) for c in coref if c >= 0}):
        if d >= 4:
            continue
        out[f"r1_coref_{d}"] = float((ranks[coref == d] == 1).double().mean())
    if bool((coref >= 4).any()):
        out["r1_coref_4+"] = float((ranks[coref >= 4] == 1).double().mean())
    return out


class DialogTask(Task):
    """Batches of whole dialogs; each rank trains on its block of them."""

    name = "dialog"
    unit = "rounds"
    scores = (Score("val_mrr", "best_mrr", higher_is_better=True),)

    def __init__(
        self,
        config: DialogTrainConfig,
        train: DialogSplit,
        val: DialogSplit,
        vocab: CaptionVocab,
        record: dict[str, Any],
    ) -> None:
        self.config, self.train, self.val, self.vocab, self.record = (
            config,
            train,
            val,
            vocab,
            record,
        )
        generative = config.decoder == "generative"
        self.loss_unit = "word" if generative else "round"
        self.num_classes = len(vocab) if generative else train.dataset.num_options

    def build_model(self) -> nn.Module:
        self.model = DialogModel(self.config.model_config(len(self.vocab)))
        return self.model

    def start_epoch(self, epoch: int, boundary: bool) -> None:
        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + epoch) % 2**63)
        self.order = torch.randperm(len(self.train.dataset.dialogs), generator=g)

    def steps_per_epoch(self) -> int:
        return max(1, len(self.train.dataset.dialogs) // self.config.batch_size)

    def train_loss(self, net: nn.Module, cursor: int, dp: DataParallel) -> tuple[Tensor, int]:
        B = self.config.batch_size
        picked = self.order[cursor * B : (cursor + 1) * B]
        rounds = len(picked) * self.train.dataset.num_rounds
        weight, whole = 1.0, None
        if dp.active:  # this rank's dialogs; its summed loss is weighed by the whole batch's count
            options, gt, answers = self.train.targets(picked, torch.device("cpu"))
            whole = (
                rounds
                if self.config.decoder == "discriminative"
                else _truth_words(options, gt, answers)
            )
            mine, weight = dp.shard_examples(list(range(len(picked))))
            picked = picked[mine]
        options, gt, answers = self.train.targets(picked, dp.device)
        loss, count = net(self.train.inputs(picked, dp.device), options, gt, answers)
        if whole is not None:
            return loss * (weight * dp.world_size / whole), rounds
        return loss / max(1, count), rounds

    def evaluate(self, model: nn.Module, dp: DataParallel) -> Evaluation | None:
        if not dp.is_main:
            return None
        scores, loss = rank_options(
            model,
            self.val,
            dp.device,
            self.config.eval_dialogs,  # type: ignore[arg-type]
            self.config.batch_size,
        )
        metrics = {"val_loss": loss}
        metrics.update({f"val_{k}": v for k, v in dialog_metrics(scores, self.val.encoded).items()})
        return Evaluation(metrics)

    def checkpoint_files(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.record, self.vocab.to_json()

    def start_fields(self) -> dict[str, Any]:
        ds = self.train.dataset
        return {
            "data": f"vocab {len(self.vocab)}, {len(ds.dialogs):,} training dialogs x "
            f"{ds.num_rounds} rounds, {ds.num_options} options"
        }


def _truth_words(options: Tensor, gt: Tensor, answers: Tensor) -> int:
    truth = answers[options.gather(2, gt[:, :, None]).flatten()]
    return int((truth[:, 1:] != 0).sum())


def train_dialog(
    config: DialogTrainConfig | None = None,
    *,
    resume: RunPath = None,
    changes: Changes = None,
    on_event: OnEvent = None,
) -> FitResult:
    """Train a DialogModel per ``config``, or resume the run directory ``resume`` with
    ``changes`` (``rnnlab.training.session.begin``). Events and signals as in
    ``rnnlab.training.loop.fit``."""
    config, ckpt, emit = begin(KIND, config, resume, changes, on_event)
    launch, device = start_process(config)
    if not config.data or not config.val_data:
        raise DataError(
            "data: training and validation dialogs are needed (--data FILE "
            "--val-data FILE, VisDial v1.0 JSON)"
        )
    train, vocab = load_split(config.data, config, ckpt.vocab if ckpt else None, "", config.images)
    val, _ = load_split(config.val_data, config, vocab, config.dense, config.images)
    if val.dataset.num_options != train.dataset.num_options:
        raise DataError(
            f"{val.dataset.source}: {val.dataset.num_options} options per round, but "
            f"the training file has {train.dataset.num_options}"
        )
    run_dir = (
        ckpt.run_dir
        if ckpt
        else Path(config.out_dir or f"runs/{Path(config.data).stem}-dialog-{config.encoder}")
    )
    record = _record(config, train, val, run_dir)
    if ckpt is not None and ckpt.record.get("sha256") != record["data"]["sha256"]:
        raise DataError(
            f"{train.dataset.source}: changed since the run started (sha256 "
            "differs); resume with the dialogs the run was trained on"
        )
    for name, split in (("train", train), ("val", val)):
        if split.encoded.truncated:
            emit(
                {
                    "kind": "note",
                    "text": f"{split.encoded.truncated} {name} text(s) cut to "
                    f"--max-length {config.max_length} words",
                }
            )
    task = DialogTask(config, train, val, vocab, record)
    return run_task(lambda dp: task, launch, device, run_dir, emit, ckpt)


def _record(
    config: DialogTrainConfig, train: DialogSplit, val: DialogSplit, run_dir: Path
) -> dict[str, Any]:
    """The stored train config (absolute paths) and what the data was."""
    absolute = {
        k: str(Path(getattr(config, k)).resolve()) if getattr(config, k) else ""
        for k in ("data", "val_data", "dense")
    }
    train_dict = {
        **config.to_dict(),
        **absolute,
        "out_dir": str(run_dir.resolve()),
        "images": str(Path(config.images).resolve()) if config.images else "",
    }
    return {
        "train": train_dict,
        "data": {"source": absolute["data"], "sha256": data_sha256(train.dataset.source)},
    }


@torch.no_grad()
def answer_in_turn(
    run: Any, image: Path, caption: str, questions: list[str], *, beam: int = 1
) -> list[str]:
    """Answer ``questions`` about ``image`` one after another, each with the caption and the
    earlier questions and the model's own answers as its history (VisDial's setting at test
    time). A generative model writes its answers (``rnnlab.decoding``: greedy, or beam search of
    width ``beam``); a discriminative one picks the best of the answers of the run's training
    file. Raises DataError for an unreadable image or a caption without words."""
    from rnnlab import decoding
    from rnnlab.data.captions import END, START, load_images, tokenize

    model: DialogModel = run.model
    config, vocab = run.train_config, run.vocab
    device = next(model.parameters()).device
    words = tokenize(caption)
    if not words:
        raise DataError(f"--caption: {caption!r} has no words")
    size = config.image_size
    pixels = (
        torch.from_numpy(load_images([image], size))
        if config.image
        else torch.zeros(1, 3, size, size, dtype=torch.uint8)
    )
    table = None
    if config.decoder == "discriminative":
        pool = read_visdial(config.data, config.images or None)
        table = torch.from_numpy(encode_dialogs(pool, vocab, config.max_length).answers)
        texts = [" ".join(a) for a in pool.answers]
    L = config.max_length
    asked: list[list[int]] = []
    facts: list[list[int]] = [vocab.encode(words[: 2 * L])]
    answers: list[str] = []
    for question in questions:
        q = vocab.encode(tokenize(question)[:L]) or [vocab.unk_id or 3]
        asked.append(q)
        inputs = DialogInputs(
            pixels.to(device), *_padded([asked], device), *_padded([facts], device)
        )
        e = model.encode(inputs)[:, -1]  # (1, H): this round's encoding
        if table is not None:
            a = model.encode_answers(table.to(device))  # (A, H)
            answer = texts[int((a @ e[0]).argmax())]
        else:
            state = model.start(e)
            start = torch.full((1,), START, dtype=torch.long, device=device)
            if beam > 1:
                found = decoding.beam_search(
                    model.step, model.reorder, state, start, beam=beam, max_length=L + 1, eos=END
                )[0][0]
            else:
                found = decoding.greedy(
                    model.step, model.reorder, state, start, max_length=L + 1, eos=END
                )[0]
            answer = " ".join(vocab.decode(found.tokens))
        answers.append(answer)
        facts.append((q + vocab.encode(tokenize(answer)))[: 2 * L] or q)
    return answers


def _padded(rows: list[list[list[int]]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Token lists (B, R, *) -> ids (B, R, T) on ``device`` and lengths (B, R) on CPU."""
    T = max(len(r) for d in rows for r in d)
    ids = torch.zeros(len(rows), len(rows[0]), T, dtype=torch.long)
    lengths = torch.zeros(len(rows), len(rows[0]), dtype=torch.long)
    for b, d in enumerate(rows):
        for t, r in enumerate(d):
            ids[b, t, : len(r)] = torch.tensor(r)
            lengths[b, t] = len(r)
    return ids.to(device), lengths


# -- its run directories --------------------------------------------------------------------------

KIND = RunKind(
    "dialog",
    DialogTrainConfig,
    DialogConfig,
    DialogModel,
    lambda data, source: {"vocab": CaptionVocab.from_json(data, source)},
    sizes=lambda c: {"vocab": c.vocab_size},
)
