"""Training: ``janus-fast train`` (also under ``torchrun --nproc_per_node N`` with DDP).

Output directory layout::

    OUT/spm.model         the joint SentencePiece model (trained on the first run)
    OUT/last/             the latest checkpoint + train_state.pt (resume point, written every
                          --save-every updates and at each epoch end)
    OUT/best/             the checkpoint with the best validation BLEU (validated at each epoch end,
                          and where a start stops within an epoch: --max-updates, --max-minutes)
    OUT/saves/u000900/    with --keep-every N: the model at every multiple of N updates (no train
                          state), for ``janus-fast average``
    OUT/metrics.jsonl     one JSON record per log interval and per validation

A run restarted with the same OUT resumes exactly where ``last`` was saved: model, optimizer,
scheduler, RNG states and the position in the epoch's batch order.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import math
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace

import sacrebleu
import torch
from tqdm import tqdm

from janus_fast.arguments import MAX_THREADS, check_device, check_int, flag, option
from janus_fast.checkpoint import (
    TOKENIZER_NAME,
    CheckpointError,
    atomic_write,
    load_pretrained,
    load_tokenizer,
    read_config,
    recover_directory,
    replace_directory,
    save_pretrained,
)
from janus_fast.data import (
    Batch,
    InputError,
    ParallelDataset,
    corpus_path,
    file_sha256,
    mask_targets,
    read_parallel,
)
from janus_fast.distributed import DistributedContext, environment_int
from janus_fast.model import OBJECTIVE_SIDES, TRAINED_OBJECTIVES, JanusConfig, JanusModel, decoding_defaults
from janus_fast.tokenizer import Tokenizer
from janus_fast.training.losses import LossWeights, compute_loss

TRAIN_STATE_NAME = "train_state.pt"
RANK_RNG_KEY = "rank_rngs"  # train_state.pt's key for every rank's (torch, mask) generator states
TRAIN_STATE_DIGEST = "train_state_sha256"  # config.json's key for the SHA-256 of train_state.pt
MAX_LR = 10.0


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a ``janus-fast train`` option."""

    output_dir: str = option(
        "runs/janus",
        "run folder: OUT/spm.model (the tokenizer), OUT/last/ (latest checkpoint and resume state), "
        "OUT/best/ (best validation checkpoint), OUT/saves/ (--keep-every), OUT/metrics.jsonl; a run started "
        "again with the same folder resumes from OUT/last/",
    )
    data_dir: str = option(
        "",
        "folder of the parallel corpus: one file per split and language, {split}.{lang} or "
        "{split}.{lang}.gz (e.g. train.de.gz, val.en), one sentence per line, aligned by line",
        required=True,
    )
    source_lang: str = option("de", "source language: the {lang} suffix of the source-side corpus files")
    target_lang: str = option("en", "target language: the {lang} suffix of the target-side corpus files")
    train_split: str = option("train", "the {split} name of the training files in --data-dir")
    valid_split: str = option(
        "val",
        "the {split} name of the validation files in --data-dir, validated at each epoch end and where "
        "--max-updates or --max-minutes stops a start within an epoch",
    )
    train_target: str | None = option(
        None,
        "file (plain or .gz) whose lines replace the training split's targets, aligned with its "
        "sources: e.g. a teacher's translations for sequence-level distillation (default: the split's own)",
    )
    init_from: str | None = option(
        None,
        "checkpoint folder to start from: its weights and its tokenizer, with a fresh optimizer and "
        "learning-rate schedule; the architecture options must match it (the dropouts may differ) "
        "(default: none, random initial weights)",
    )
    train_limit: int | None = option(None, "train on the first N sentence pairs only (default: all)")
    valid_limit: int | None = option(None, "validate on the first N sentence pairs only (default: all)")
    objective: str = option(
        "janus",
        "training loss: janus (AR and NAR cross-entropies, the auxiliary stream's and the KL terms "
        "that tie them, weighted by --weights-*), ar (AR cross-entropy only: an autoregressive baseline) or "
        "cmlm (NAR cross-entropy of the masked tokens and the length loss: a CMLM baseline)",
        choices=("janus", "ar", "cmlm"),
    )
    masking: str = option(
        "span",
        "which target tokens the NAR side learns to predict (objectives janus and cmlm): span (spans "
        "of Poisson(2) lengths until ceil(0.7 n) of the n tokens are drawn, about 55 in 100 masked, as in "
        "JANUS) or uniform (k ~ U[1, n] tokens at random, as in CMLM)",
        choices=("span", "uniform"),
    )
    tokenizer_type: str = option(
        "unigram",
        "model type of the joint SentencePiece tokenizer trained on the training sources and targets "
        "at the run's start (not with --init-from, whose tokenizer the run takes)",
        choices=("unigram", "bpe", "char", "word"),
    )
    # the architecture; its vocab_size is the size of the SentencePiece model trained for the run
    model: JanusConfig = field(default_factory=JanusConfig, metadata={"cli_prefix": ""})  # options without a prefix
    lr: float = option(
        1e-3,
        "peak learning rate of AdamW (betas 0.9, 0.98), reached after --warmup-updates and then "
        f"decayed as 1/sqrt(update); at most {MAX_LR:g}",
    )
    warmup_updates: int = option(
        1000,
        "updates of linear learning-rate warm-up to --lr; after them the rate is lr x sqrt(warmup-updates / update)",
    )
    weight_decay: float = option(1e-4, "AdamW's (decoupled) weight decay, >= 0")
    clip_norm: float = option(1.0, "clip the gradient's global L2 norm to this before each update")
    max_tokens: int = option(
        4096,
        "batch size in padded tokens per process: a batch's sentences x its longest sentence "
        "(source or target side, counting <bos> and <eos>) stay within this; one batch is one update",
    )
    epochs: int = option(10, "stop after this many passes over the training data in all (counting a resumed run's)")
    max_updates: int | None = option(
        None,
        "stop after this many updates in all, counting those of a resumed run (default: no limit; "
        "0 only trains the tokenizer, OUT/spm.model)",
    )
    max_minutes: float | None = option(
        None,
        "stop after this many minutes of wall-clock time, validation included, counted from the "
        "first update of this start (checked after each update), saving OUT/last/ (default: no limit)",
    )
    device: str = option("cpu", "torch device to train on: cpu, cuda, cuda:1, ...")
    save_every: int = option(200, "write OUT/last/ (model and resume state) every N updates, and at each epoch end")
    keep_every: int | None = option(
        None,
        "also keep the model every N updates as OUT/saves/uNNNNNN/ (no resume state), e.g. to "
        "average the last ones with janus-fast average (default: off)",
    )
    log_every: int = option(
        20,
        "every N updates append a record to OUT/metrics.jsonl: the loss, its terms and the gradient norm "
        "(each the mean over those N updates), tokens per second, and the learning rate of the last of them",
    )
    seed: int = option(1, "random seed: initial weights, batch order of each epoch, NAR masking")
    precision: str = option(
        "auto",
        "bf16 runs the forward pass under bf16 autocast, fp32 does not, auto does where the device "
        "computes bf16 natively (a CUDA GPU that supports it, a CPU with AVX-512 BF16 or AMX); the weights "
        "and the optimizer stay fp32",
        choices=("auto", "bf16", "fp32"),
    )
    threads: int | None = option(
        None, "CPU threads of each process (default: torch's; under torchrun, the CPUs shared out among the processes)"
    )
    valid_bleu: bool = option(
        True,
        "at each epoch end also translate the validation split and score it (sacreBLEU); the BLEU "
        "then picks OUT/best/, else the validation loss does",
    )
    valid_mode: str | None = option(
        None,
        "decoding for the validation BLEU: nar (mask-predict, 3 length candidates) or ar (greedy) "
        "(default: ar for --objective ar, else nar)",
        choices=("ar", "nar"),
    )
    valid_iterations: int = option(4, "mask-predict iterations of the validation BLEU's NAR decoding")
    progress: bool = option(True, "show a progress bar of each epoch")
    weights: LossWeights = field(default_factory=LossWeights)  # --weights-* options

    def __post_init__(self) -> None:
        """Refuse values no run can use before any work (tokenizer training, data reading)."""
        choices = {
            "objective": ("janus", "ar", "cmlm"),
            "masking": ("span", "uniform"),
            "precision": ("auto", "bf16", "fp32"),
            "tokenizer_type": ("unigram", "bpe", "char", "word"),
            "valid_mode": (None, "ar", "nar"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{flag(name)} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("max_tokens", "epochs", "save_every", "log_every", "warmup_updates", "valid_iterations"):
            check_int(flag(name), getattr(self, name), 1)
        for name in ("max_updates", "train_limit", "valid_limit", "threads", "keep_every"):
            if getattr(self, name) is not None:
                check_int(flag(name), getattr(self, name), 0 if name == "max_updates" else 1)
        check_int("--seed", self.seed, -(2**31), 2**31 - 1)
        check_device(self.device, "--device")
        if self.threads is not None and self.threads > MAX_THREADS:
            raise ValueError(f"--threads must be at most {MAX_THREADS}, got {self.threads}")
        if not 0 < self.lr <= MAX_LR:  # past it AdamW's steps overflow float32 (no schedule starts there)
            raise ValueError(f"--lr must be a number in (0, {MAX_LR:g}], got {self.lr}")
        if not 0 < self.clip_norm < math.inf:
            raise ValueError(f"--clip-norm must be a finite number > 0, got {self.clip_norm}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"--max-minutes must be > 0, got {self.max_minutes}")
        self._check_options_the_objective_uses()
        if self.valid_iterations > self.model.max_target_positions:
            raise ValueError(
                f"--valid-iterations must be at most --max-target-positions ({self.model.max_target_positions}), "
                f"got {self.valid_iterations}"
            )

    def _check_options_the_objective_uses(self) -> None:
        """ValueError for a non-default option the objective (or the validation decoding) never
        reads, as the decoding options refuse theirs: loss weights of terms the objective lacks,
        NAR masking for ``ar``, a validation mode whose side the objective does not train, NAR
        iterations for AR validation, validation decoding options without the validation BLEU."""
        objective, defaults = self.objective, LossWeights()
        uses = {"janus": None, "ar": ("label_smoothing",), "cmlm": ("length", "label_smoothing")}
        for item in fields(self.weights):
            name = item.name
            if uses[objective] is not None and name not in uses[objective]:
                if getattr(self.weights, name) != getattr(defaults, name):
                    users = " and ".join(o for o, used in uses.items() if used is None or name in used)
                    raise ValueError(
                        f"{flag(f'weights_{name}')} applies to --objective {users} only (the {objective} "
                        "loss has no such term)"
                    )
        if objective == "ar" and self.masking != TrainConfig.masking:
            raise ValueError("--masking applies to --objective janus and cmlm (the NAR side's targets), not ar")
        trains = OBJECTIVE_SIDES[objective]
        if self.valid_mode is not None and self.valid_mode not in trains:
            raise ValueError(
                f"--valid-mode {self.valid_mode}: --objective {objective} does not train that side (use "
                f"--valid-mode {trains[0]})"
            )
        if not self.valid_bleu:  # the validation BLEU's decoding options, without the BLEU
            for name in ("valid_mode", "valid_iterations"):
                if getattr(self, name) != getattr(TrainConfig, name):
                    raise ValueError(
                        f"{flag(name)} sets the validation BLEU's decoding: it does nothing with --no-valid-bleu"
                    )
        if self.validation_mode == "ar" and self.valid_iterations != TrainConfig.valid_iterations:
            raise ValueError("--valid-iterations applies to NAR validation (--valid-mode nar) only")

    @property
    def validation_mode(self) -> str:
        """The decoding of the validation BLEU: --valid-mode, by default ar for --objective ar, else nar."""
        return self.valid_mode or ("ar" if self.objective == "ar" else "nar")


def train_config(**values) -> TrainConfig:
    """A TrainConfig from flat options, as the command line gives them: the architecture's
    (``d_model=...``, ``vocab_size=...``) go to its ``JanusConfig``, ``weights`` stays nested."""
    architecture = {f.name for f in fields(JanusConfig)}
    model = JanusConfig(**{name: values.pop(name) for name in list(values) if name in architecture})
    return TrainConfig(model=model, **values)


@dataclass
class TrainState:
    """Where training stands: saved with every checkpoint."""

    update: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_bleu: float = float("-inf")  # the best validation score: BLEU, or minus the loss (--no-valid-bleu)
    train_seconds: float = 0.0
    best_measure: str = ""  # what best_bleu measures (Run.validation_measure; "": a run saved before it was kept)
    validated_update: int = 0  # the update of the last validation (at an epoch's end or a stop within one)
    # the loss terms summed over this epoch's updates since its last train record (--log-every), so
    # that the first record after a resume averages the same updates as an uninterrupted run's
    log_sums: dict[str, float] = field(default_factory=dict)
    log_updates: int = 0
    # this run's id, drawn when it starts, kept by resumes, written into every save's config.json
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))


def check_no_orphaned_run(output_dir: str) -> None:
    """InputError where ``output_dir`` holds the checkpoints of an earlier run (``best/``, ``saves/``)
    but no ``last/`` to resume it from: a new run there would overwrite some of them, cut its
    ``metrics.jsonl`` and leave the rest mixed with its own."""
    last = os.path.join(output_dir, "last")
    recover_directory(last)
    if os.path.exists(os.path.join(last, TRAIN_STATE_NAME)):
        return
    saves = os.path.join(output_dir, "saves")
    found = [name for name in ("best",) if os.path.exists(os.path.join(output_dir, name, "config.json"))]
    if os.path.isdir(saves) and any(name.startswith("u") for name in os.listdir(saves)):
        found.append("saves")
    if found:
        missing = f"no {last}/{TRAIN_STATE_NAME}" if os.path.exists(last) else "no last/"
        raise InputError(
            f"{output_dir} holds {' and '.join(name + '/' for name in found)} of an earlier run but {missing} to "
            "resume it from: a new run there would overwrite them and mix its checkpoints and metrics.jsonl with that "
            "run's; give another --output-dir, or delete them to start over"
        )


def use_bf16(precision: str, device: str = "cpu") -> bool:
    """Whether to train under bf16 autocast. "auto": on a CUDA device where it supports bf16; on
    the CPU where oneDNN reports native bf16 (avx512_bf16 / AMX), as without it bf16 matmuls fall
    back to a path ~50x slower than fp32."""
    if precision == "auto":
        if torch.device(device).type == "cuda":
            return torch.cuda.is_bf16_supported()
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision in ("bf16", "fp32"):
        return precision == "bf16"
    raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")


def inverse_sqrt(warmup: int):
    """LR multiplier: linear warm-up to 1 over ``warmup`` updates, then sqrt(warmup / update)."""

    def factor(update: int) -> float:
        update = update + 1
        return update / warmup if update < warmup else math.sqrt(warmup / update)

    return factor


TOKENIZER_RECORD_NAME = "spm.json"  # beside OUT/spm.model: what it was made from (tokenizer_record)


def init_from_tokenizer(directory: str) -> Tokenizer:
    """The SentencePiece tokenizer of the ``--init-from`` checkpoint; CheckpointError for a converted
    fairseq model, whose tokenizer is a fairseq dictionary that training cannot encode its data with."""
    if not os.path.isfile(os.path.join(directory, "config.json")):
        what = "no such folder" if not os.path.exists(directory) else "not a checkpoint (no config.json)"
        raise CheckpointError(f"--init-from {directory}: {what}")
    tokenizer = load_tokenizer(directory)
    if not isinstance(tokenizer, Tokenizer):
        raise CheckpointError(
            f"--init-from {directory}: a converted fairseq model (its tokenizer is a fairseq dictionary); training "
            "warm-starts from janus_fast checkpoints, whose tokenizer is a SentencePiece model"
        )
    return tokenizer


def tokenizer_record(config: TrainConfig, train_lines: list[str]) -> dict:
    """What the run's tokenizer is made from: --init-from's tokenizer (its digest), or the options
    and the training lines SentencePiece is trained on (their digest)."""
    if config.init_from:
        proto = init_from_tokenizer(config.init_from).model_proto
        return {"init_from_tokenizer_sha256": hashlib.sha256(proto).hexdigest()}
    lines = hashlib.sha256()
    for line in train_lines:
        lines.update(line.encode("utf-8") + b"\n")
    return {
        "tokenizer_type": config.tokenizer_type,
        "vocab_size": config.model.vocab_size,
        "train_lines_sha256": lines.hexdigest(),
    }


def check_run_tokenizer(config: TrainConfig, path: str, train_lines: list[str]) -> None:
    """ValueError unless OUT/spm.model (``path``) is this run's: a run to resume is checked option by
    option (check_resumable), its tokenizer against its last checkpoint's; without one, the tokenizer
    was left by a start killed before its first save (its record beside it, written first, must
    match this start's options and data) or is not this run's."""
    last = os.path.join(config.output_dir, "last")
    if os.path.exists(os.path.join(last, TRAIN_STATE_NAME)):
        last_tokenizer = os.path.join(last, "spm.model")
        if os.path.exists(last_tokenizer):
            with open(path, "rb") as mine, open(last_tokenizer, "rb") as saved_tokenizer:
                if mine.read() != saved_tokenizer.read():
                    raise ValueError(
                        f"{path} differs from the tokenizer of the run's last checkpoint ({last_tokenizer}): "
                        "its weights were trained on that one; put it back to resume"
                    )
        return
    record_path = os.path.join(config.output_dir, TOKENIZER_RECORD_NAME)
    if not os.path.exists(record_path):
        raise ValueError(
            f"{path} is not a tokenizer this run made ({TOKENIZER_RECORD_NAME} records what a run trains "
            "its tokenizer from, and there is none beside it): delete it to train one, or choose another "
            "--output-dir"
        )
    with open(record_path, encoding="utf-8") as handle:
        try:
            saved = json.load(handle)
        except ValueError:
            saved = {}
    described = {
        "train_lines_sha256": "--data-dir / --train-target: other training lines",
        "init_from_tokenizer_sha256": "--init-from: another tokenizer",
    }
    changed = [
        described.get(name) or f"{flag(name)} {saved.get(name)!r} -> {value!r}"
        for name, value in tokenizer_record(config, train_lines).items()
        if saved.get(name) != value
    ]
    if changed:
        raise ValueError(
            f"{path} was made for other options or data ({'; '.join(changed)}): the run would be trained "
            f"on that tokenizer; resume with the options it was made with, or delete it (and "
            f"{TOKENIZER_RECORD_NAME}) to train a new one"
        )


def load_tokenizer_for_run(config: TrainConfig, context: DistributedContext, train_lines: list[str]) -> Tokenizer:
    """The run's tokenizer, stored as OUT/spm.model: trained once by rank 0, or the ``init_from``
    checkpoint's."""
    path = os.path.join(config.output_dir, "spm.model")
    if context.is_main and os.path.exists(path):
        check_run_tokenizer(config, path, train_lines)
    elif context.is_main:  # the record first: a run killed between the two retrains it
        record = json.dumps(tokenizer_record(config, train_lines), indent=2, sort_keys=True)
        atomic_write(os.path.join(config.output_dir, TOKENIZER_RECORD_NAME), record.encode("utf-8"))
    if context.is_main and not os.path.exists(path):
        if config.init_from:
            tokenizer = init_from_tokenizer(config.init_from)
        else:
            try:
                tokenizer = Tokenizer.train(train_lines, config.model.vocab_size, config.tokenizer_type)
            except RuntimeError as error:  # SentencePiece's refusals, e.g. fewer pieces than characters
                reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                if "all_chars_count" in reason:  # it counted no character to learn from
                    raise InputError(
                        "the training text holds no character the tokenizer can learn from (only spaces, zero-width "
                        "or control characters): check the train split of --data-dir"
                    ) from error
                raise ValueError(
                    f"SentencePiece cannot train a {config.model.vocab_size}-piece {config.tokenizer_type} tokenizer "
                    f"on the training data ({reason}): check --vocab-size and --tokenizer-type against the data"
                ) from error
        atomic_write(path, tokenizer.model_proto)
    if context.is_main and config.init_from:
        with open(path, "rb") as handle:
            if handle.read() != init_from_tokenizer(config.init_from).model_proto:
                raise CheckpointError(f"{path} differs from the tokenizer of --init-from {config.init_from}")
    if config.init_from and context.is_main:  # options that shape a tokenizer this run does not make
        ignored = [
            f"{flag(name)} {value!r}"
            for name, value, default in (
                ("vocab_size", config.model.vocab_size, JanusConfig.vocab_size),
                ("tokenizer_type", config.tokenizer_type, TrainConfig.tokenizer_type),
            )
            if value != default
        ]
        if ignored:
            warnings.warn(
                f"{' and '.join(ignored)} ignored: with --init-from the run keeps that checkpoint's tokenizer and "
                "vocabulary",
                stacklevel=2,
            )
    context.barrier()
    return Tokenizer.load(path)


def save_checkpoint(
    directory: str,
    model: JanusModel,
    tokenizer: Tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    mask_generator: torch.Generator,
    config: TrainConfig,
    train_data: dict[str, str] | None = None,
    rank_rngs: list | None = None,
) -> None:
    """A checkpoint directory that is both a model (``from_pretrained``) and a resume point.

    Written as a whole directory replaced atomically (``checkpoint.replace_directory``). The run's
    options are saved with ``train_data`` (``train_data_digests``) among them, for ``check_resumable``.
    ``rank_rngs``: under torchrun, every rank's (torch, mask) generator states in rank order (each
    rank masks and drops out with its own), restored rank by rank on resume.
    """

    def write(directory: str) -> None:
        train_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "mask_rng": mask_generator.get_state(),
            "state": asdict(state),
            "train_config": json.dumps({**asdict(config), **(train_data or {})}),
        }
        if rank_rngs is not None:
            train_state[RANK_RNG_KEY] = rank_rngs
        buffer = io.BytesIO()
        torch.save(train_state, buffer)
        atomic_write(os.path.join(directory, TRAIN_STATE_NAME), buffer.getvalue())
        # its digest beside the weights' in config.json: a damaged state is refused on resume
        digest = {TRAIN_STATE_DIGEST: hashlib.sha256(buffer.getvalue()).hexdigest()}
        save_pretrained(model, directory, tokenizer.model_proto, training_run=state.run_id, record=digest)

    replace_directory(directory, write)


def _bleu(
    model: JanusModel, tokenizer: Tokenizer, sources: list[str], references: list[str], mode: str, iterations: int
) -> float:
    from janus_fast.translator import Translator

    translator = Translator(model, tokenizer)
    counts = {"iterations": iterations, "length_beam": 3} if mode == "nar" else {}  # AR: greedy
    hypotheses = translator.translate(sources, mode=mode, **counts)
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


def bound_allocator_caches() -> None:
    """Keep training's memory flat: oneDNN (the CPU's bf16 autocast matmuls) caches a primitive,
    buffers included, for every input shape it meets, and training batches come in many shapes:
    with its default cache a run of the shipped model's recipe grew by about 10 MB per update (4.8 GB
    after 220 updates against 2.5 GB with no cache, at the same speed; CPU C, 1 thread). Takes
    effect when called before the process's first oneDNN primitive; a value set by the user stays."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")


def return_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; elsewhere nothing):
    a batch's freed activations otherwise stay resident, and batches of varying shapes leave them
    scattered."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def train(config: TrainConfig) -> TrainState:
    """Train (or resume) a model as ``config`` says; returns the final TrainState."""
    bound_allocator_caches()
    with run_folder_lock(config.output_dir, environment_int("RANK", 0, 0)):
        return _train(config)


def _train(config: TrainConfig) -> TrainState:
    run = Run(config)
    run.resume_or_start()
    max_updates = config.max_updates if config.max_updates is not None else float("inf")
    deadline = time.perf_counter() + 60 * config.max_minutes if config.max_minutes is not None else float("inf")
    first = run.state.update  # the time limit allows this start one update at least (and its save)

    def more() -> bool:
        if run.state.update >= max_updates:
            return False
        return run.state.update == first or within_time_limit(run.context, deadline)

    while run.state.epoch < config.epochs and more():
        if run.train_epoch(more):
            run.end_epoch()
        run.checkpoint(run.last_dir)
    if run.state.update > run.state.validated_update:  # stopped within an epoch (--max-updates, --max-minutes)
        run.validate_and_keep_best()
        run.checkpoint(run.last_dir)
    run.context.close()
    return run.state


def within_time_limit(context: DistributedContext, deadline: float) -> bool:
    """Whether training goes on before ``deadline`` (``time.perf_counter()`` seconds): every
    process gets the same answer, as one past its deadline stops all (their clocks started a
    little apart, and a process that stopped alone would leave the others waiting in the gradient
    sum). A collective call when there are several processes and a finite deadline."""
    if deadline == float("inf"):
        return True
    past = float(time.perf_counter() >= deadline)
    return context.all_reduce_sum(past) == 0


@contextmanager
def run_folder_lock(output_dir: str, rank: int) -> Iterator[None]:
    """Hold ``OUT/.lock`` (flock: released when the process dies) while a run trains into
    ``output_dir``, so that a second run started on the same folder is refused instead of mixing
    its records and checkpoints with this one's. Only the main process (rank 0) takes it."""
    if rank != 0:
        yield
        return
    from filelock import FileLock, Timeout

    os.makedirs(output_dir, exist_ok=True)
    lock = FileLock(os.path.join(output_dir, ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(
            f"--output-dir {output_dir}: another training run is using this folder (it holds "
            f"{os.path.join(output_dir, '.lock')}); wait for it to end or choose another --output-dir"
        ) from None
    try:
        yield
    finally:
        lock.release()


class Run:
    """One training run: its data, tokenizer, model, optimizer and state (``TrainState``), set up
    from a TrainConfig; ``train`` drives it epoch by epoch."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.context = context = DistributedContext()
        if config.threads:
            torch.set_num_threads(config.threads)
        elif context.world_size > 1:
            torch.set_num_threads(context.threads_per_process())
        if not config.data_dir:
            raise InputError("--data-dir is required: the folder with the {split}.{lang}[.gz] corpus files")
        if not os.path.isdir(config.data_dir):
            what = "a file, not a folder" if os.path.exists(config.data_dir) else "no such folder"
            raise InputError(f"--data-dir {config.data_dir}: {what}")
        os.makedirs(config.output_dir, exist_ok=True)
        check_no_orphaned_run(config.output_dir)
        self.load_data()
        torch.manual_seed(config.seed)
        self.model = JanusModel(self.model_config).to(config.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, inverse_sqrt(config.warmup_updates))
        self.mask_generator = torch.Generator().manual_seed(config.seed + 1000 * context.rank)
        self.state = TrainState()
        self.last_dir = os.path.join(config.output_dir, "last")
        self.metrics_path = os.path.join(config.output_dir, "metrics.jsonl")
        self.bf16 = use_bf16(config.precision, config.device)
        self.valid_mode = config.validation_mode

    def load_data(self) -> None:
        """The corpus (training targets from ``train_target`` if given), the run's tokenizer, the
        encoded datasets and the model config with the tokenizer's vocabulary size."""
        config = self.config
        if config.source_lang == config.target_lang and not config.train_target:
            raise InputError(
                f"--source-lang and --target-lang are both {config.source_lang}: the same files would be read as "
                "source and target; give the target language (or --train-target for a deliberate copy task)"
            )
        data_dir = config.data_dir
        train_paths = (
            corpus_path(data_dir, config.train_split, config.source_lang),
            config.train_target or corpus_path(data_dir, config.train_split, config.target_lang),
        )
        valid_paths = (
            corpus_path(data_dir, config.valid_split, config.source_lang),
            corpus_path(data_dir, config.valid_split, config.target_lang),
        )
        train_src, train_tgt = read_parallel(*train_paths, config.train_limit)
        self.valid_src, self.valid_tgt = read_parallel(*valid_paths, config.valid_limit)
        check_split_not_empty("training", train_src, train_tgt, train_paths)
        check_split_not_empty("validation", self.valid_src, self.valid_tgt, valid_paths)
        # what the run trains on, saved with its options (check_resumable): the data, and the
        # number of processes, which each saved position in an epoch counts batches of
        self.train_data_digests = {**train_data_digests(train_src, train_tgt), "processes": self.context.world_size}
        self.tokenizer = tokenizer = load_tokenizer_for_run(config, self.context, train_src + train_tgt)
        self.model_config = model_config = replace(config.model, vocab_size=tokenizer.vocab_size)
        limits = (model_config.max_source_positions, model_config.max_target_positions)
        self.train_data = ParallelDataset(tokenizer.encode_batch(train_src), tokenizer.encode_batch(train_tgt), *limits)
        self.valid_data = ParallelDataset(
            tokenizer.encode_batch(self.valid_src), tokenizer.encode_batch(self.valid_tgt), *limits
        )
        for split, dataset, paths, lines in (
            ("training", self.train_data, train_paths, len(train_src)),
            ("validation", self.valid_data, valid_paths, len(self.valid_src)),
        ):
            if 0 < len(dataset) < lines and self.context.is_main:  # blank lines: said, not silently dropped
                scored = "; validation loss and BLEU are of the others" if split == "validation" else ""
                warnings.warn(
                    f"the {split} split {paths[0]} / {paths[1]}: {lines - len(dataset)} of {lines} line pairs have an "
                    f"empty side (blank, or only characters the tokenizer drops) and are left out{scored}",
                    stacklevel=2,
                )
            if len(dataset) == 0:  # text that encodes to nothing: U+200B, U+FEFF, control characters
                self._forget_tokenizer()
                raise InputError(
                    f"the {split} split {paths[0]} / {paths[1]} has no line pair whose both sides encode to at least "
                    "one piece (its text is only characters the tokenizer drops, such as zero-width spaces)"
                )

    def _forget_tokenizer(self) -> None:
        """Remove the run's tokenizer files where no save uses them yet (a start refused before its
        first save): the corrected command then starts afresh, not "with other options"."""
        output_dir = self.config.output_dir
        if self.context.is_main and not os.path.exists(os.path.join(output_dir, "last")):
            for name in (TOKENIZER_NAME, TOKENIZER_RECORD_NAME):
                if os.path.exists(os.path.join(output_dir, name)):
                    os.remove(os.path.join(output_dir, name))

    def resume_or_start(self) -> None:
        """Resume from ``last/`` if a run left one (refusing changed options), else start, from
        the ``init_from`` weights if given; then wrap for DDP and say what runs."""
        config, context, model = self.config, self.context, self.model
        recover_directory(self.last_dir)
        if os.path.exists(os.path.join(self.last_dir, TRAIN_STATE_NAME)):
            path = os.path.join(self.last_dir, TRAIN_STATE_NAME)
            saved = load_train_state(path)
            check_resumable(json.loads(saved["train_config"]), config, self.train_data_digests)
            saved_model = load_pretrained(self.last_dir, device=config.device)
            model.load_state_dict(saved_model.state_dict())
            trained = saved_model.config.extra.get(TRAINED_OBJECTIVES)
            try:  # a state saved without a digest (older runs) may still be damaged inside
                self.optimizer.load_state_dict(saved["optimizer"])
                self.scheduler.load_state_dict(saved["scheduler"])
                torch_rng, mask_rng = saved["torch_rng"], saved["mask_rng"]
                if RANK_RNG_KEY in saved:  # each rank its own (saves before 2026-12-07: rank 0's for all)
                    torch_rng, mask_rng = saved[RANK_RNG_KEY][context.rank]
                torch.set_rng_state(torch_rng)
                self.mask_generator.set_state(mask_rng)
                self.state = TrainState(**saved["state"])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
                raise CheckpointError(f"{path}: unusable training state ({type(error).__name__}: {error})") from error
            message = f"resuming from {self.last_dir} at update {self.state.update} (epoch {self.state.epoch + 1})"
        elif config.init_from:
            try:
                source = warm_start(model, config.init_from)
            except CheckpointError:  # a wrong --init-from: its fix is a fresh start, not "other options"
                self._forget_tokenizer()
                raise
            message = f"initialised from {config.init_from} (fresh optimizer and schedule)"
            earlier = source.extra.get(TRAINED_OBJECTIVES)  # a start without a record: unknown, as it is
            trained = sorted({*earlier, config.objective}) if isinstance(earlier, list) and earlier else None
        else:
            message = None
            trained = [config.objective]
        # the objectives that trained the weights, saved with them: decoding refuses a side none trained
        extra = {name: value for name, value in model.config.extra.items() if name != TRAINED_OBJECTIVES}
        if trained:
            extra[TRAINED_OBJECTIVES] = trained
        model.config = replace(model.config, extra=extra)
        self.forward: torch.nn.Module = model
        if context.world_size > 1:
            self.check_batches_per_process()
            ddp = torch.nn.parallel.DistributedDataParallel
            self.forward = ddp(model, find_unused_parameters=config.objective == "ar")
        if context.is_main:
            if message:
                print(message, flush=True)
            print(
                f"model: {model.num_parameters / 1e6:.2f}M parameters, vocab {self.tokenizer.vocab_size}, "
                f"{len(self.train_data)} training pairs, objective {config.objective}, "
                f"{'bf16 autocast' if self.bf16 else 'fp32'}, {context.world_size} process(es), "
                f"{torch.get_num_threads()} thread(s) each",
                flush=True,
            )
            drop_metrics_after(self.metrics_path, self.state.update)  # records a killed run had not saved

    def check_batches_per_process(self) -> None:
        """Under torchrun every process takes the same number of batches per epoch, so an epoch's last
        ``batches % processes`` are left out: InputError when that is all of them (the run would save
        an untrained model), a note when some are."""
        config, world_size = self.config, self.context.world_size
        count = len(self.train_data.batches(config.max_tokens))
        if count < world_size:
            raise InputError(
                f"--max-tokens {config.max_tokens} makes {count} batch(es) of the training data per epoch, fewer than "
                f"the {world_size} processes (each process takes whole batches, the same number): lower --max-tokens "
                "or use fewer processes"
            )
        left_out = count % world_size
        if left_out and self.context.is_main:
            print(
                f"note: each epoch leaves out {left_out} of its about {count} batches (a different few each epoch): "
                f"the {world_size} processes take the same number of batches",
                flush=True,
            )

    def log(self, record: dict) -> None:
        if self.context.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def checkpoint(self, directory: str) -> None:
        # every rank's generators (rank 0 writes the state): a resumed rank masks and drops out as it would have
        rank_rngs = None
        if self.context.world_size > 1:
            rank_rngs = self.context.gather_to_main((torch.get_rng_state(), self.mask_generator.get_state()))
        if self.context.is_main:
            save_checkpoint(
                directory,
                self.model,
                self.tokenizer,
                self.optimizer,
                self.scheduler,
                self.state,
                self.mask_generator,
                self.config,
                self.train_data_digests,
                rank_rngs,
            )
        self.context.barrier()

    def keep_model(self) -> None:
        """The model as it is now in ``OUT/saves/uNNNNNN`` (``--keep-every``): a checkpoint
        without train state, written atomically, for ``janus-fast average``."""
        if self.context.is_main:
            directory = os.path.join(self.config.output_dir, "saves", f"u{self.state.update:06d}")
            model, tokenizer, run_id = self.model, self.tokenizer, self.state.run_id
            replace_directory(
                directory, lambda path: save_pretrained(model, path, tokenizer.model_proto, training_run=run_id)
            )
        self.context.barrier()

    def train_epoch(self, more: Callable[[], bool]) -> bool:
        """Updates of the current epoch from where it stands while ``more()``; True when the epoch
        is complete."""
        config, context, state = self.config, self.context, self.state
        epoch_generator = torch.Generator().manual_seed(config.seed * 7919 + state.epoch)
        batches = self.train_data.batches(config.max_tokens, epoch_generator)
        usable = len(batches) - len(batches) % context.world_size
        batches = batches[context.rank : usable : context.world_size]
        self.model.train()
        bar = tqdm(
            total=len(batches),
            initial=state.batch_in_epoch,
            desc=f"epoch {state.epoch + 1}",
            disable=not (config.progress and context.is_main),
            dynamic_ncols=True,
        )
        if state.batch_in_epoch == 0:  # each epoch's records average its own updates only
            state.log_sums, state.log_updates = {}, 0
        window_tokens, window_start = 0, time.perf_counter()  # this start's, for the speed
        while state.batch_in_epoch < len(batches) and more():
            step_start = time.perf_counter()
            batch = self.train_data.collate(batches[state.batch_in_epoch])
            loss, terms = batch_loss(self.forward, self.model, batch, config, self.mask_generator, self.bf16)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_norm)
            if not math.isfinite(float(grad_norm)):  # the same on every rank (the gradients are synced)
                raise InputError(
                    f"training diverged at update {state.update + 1}: the loss is {float(loss.detach())} and the "
                    f"gradient norm {float(grad_norm)}; this update was not applied. A resume must keep the run's "
                    f"options: start again in a new --output-dir with a lower --lr (or more --warmup-updates; "
                    f"--init-from {self.last_dir} keeps the last save's weights), and check the --weights-* options"
                )
            rate = self.optimizer.param_groups[0]["lr"]  # this update's (the scheduler then sets the next one's)
            self.optimizer.step()
            self.scheduler.step()
            state.update += 1
            state.batch_in_epoch += 1
            state.train_seconds += time.perf_counter() - step_start

            window_tokens += int(context.all_reduce_sum(batch.num_target_tokens))
            loss_value = float(loss.detach())
            for name, value in {"loss": loss_value, "grad_norm": float(grad_norm), **terms}.items():
                state.log_sums[name] = state.log_sums.get(name, 0.0) + value
            state.log_updates += 1
            elapsed = time.perf_counter() - window_start
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{window_tokens / max(elapsed, 1e-9):.0f}")
            bar.update(1)
            if state.update % config.log_every == 0:
                self.log(
                    {
                        "type": "train",
                        "update": state.update,
                        "epoch": state.epoch + 1,
                        **{name: total / state.log_updates for name, total in state.log_sums.items()},
                        "tokens_per_second": window_tokens / elapsed,
                        "lr": rate,
                    }
                )
                window_tokens, window_start = 0, time.perf_counter()
                state.log_sums, state.log_updates = {}, 0
                return_free_memory()
            # the kept save first: a kill between the two then resumes from the save before, which
            # reaches this update again and keeps it (the other order would skip it for good)
            if config.keep_every and state.update % config.keep_every == 0:
                self.keep_model()
            if state.update % config.save_every == 0:
                self.checkpoint(self.last_dir)
        bar.close()
        return state.batch_in_epoch >= len(batches)

    def end_epoch(self) -> None:
        """Count the epoch, validate, and keep the checkpoint as ``best/`` if it improved."""
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        self.validate_and_keep_best()

    def validate_and_keep_best(self) -> None:
        """Validate the model as it is now, log the record, and keep the checkpoint as ``best/``
        if it improved. At an epoch's end, and where a start stops within an epoch, so that its
        last updates are validated and a run shorter than one epoch has a ``best/``."""
        state, context = self.state, self.context
        state.validated_update = state.update
        record = validate(
            self.model,
            self.tokenizer,
            self.valid_data,
            self.valid_src,
            self.valid_tgt,
            self.config,
            self.valid_mode,
            context,
        )
        # "epoch" numbers the epoch as the train records and the progress bar do (from 1): the one
        # just ended, or with "batch_in_epoch" the one stopped in, after that many of its batches
        record.update({"type": "valid", "update": state.update, "epoch": state.epoch + (state.batch_in_epoch > 0)})
        if state.batch_in_epoch:
            record["batch_in_epoch"] = state.batch_in_epoch
        self.log(record)
        if context.is_main:
            print(json.dumps(record), flush=True)
        score = record.get("bleu", -record["loss"])
        measure = self.validation_measure()
        if state.best_measure and state.best_measure != measure:  # resumed with other validation options
            if context.is_main:
                warnings.warn(
                    f"the validation score is now {measure}, not {state.best_measure} as when "
                    f"{self.config.output_dir}/best/ was chosen: the two do not compare, so the next best starts "
                    "from this validation",
                    stacklevel=2,
                )
            state.best_bleu = float("-inf")
        state.best_measure = measure
        improved = context.all_reduce_sum(float(context.is_main and score > state.best_bleu)) > 0
        if improved:
            state.best_bleu = score
            self.checkpoint(os.path.join(self.config.output_dir, "best"))

    def validation_measure(self) -> str:
        """What the validation score measures, from the options a resumed run may change."""
        config = self.config
        limit = f"first {config.valid_limit} pairs" if config.valid_limit else "all pairs"
        if not config.valid_bleu:
            return f"minus the validation loss ({config.valid_split}, {limit})"
        decoding = "AR greedy" if self.valid_mode == "ar" else f"NAR T={config.valid_iterations}"
        return f"BLEU of {decoding} ({config.valid_split}, {limit})"


# Options a resumed run may change; any other difference from the saved run is refused.
RESUME_MAY_CHANGE = frozenset(
    {"output_dir", "data_dir", "epochs", "max_updates", "max_minutes", "device", "save_every", "keep_every",
     "log_every", "threads", "progress", "precision", "valid_bleu", "valid_mode", "valid_iterations", "valid_limit"}
)  # fmt: skip


def check_split_not_empty(split: str, sources: list[str], targets: list[str], paths: tuple[str, str]) -> None:
    """Raise InputError naming the files of ``split`` ("training", "validation") unless at least one
    line pair has text on both sides (pairs with a blank side are dropped, ``ParallelDataset``): found
    before training starts rather than after an epoch."""
    if any(source.strip() and target.strip() for source, target in zip(sources, targets)):
        return
    what = "has no lines" if not sources else "has no line pair with text on both sides (only blank lines)"
    raise InputError(f"the {split} split {paths[0]} / {paths[1]} {what}")


def load_train_state(path: str) -> dict:
    """The optimizer / scheduler / RNG state saved beside a checkpoint (CheckpointError if unusable
    or, where the checkpoint's config.json records its digest, changed since it was saved)."""
    recorded = read_config(os.path.dirname(path)).get(TRAIN_STATE_DIGEST)
    if recorded is not None and recorded != file_sha256(path):
        raise CheckpointError(f"{path}: damaged (its SHA-256 is not the one config.json records)")
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated zip, bad pickle opcode, EOF, ...
        raise CheckpointError(f"{path}: unreadable training state ({type(error).__name__}: {error})") from error
    if not isinstance(saved, dict) or not {"optimizer", "scheduler", "state", "train_config"} <= set(saved):
        raise CheckpointError(f"{path}: not a janus_fast training state")
    return saved


def train_data_digests(sources: list[str], targets: list[str]) -> dict[str, str]:
    """SHA-256 digests of the training pairs a run trains on (after ``--train-limit``; the targets
    those of ``--train-target`` if given): saved with the run's options, so that a resumed run whose
    ``--data-dir`` (or ``--train-target``) holds another corpus is refused (``check_resumable``)."""

    def digest(lines: list[str]) -> str:
        return hashlib.sha256("".join(line + "\n" for line in lines).encode("utf-8")).hexdigest()

    return {"train_source_sha256": digest(sources), "train_target_sha256": digest(targets)}


def check_resumable(saved: dict, config: TrainConfig, train_data: dict[str, str] | None = None) -> None:
    """ValueError naming every option that differs from the run being resumed (beyond those a
    restart may change: stopping point, logging, threads, precision, validation), and the training
    data when ``train_data`` (``train_data_digests``) differs from the saved run's: --data-dir may
    name another folder, not another corpus. Options the saved run did not record (older versions)
    are not compared."""

    def options(values: dict) -> dict:  # the architecture's fields and the loss weights are options of their own
        nested = {"model": "", "weights": "weights_"}
        flat = {k: v for k, v in values.items() if k not in nested}
        for group, prefix in nested.items():
            flat.update({prefix + k: v for k, v in (values.get(group) or {}).items()})
        return flat

    saved, current = options(saved), {**options(json.loads(json.dumps(asdict(config)))), **(train_data or {})}
    if config.init_from:  # the vocabulary is --init-from's tokenizer's (checked on load), not --vocab-size
        saved.pop("vocab_size", None), current.pop("vocab_size", None)
    target_option = "--train-target" if config.train_target else "--data-dir"
    described = {  # the training data: named by the option that points at it
        "processes": f"processes {saved.get('processes')!r} -> {current.get('processes')!r} (torchrun "
        "--nnodes x --nproc_per_node): the saved position in the epoch counts each process's batches, "
        "so the run resumes with as many processes as it had",
        "train_source_sha256": f"--data-dir: the training sources ({config.train_split}.{config.source_lang}) "
        "differ from the run's",
        "train_target_sha256": f"{target_option}: the training targets "
        f"({config.train_target or f'{config.train_split}.{config.target_lang}'}) differ from the run's",
    }
    differs = [
        name
        for name in sorted(current)
        if name not in RESUME_MAY_CHANGE and name in saved and saved[name] != current[name]
    ]
    if "train_limit" in differs:  # the data digests follow from it: named once, by the option that changed
        differs = [name for name in differs if name not in ("train_source_sha256", "train_target_sha256")]
    changed = [described.get(name) or f"{flag(name)} {saved[name]!r} -> {current[name]!r}" for name in differs]
    if changed:
        raise ValueError(
            f"{config.output_dir} holds a run with other options ({'; '.join(changed)}); "
            "resume with the same options or choose another --output-dir"
        )


def drop_metrics_after(path: str, update: int) -> None:
    """Remove the records of ``metrics.jsonl`` logged after ``update`` (a resumed run logs them again).

    A last line that is not a JSON record (torn: the process killed while appending it) is dropped
    with a warning naming the file; such a line anywhere else is an InputError naming the file and
    its line number (1-based)."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the file ends with a newline, as every complete record does
        lines.pop()
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not a record")
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number < len(lines):
                reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
                raise InputError(f"{path}: line {number} is not a JSON record ({reason}); fix or remove it") from error
            warnings.warn(
                f"{path}: dropped its last line, an incomplete record (a run killed while writing it)", stacklevel=2
            )
            continue
        if record.get("update", 0) <= update:
            kept.append(line + b"\n")
    if b"".join(kept) != data:
        atomic_write(path, b"".join(kept))


def warm_start(model: JanusModel, directory: str) -> JanusConfig:
    """Copy the weights of the checkpoint in ``directory`` into ``model`` and return its config; the
    architecture and the vocabulary must match (CheckpointError naming every difference otherwise);
    dropout and decoding defaults (``model.decoding_defaults``) may differ, and the run keeps its own."""
    source = load_pretrained(directory)
    ours, theirs = asdict(model.config), asdict(source.config)
    ignored = ("dropout", "attention_dropout", "extra", *decoding_defaults())
    differences = [f"{k}: {theirs[k]} != {ours[k]}" for k in ours if k not in ignored and ours[k] != theirs[k]]
    if differences:
        raise CheckpointError(f"--init-from {directory}: incompatible with this run ({'; '.join(differences)})")
    model.load_state_dict(source.state_dict())
    return source.config


def batch_loss(
    forward: torch.nn.Module,
    model: JanusModel,
    batch: Batch,
    config: TrainConfig,
    mask_generator: torch.Generator,
    bf16: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mask the batch's targets, run ``forward`` (the model or its DDP wrapper) and the objective's
    loss; returns the loss and its terms."""
    masked = mask_targets(batch.tgt_lengths, batch.tgt_tokens.shape[1], config.masking, mask_generator)
    batch = batch.to(config.device)
    masked = masked.to(config.device)
    with torch.autocast(torch.device(config.device).type, dtype=torch.bfloat16, enabled=bf16):
        outputs = forward(
            batch.src_tokens, batch.src_lengths, batch.tgt_tokens, batch.tgt_lengths, masked, config.objective
        )
    length_targets = model.length_targets(batch.tgt_lengths, batch.src_lengths)
    return compute_loss(
        outputs,
        batch.tgt_tokens,
        batch.tgt_lengths,
        length_targets,
        config.objective,
        config.weights,
        fused=torch.is_grad_enabled(),
    )


@torch.no_grad()
def validation_loss(model: JanusModel, data: ParallelDataset, config: TrainConfig) -> float:
    """Token-weighted mean of the objective's loss over ``data`` (fixed masking seed)."""
    model.eval()
    generator = torch.Generator().manual_seed(12345)
    total, weight = 0.0, 0
    for indices in data.batches(config.max_tokens):
        batch = data.collate(indices)
        loss, _ = batch_loss(model, model, batch, config, generator, use_bf16(config.precision, config.device))
        total += float(loss) * batch.num_target_tokens
        weight += batch.num_target_tokens
    return total / max(weight, 1)


def validate(
    model: JanusModel,
    tokenizer: Tokenizer,
    data: ParallelDataset,
    sources: list[str],
    references: list[str],
    config: TrainConfig,
    mode: str,
    context: DistributedContext,
) -> dict:
    """Validation loss and (rank 0) BLEU of ``mode`` decoding on the validation split."""
    record: dict = {"loss": validation_loss(model, data, config)}
    if config.valid_bleu and context.is_main:
        start = time.perf_counter()
        record["bleu"] = _bleu(model, tokenizer, sources, references, mode, config.valid_iterations)
        record["bleu_mode"] = mode
        record["decode_seconds"] = time.perf_counter() - start
    model.train()
    return record
