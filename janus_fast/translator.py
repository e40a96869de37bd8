"""User-facing translation: ``Translator.from_pretrained(path).translate(sentences)``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import torch

from janus_fast.arguments import check_device, check_int
from janus_fast.checkpoint import CheckpointError, load_pretrained, load_tokenizer
from janus_fast.data import pad_sequences
from janus_fast.decoding.search import Hypotheses
from janus_fast.decoding.speculative import SpeculativeOptions
from janus_fast.generate import (
    check_ar_rescore,
    check_compat,
    check_decoding_options,
    check_model_kind,
    generate,
    resolve_collapse_repeats,
    resolve_compat_defaults,
    resolve_length_bonus,
    resolve_speculative,
)
from janus_fast.model import JanusModel
from janus_fast.native.decoder import int8_computes_in_int8, unsupported_reason
from janus_fast.quantize import PRECISIONS, quantize_int8
from janus_fast.tokenizer import Tokenizer

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "multi30k-de-en")


# With precision "int8" on a CPU without AVX-512 VNNI, where the native passes only store int8
# weights (``native_decoder.int8_computes_in_int8``), batches whose decoder passes have at least this
# many positions (NAR: length beam x source tokens, about the target positions; AR: 2 streams x beam
# x sentences) run PyTorch's dynamic int8 layers (int8 products: faster when the products dominate);
# smaller ones the native passes (faster when streaming the weights dominates). Measured on CPU B
# (README, "CPU decoding"): native wins at 45 positions (NAR, one sentence) and 32 (AR, 16
# sentences), dynamic at 180 (NAR, 4 sentences), a tie at 64 (AR). With VNNI the native passes run
# int8 products themselves, at every batch size.
INT8_COMPUTE_MIN_POSITIONS = 64


def decoder_positions(mode: str, src_lengths: torch.Tensor, length_beam: int, beam: int) -> int:
    """Rows of one decoder pass for a batch: NAR length_beam x source tokens; AR 2 x beam x sentences
    (speculative: counted as AR greedy)."""
    return length_beam * int(src_lengths.sum()) if mode == "nar" else 2 * beam * len(src_lengths)


def bf16_unavailable(decoder: str, reason: str | None) -> str:
    """Why precision "bf16" cannot run with ``decoder`` (``reason``: ``unsupported_reason`` of the model)."""
    if decoder != "engine":
        return (
            f"precision 'bf16' needs the engine's native CPU decoder, not the {decoder} decoder: "
            "use --decoder engine (decoder='engine')"
        )
    return f"precision 'bf16' needs the engine's native CPU decoder, which cannot run this model: {reason}"


class Translator:
    """Translate sentences with a JANUS model: autoregressively (default: AR greedy, on the shipped
    model on the CPU both faster and better than mask-predict), non-autoregressively (mask-predict) or
    speculatively (NAR drafts, AR verifies: AR greedy's output).

    Args:
        model: a ``JanusModel``; tokenizer: its ``Tokenizer`` (or ``FairseqTokenizer`` for a
            converted fairseq model).
        max_batch_tokens: padded source tokens per decoder batch (sentences are sorted by length).
        on_long_input: "truncate" (warn and keep the first ``max_source_positions`` pieces) or
            "error" (raise ValueError) for inputs longer than the model accepts.
        decoder: "engine" (fast, ``janus_fast.decoding.engine``) or "reference" (``janus_fast.decoding.reference``).
        precision: "fp32" (default; engine == reference token for token), "bf16" or "int8": on the
            CPU with the native decoder (``janus_fast.native.decoder``) the weights of the native
            passes are stored in that type, and multiplied in it where the CPU has the instructions
            (AVX-512 BF16; AVX-512 VNNI for int8, activations quantized to uint8 per row); without
            VNNI, "int8" batches of ``INT8_COMPUTE_MIN_POSITIONS`` or more decoder positions, and int8
            without the native decoder (or with the reference decoder), run PyTorch's dynamic int8
            linear layers (``janus_fast.quantize``). Outputs may differ slightly from fp32.
    """

    def __init__(
        self,
        model: JanusModel,
        tokenizer: Tokenizer,
        max_batch_tokens: int = 4096,
        on_long_input: str = "truncate",
        decoder: str = "engine",
        precision: str = "fp32",
    ) -> None:
        if decoder not in ("engine", "reference"):
            raise ValueError(f"decoder must be 'engine' or 'reference', got {decoder!r}")
        self.decoder = decoder
        if on_long_input not in ("truncate", "error"):
            raise ValueError(f"on_long_input must be 'truncate' or 'error', got {on_long_input!r}")
        if tokenizer.vocab_size != model.config.vocab_size:
            raise CheckpointError(
                f"tokenizer has {tokenizer.vocab_size} pieces but the model {model.config.vocab_size}"
            )
        check_int("max_batch_tokens", max_batch_tokens, 1)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.decoder_weights = "fp32"
        self.int8_model: JanusModel | None = None  # PyTorch dynamic int8 copy, for large batches without VNNI
        if precision != "fp32":
            if next(model.parameters()).device.type != "cpu":
                raise ValueError(f"precision {precision!r} runs on the CPU only")
            reason = unsupported_reason(model.eval())
            if decoder == "engine" and reason is None:
                self.decoder_weights = precision
                if precision == "int8" and not int8_computes_in_int8():
                    self.int8_model = quantize_int8(model)
            elif precision == "int8":
                model = quantize_int8(model)
            else:
                raise ValueError(bf16_unavailable(decoder, reason))
        self.precision = precision
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_tokens = max_batch_tokens
        self.on_long_input = on_long_input

    @classmethod
    def from_pretrained(cls, path: str | None = None, device: str = "cpu", **options) -> Translator:
        """Load a checkpoint directory (default: the model shipped with the package)."""
        check_device(device)
        directory = path if path is not None else DEFAULT_MODEL_DIR
        if path is None and not os.path.isdir(directory):
            raise CheckpointError(f"no default model shipped at {directory}; pass the path of a trained checkpoint")
        return cls(load_pretrained(directory, device=device), load_tokenizer(directory), **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_sources(self, sentences: Sequence[str]) -> list[list[int]]:
        """Piece ids per sentence ([] for blank lines), truncated or rejected when too long."""
        encoded = []
        for index, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise TypeError(f"sentence index {index} is {type(sentence).__name__}, expected str")
            encoded.append(self.tokenizer.encode(sentence) if sentence.strip() else [])
        return self.wrap_sources(encoded)

    def wrap_sources(self, encoded: Sequence[Sequence[int]]) -> list[list[int]]:
        """Source ids as the model reads them: ``<bos>`` / ``<eos>`` added where its config says
        (converted fairseq models: both), truncated or rejected when too long; [] stays []."""
        config = self.model.config
        head, tail = [config.bos_id] * config.source_bos, [config.eos_id] * config.source_eos
        limit = config.max_source_positions - len(head) - len(tail)
        wrapped = []
        for index, ids in enumerate(encoded):
            ids = list(ids)
            if len(ids) > limit:
                where = f"sentence index {index} (input line {index + 1})"
                if self.on_long_input == "error":
                    raise ValueError(f"{where} has {len(ids)} pieces; the model accepts {limit}")
                warnings.warn(f"{where} has {len(ids)} pieces; truncated to {limit}", stacklevel=2)
                ids = ids[:limit]
            wrapped.append(head + ids + tail if ids else [])
        return wrapped

    def translate(
        self,
        sentences: Sequence[str],
        mode: str = "ar",
        iterations: int | None = None,
        length_beam: int | None = None,
        beam: int | None = None,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        return_scores: bool = False,
        compat: str = "janus",
        force_max_iter: bool = False,
        collapse_repeats: bool | None = None,
        ar_rescore: bool = False,
        length_bonus: float | None = None,
        speculative: SpeculativeOptions | None = None,
    ) -> list[str] | list[tuple[str, float]]:
        """Translations of ``sentences``, in order, one per input (blank input -> ""); with
        ``return_scores`` (translation, score) pairs, the score being the mean token log-probability
        (NAR) or the length-normalised log-probability (AR) of the translation (0.0 for blanks).

        mode "ar" (default): beam search with ``beam`` (1 = greedy); mode "nar": mask-predict with
        ``iterations`` and ``length_beam``; mode "spec": speculative decoding (the NAR side drafts, the AR
        side verifies: AR greedy's output; ``speculative`` sets its options, ``generate``).
        ``iterations``, ``length_beam`` and ``beam`` left None take ``compat``'s defaults
        (``janus_fast.generate.resolve_compat_defaults``): 10, 3 and 1; with "fairseq",
        fairseq-generate's 10, 1 and 5.
        Sentences are sorted by length and decoded in batches of at most
        ``max_batch_tokens`` padded source tokens (default: the translator's) and, if given, at
        most ``batch_size`` sentences. ``progress`` is called with the number of sentences done.
        ``compat="fairseq"``: fairseq-generate's mask-predict (``janus_fast.generate.generate``;
        ``iterations`` is then its ``--iter-decode-max-iter``, ``force_max_iter`` its
        ``--iter-decode-force-max-iter``). ``collapse_repeats``: as ``janus_fast.generate.generate``
        (default: NAR outputs keep each run of a repeated token once). ``ar_rescore``: NAR picks
        each sentence's length candidate by the model's AR score of it (``generate``).
        ``length_bonus``: NAR ranks length candidates by score + this x length (default: the
        model's own, ``generate``).
        """
        if isinstance(sentences, str):
            raise TypeError("translate() takes a list of sentences, not a single string")
        options = self._check_options(
            mode,
            iterations,
            length_beam,
            beam,
            max_batch_tokens,
            batch_size,
            compat,
            force_max_iter,
            collapse_repeats,
            ar_rescore,
            length_bonus,
            speculative,
        )
        found = self._decode(self.encode_sources(sentences), options, max_batch_tokens, batch_size, progress)
        outputs = [self.tokenizer.decode(ids) if ids is not None else "" for ids in found.tokens]
        return list(zip(outputs, found.scores)) if return_scores else outputs

    def translate_ids(
        self,
        sources: Sequence[Sequence[int]],
        mode: str = "ar",
        iterations: int | None = None,
        length_beam: int | None = None,
        beam: int | None = None,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        compat: str = "janus",
        force_max_iter: bool = False,
        collapse_repeats: bool | None = None,
        ar_rescore: bool = False,
        length_bonus: float | None = None,
        speculative: SpeculativeOptions | None = None,
    ) -> Hypotheses:
        """``translate`` on token ids: each source is a list of vocabulary ids without bos/eos
        (added as the model's config says); returns the output ids (no bos/eos/pad) and scores,
        [] and 0.0 for an empty source. Options left None take ``compat``'s defaults, as there."""
        options = self._check_options(
            mode,
            iterations,
            length_beam,
            beam,
            max_batch_tokens,
            batch_size,
            compat,
            force_max_iter,
            collapse_repeats,
            ar_rescore,
            length_bonus,
            speculative,
        )
        vocab = self.model.config.vocab_size
        for index, ids in enumerate(sources):
            if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab for i in ids):
                raise ValueError(
                    f"source index {index} (input line {index + 1}): token ids must be integers in [0, {vocab})"
                )
        found = self._decode(self.wrap_sources(sources), options, max_batch_tokens, batch_size, None)
        return Hypotheses([ids if ids is not None else [] for ids in found.tokens], found.scores)

    def _check_options(
        self,
        mode: str,
        iterations: int | None,
        length_beam: int | None,
        beam: int | None,
        max_batch_tokens: int | None,
        batch_size: int | None,
        compat: str,
        force_max_iter: bool,
        collapse_repeats: bool | None,
        ar_rescore: bool,
        length_bonus: float | None,
        speculative: SpeculativeOptions | None,
    ) -> dict:
        """The checked options of one ``translate`` call for ``generate``, each one left None
        resolved (the compat's defaults, the model's length bonus, ...)."""
        for name, value in (("max_batch_tokens", max_batch_tokens), ("batch_size", batch_size)):
            if value is not None:
                check_int(name, value, 1)
        iterations, length_beam, beam = resolve_compat_defaults(compat, iterations, length_beam, beam)
        check_compat(self.model, compat, mode, iterations, length_beam, force_max_iter, beam)
        check_model_kind(self.model, mode, compat)
        check_ar_rescore(mode, compat, ar_rescore)
        if compat == "janus":
            check_decoding_options(self.model, mode, iterations, length_beam, beam)
        return {
            "mode": mode,
            "iterations": iterations,
            "length_beam": length_beam,
            "beam": beam,
            "compat": compat,
            "force_max_iter": force_max_iter,
            "collapse_repeats": resolve_collapse_repeats(mode, compat, collapse_repeats),
            "ar_rescore": ar_rescore,
            "length_bonus": resolve_length_bonus(self.model, mode, compat, length_bonus),
            "speculative": resolve_speculative(mode, compat, self.decoder, speculative),
        }

    def _decode(
        self,
        encoded: list[list[int]],
        options: dict,
        max_batch_tokens: int | None,
        batch_size: int | None,
        progress: Callable[[int], None] | None,
    ) -> Hypotheses:
        """Decode model-ready source ids in length-sorted batches; tokens None / score 0.0 for blanks."""
        outputs: list = [None] * len(encoded)
        scores = [0.0] * len(encoded)
        blank = sum(1 for ids in encoded if not ids)
        if progress is not None and blank:
            progress(blank)
        batches = length_sorted_batches(encoded, max_batch_tokens or self.max_batch_tokens, batch_size)
        for indices in batches:
            src, src_lengths = pad_sequences([encoded[i] for i in indices], self.model.config.pad_id)
            model, decoder_weights = self.model, self.decoder_weights
            positions = decoder_positions(options["mode"], src_lengths, options["length_beam"], options["beam"])
            if self.int8_model is not None and positions >= INT8_COMPUTE_MIN_POSITIONS:
                model, decoder_weights = self.int8_model, "fp32"  # int8 compute (VNNI) beats int8 storage
            hypotheses = generate(
                model,
                src.to(self.device),
                src_lengths.to(self.device),
                decoder=self.decoder,
                return_scores=True,
                decoder_weights=decoder_weights,
                **options,
            )
            for index, ids, score in zip(indices, hypotheses.tokens, hypotheses.scores):
                outputs[index] = ids
                scores[index] = score
            if progress is not None:
                progress(len(indices))
        return Hypotheses(outputs, scores)


def length_sorted_batches(
    encoded: Sequence[Sequence[int]], max_batch_tokens: int, batch_size: int | None = None
) -> list[list[int]]:
    """Indices of non-empty sequences, sorted by length and cut into batches of at most
    ``max_batch_tokens`` padded tokens and ``batch_size`` sentences (at least one sentence each)."""
    limit = batch_size if batch_size is not None else len(encoded)
    order = sorted((i for i in range(len(encoded)) if encoded[i]), key=lambda i: len(encoded[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and (len(encoded[index]) * (len(current) + 1) > max_batch_tokens or len(current) >= limit):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
