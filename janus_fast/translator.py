"""User-facing translation: ``Translator.from_pretrained(path).translate(sentences)``."""

from __future__ import annotations

import math
import numbers
import operator
import os
import warnings
from collections.abc import Callable, Sequence

import numpy
import torch

from janus_fast.arguments import check_bool, check_device, check_int
from janus_fast.checkpoint import CheckpointError, load_checkpoint
from janus_fast.data import pad_sequences
from janus_fast.decoding.beam import max_ar_lengths
from janus_fast.decoding.hypotheses import Hypotheses
from janus_fast.decoding.options import DECODERS, DecodeOptions, check_choice, named
from janus_fast.decoding.passes import PassChoice
from janus_fast.generation import decode_batch
from janus_fast.model import JanusModel
from janus_fast.parameter_stamp import MODEL_CACHE_LOCK
from janus_fast.tokenizer import Tokenizer

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "multi30k-de-en")


_FIXED_ATTRIBUTES = ("model", "tokenizer", "decoder", "precision")


def _fixed(name: str, doc: str) -> property:
    """A read-only attribute of the translator, set once when it is made (stored as ``_name``)."""
    return property(operator.attrgetter(f"_{name}"), doc=doc)


def _why_not_text(sentence: str, error: Exception) -> str:
    """Why the tokenizer refused ``sentence``: its first lone surrogate (a str that no UTF-8 can hold,
    e.g. from bytes decoded with errors="surrogateescape"), else the tokenizer's own words."""
    for position, character in enumerate(sentence):
        if "\ud800" <= character <= "\udfff":
            return f"a lone surrogate U+{ord(character):04X} at character {position}"
    return str(error)


class Translator:
    """Translate sentences with a JANUS model: autoregressively (default: AR greedy, on the shipped
    model on the CPU better than mask-predict and faster than it at 4 or more iterations),
    non-autoregressively (mask-predict) or
    speculatively (NAR drafts, AR verifies: AR greedy's output).

    Args:
        model: a ``JanusModel``; tokenizer: its ``Tokenizer`` (or ``FairseqTokenizer`` for a
            converted fairseq model).
        max_batch_tokens: padded source tokens per decoder batch (sentences are sorted by length).
        on_long_input: "truncate" (warn and keep the first ``max_source_positions`` pieces) or
            "error" (raise ValueError) for inputs longer than the model accepts.
        decoder: "engine" (fast, ``janus_fast.decoding.engine``) or "reference"
            (``janus_fast.decoding.reference``).
        precision: "fp32" (default; engine == reference token for token), "bf16" or "int8": the
            decode precision (``janus_fast.decoding.passes.PassChoice``: on the CPU the native passes
            store their weights in that type and multiply in it where the CPU has the instructions,
            AVX-512 BF16 / VNNI, and without VNNI widen their int8 weights to fp32; only without the
            native passes does int8 run PyTorch's dynamic int8 layers). Outputs may differ slightly
            from fp32.
        release_weights: free the model's own fp32 copy of its layer matrices once the engine's
            native passes hold them at ``precision``, so the weights are in memory once (a big model
            at int8: a quarter of the fp32 bytes). The model is changed in place (its linear
            layers' weights become meta tensors) and the translator then decodes with the engine at
            its own precision only. The CLI's translate, evaluate and distill do this. ValueError
            where the passes need the PyTorch model (reference decoder; no native passes: the extension
            not built, a GPU, or a model they cannot run).
    """

    def __init__(
        self,
        model: JanusModel,
        tokenizer: Tokenizer,
        max_batch_tokens: int = 4096,
        on_long_input: str = "truncate",
        decoder: str = "engine",
        precision: str = "fp32",
        release_weights: bool = False,
    ) -> None:
        if tokenizer.vocab_size != model.config.vocab_size:
            raise CheckpointError(
                f"tokenizer has {tokenizer.vocab_size} pieces but the model {model.config.vocab_size}"
            )
        check_choice("decoder", decoder, DECODERS)
        check_bool("release_weights", release_weights)  # a truthy "no" would free the weights
        self.options = DecodeOptions(decoder=decoder, precision=precision)
        # fixed for the translator's life (read-only properties below): the passes are chosen for them
        self._model, self._tokenizer, self._decoder, self._precision = model.eval(), tokenizer, decoder, precision
        self.choice = PassChoice(model, precision, native=decoder == "engine")  # bf16 without native: here
        if release_weights:
            self.choice.release_weights()
        self.max_batch_tokens = max_batch_tokens
        self.on_long_input = on_long_input
        self.checkpoint_dir: str | None = None  # the folder ``from_pretrained`` loaded (None: built here)

    @classmethod
    def from_pretrained(cls, path: str | None = None, device: str = "cpu", **options) -> Translator:
        """Load a checkpoint directory (default: the model shipped with the package)."""
        check_device(device)
        directory = path if path is not None else DEFAULT_MODEL_DIR
        if path is None and not os.path.isdir(directory):
            raise CheckpointError(f"no default model shipped at {directory}; pass the path of a trained checkpoint")
        translator = cls(*load_checkpoint(directory, device=device), **options)
        translator.checkpoint_dir = directory
        return translator

    def _call_choice(self, precision: str, decoder: str) -> PassChoice:
        """The passes of a precision or decoder given for one call, made once and kept for the next
        such calls (a reference int8 call's PyTorch int8 copy of the model was made again on every
        call); at most one per (precision, decoder) pair."""
        with MODEL_CACHE_LOCK:
            choices: dict[tuple[str, str], PassChoice] = self.__dict__.setdefault("_call_choices", {})
            if (precision, decoder) not in choices:
                choices[precision, decoder] = PassChoice(self.model, precision, native=decoder == "engine")
            return choices[precision, decoder]

    def __setattr__(self, name: str, value: object) -> None:
        if name in _FIXED_ATTRIBUTES:
            raise AttributeError(
                f"Translator.{name} is fixed when the translator is made (its decoding passes are chosen "
                f"for it): make a new Translator for another {name}"
            )
        if name == "max_batch_tokens":
            check_int("max_batch_tokens", value, 1)
        if name == "on_long_input" and value not in ("truncate", "error"):
            raise ValueError(f"on_long_input must be 'truncate' or 'error', got {value!r}")
        if name == "options":  # every translate call starts from them: checked here, not at the next call
            if not isinstance(value, DecodeOptions):
                raise TypeError(f"Translator.options must be a DecodeOptions, got {type(value).__name__}")
        super().__setattr__(name, value)

    model = _fixed("model", "The ``JanusModel`` this translator decodes (fixed; in eval mode).")
    tokenizer = _fixed("tokenizer", "The model's ``Tokenizer`` (fixed).")
    decoder = _fixed(
        "decoder", 'The default decoder, "engine" or "reference" (fixed; ``translate(decoder=...)`` per call).'
    )
    precision = _fixed("precision", "The default decode precision (fixed; ``translate(precision=...)`` per call).")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_sources(self, sentences: Sequence[str], first_line: int = 1) -> list[list[int]]:
        """Piece ids per sentence ([] for blank lines), truncated or rejected when too long (each
        sentence as it is encoded: a long line's whole piece list is never kept)."""
        check_int("first_line", first_line, 1)
        encoded = []
        for index, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise TypeError(f"sentence index {index} is {type(sentence).__name__}, expected str")
            try:
                ids = self.tokenizer.encode(sentence) if sentence.strip() else []
            except (RuntimeError, TypeError, UnicodeError) as error:  # e.g. a lone surrogate ("\ud800")
                where = f"sentence index {index} (input line {first_line + index})"
                raise ValueError(
                    f"{where} cannot be encoded: not valid Unicode text ({_why_not_text(sentence, error)})"
                ) from error
            encoded.append(self._wrap_source(ids, index, first_line))
        return encoded

    def wrap_sources(self, encoded: Sequence[Sequence[int]], first_line: int = 1) -> list[list[int]]:
        """Source ids as the model reads them: ``<bos>`` / ``<eos>`` added where its config says
        (converted fairseq models: both), truncated or rejected when too long; [] stays []."""
        return [self._wrap_source(list(ids), index, first_line) for index, ids in enumerate(encoded)]

    def _wrap_source(self, ids: list[int], index: int, first_line: int) -> list[int]:
        config = self.model.config
        head, tail = [config.bos_id] * config.source_bos, [config.eos_id] * config.source_eos
        limit = config.max_source_positions - len(head) - len(tail)
        if len(ids) > limit:
            where = f"sentence index {index} (input line {first_line + index})"
            if self.on_long_input == "error":
                raise ValueError(f"{where} has {len(ids)} pieces; the model accepts {limit}")
            warnings.warn(f"{where} has {len(ids)} pieces; truncated to {limit}", stacklevel=3)
            ids = ids[:limit]
        return head + ids + tail if ids else []

    def translate(
        self,
        sentences: Sequence[str],
        options: DecodeOptions | None = None,
        *,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        return_scores: bool = False,
        first_line: int = 1,
        **changes: object,
    ) -> list[str] | list[tuple[str, float]]:
        """Translations of ``sentences``, in order, one per input (blank input -> ""); with
        ``return_scores`` (translation, score) pairs, the score being the mean token log-probability
        (NAR; with ``ar_rescore`` the AR side's mean log-probability of the chosen candidate, eos
        included, by which it was chosen) or the length-normalised log-probability (AR) of the
        translation (0.0 for blanks).

        ``options`` (default: the translator's decoder and precision, AR greedy) and keyword
        ``changes`` to them are ``DecodeOptions`` (``janus_fast.decoding.options``), e.g.
        ``translate(sentences, mode="nar", iterations=4)``: mode "ar" (beam search with ``beam``, 1 =
        greedy), "nar" (mask-predict with ``iterations`` and ``length_beam``) or "spec" (speculative:
        the NAR side drafts, the AR side verifies: AR greedy's output); ``compat="fairseq"`` for
        fairseq-generate's decoding; see ``janus_fast.generation.generate``.
        Sentences are sorted by length and decoded in batches of at most
        ``max_batch_tokens`` padded source tokens (default: the translator's) and, if given, at
        most ``batch_size`` sentences. ``progress`` is called with the number of sentences done.
        ``first_line``: the input line number of ``sentences[0]``, for messages (e.g. a chunk of a file).
        """
        if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Sequence):
            raise TypeError(f"translate() takes a list of sentences, not a {type(sentences).__name__}")
        check_bool("return_scores", return_scores)
        resolved = self._resolve(options, changes, max_batch_tokens, batch_size, progress)
        encoded = self.encode_sources(sentences, first_line)
        found = self._decode(encoded, resolved, max_batch_tokens, batch_size, progress)
        outputs = self.texts(found.tokens, resolved.mode)
        return list(zip(outputs, found.scores)) if return_scores else outputs

    def texts(self, tokens: Sequence[list[int] | None], mode: str = "nar") -> list[str]:
        """The detokenised outputs of ``translate_ids`` decoded in ``mode`` ("" for None); where the
        mask symbol is in them (``compat="fairseq"``), shown as ``<mask>`` with one warning saying why."""
        mask_id = self.model.config.mask_id
        unfilled = sum(1 for ids in tokens if ids is not None and mask_id in ids)
        if unfilled and mask_id != self.model.config.unk_id:
            if mode == "nar":
                why = (
                    "hold masked positions that fairseq's adaptive stop left unfilled, shown as <mask>; more "
                    "--iterations (or --iter-decode-force-max-iter) fill them"
                )
            else:
                why = (
                    "hold the model's mask symbol, which it generated (AR search with --compat fairseq does not "
                    "exclude it, as fairseq's does not), shown as <mask>"
                )
            warnings.warn(f"{unfilled} translation(s) {why}", stacklevel=3)
        return [self._text(ids) if ids is not None else "" for ids in tokens]

    def _text(self, ids: list[int]) -> str:
        """The detokenised output. Mask ids left in it (fairseq's mask-predict may stop with masked
        positions, ``compat="fairseq"``; a fairseq CMLM masks with ``<unk>``, which stays visible)
        are shown as ``<mask>``, as fairseq-generate prints its dictionary's symbol, rather than
        dropped as a special id: words are missing there."""
        mask_id = self.model.config.mask_id
        if mask_id == self.model.config.unk_id or mask_id not in ids:
            return self.tokenizer.decode(ids)
        words, start = [], 0
        for position, token in enumerate([*ids, mask_id]):
            if token == mask_id:
                words += [self.tokenizer.decode(ids[start:position]), "<mask>"]
                start = position + 1
        return " ".join(word for word in words[:-1] if word)

    def translate_ids(
        self,
        sources: Sequence[Sequence[int]],
        options: DecodeOptions | None = None,
        *,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        first_line: int = 1,
        **changes: object,
    ) -> Hypotheses:
        """``translate`` on token ids: each source is a list of vocabulary ids without bos/eos
        (added as the model's config says); returns the output ids (no bos/eos/pad) and scores,
        [] and 0.0 for an empty source. Options as ``translate``."""
        if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
            raise TypeError(f"translate_ids() takes a list of sources, not a {type(sources).__name__}")
        resolved = self._resolve(options, changes, max_batch_tokens, batch_size, progress)
        config = self.model.config
        vocab = config.vocab_size
        reserved = {config.pad_id, config.bos_id, config.eos_id, config.mask_id} - {config.unk_id}
        checked = []
        for index, ids in enumerate(sources):
            where = f"source index {index} (input line {first_line + index})"
            text_like = isinstance(ids, (str, bytes, bytearray, memoryview))
            array_like = isinstance(ids, (numpy.ndarray, torch.Tensor))
            if text_like or not (isinstance(ids, Sequence) or array_like) or (array_like and ids.ndim != 1):
                raise TypeError(f"{where}: a source is a list of token ids, not a {type(ids).__name__}")
            if array_like:
                ids = ids.tolist()  # NumPy / torch integers as Python ints (their values checked below)
            if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in ids):
                raise TypeError(f"{where}: token ids must be integers, got {sorted({type(i).__name__ for i in ids})}")
            ids = [int(i) for i in ids]
            if any(not 0 <= i < vocab for i in ids):
                raise ValueError(f"{where}: token ids must be integers in [0, {vocab})")
            special = sorted(reserved.intersection(ids))
            if special:
                raise ValueError(
                    f"{where}: token ids {special} are reserved (pad, bos, eos, mask): a source holds words only "
                    "(bos/eos are added as the model needs them)"
                )
            checked.append(ids)
        found = self._decode(self.wrap_sources(checked, first_line), resolved, max_batch_tokens, batch_size, progress)
        return Hypotheses([ids if ids is not None else [] for ids in found.tokens], found.scores, found.positional)

    def resolve_options(self, options: DecodeOptions | None = None, **changes: object) -> DecodeOptions:
        """The decoding options a ``translate`` call with these arguments runs, checked and resolved
        (``DecodeOptions.resolve``): ``options`` (default: the translator's) with ``changes``."""
        if options is not None and not isinstance(options, DecodeOptions):
            raise TypeError(f"options must be a DecodeOptions, got {type(options).__name__}")
        return (options if options is not None else self.options).replace(**changes).resolve(self.model.config)

    def _resolve(
        self,
        options: DecodeOptions | None,
        changes: dict,
        max_batch_tokens: int | None,
        batch_size: int | None,
        progress: Callable[[int], None] | None,
    ) -> DecodeOptions:
        """``resolve_options`` after the checks of the batch options and ``progress`` (None or a
        callable); ValueError for a model put back in training mode (dropout would change the output
        on every call)."""
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be a function of the sentences done, or None, got {progress!r}")
        if self.model.training:
            raise ValueError(
                "the translator's model is in training mode (dropout would change the output on every call): "
                "call translator.model.eval() first"
            )
        for name, value in (("max_batch_tokens", max_batch_tokens), ("batch_size", batch_size)):
            if value is not None:
                check_int(name, value, 1)
        return self.resolve_options(options, **changes)

    def _decode(
        self,
        encoded: list[list[int]],
        options: DecodeOptions,
        max_batch_tokens: int | None,
        batch_size: int | None,
        progress: Callable[[int], None] | None,
    ) -> Hypotheses:
        """Decode model-ready source ids in length-sorted batches; tokens None / score 0.0 for blanks
        (positional scores: [] for blanks with compat "fairseq", whose decoding reports them; None
        otherwise, whatever was decoded)."""
        outputs: list = [None] * len(encoded)
        scores = [0.0] * len(encoded)
        positional: list[list[float]] | None = [[] for _ in encoded] if options.compat == "fairseq" else None
        blank = sum(1 for ids in encoded if not ids)
        if progress is not None and blank:
            progress(blank)
        budget = rows_budget(max_batch_tokens or self.max_batch_tokens, options)
        batches = length_sorted_batches(encoded, budget, batch_size)
        choice = self.choice
        at_limit = 0  # AR / speculative outputs that reached their length limit (eos forced there)
        if (options.precision, options.decoder) != (self.precision, self.decoder):  # changed for this call
            choice = self._call_choice(options.precision, options.decoder)
        for indices in batches:
            src, src_lengths = pad_sequences([encoded[i] for i in indices], self.model.config.pad_id)
            hypotheses = decode_batch(self.model, src.to(self.device), src_lengths.to(self.device), options, choice)
            if options.mode in ("ar", "spec") and options.compat == "janus":
                limits = max_ar_lengths(src_lengths, self.model, (options.max_len_a, options.max_len_b)).tolist()
                at_limit += sum(len(ids) + 1 >= limit for ids, limit in zip(hypotheses.tokens, limits))
            for row, (index, ids, score) in enumerate(zip(indices, hypotheses.tokens, hypotheses.scores)):
                outputs[index] = ids
                scores[index] = score
                if positional is not None and hypotheses.positional is not None:
                    positional[index] = hypotheses.positional[row]
            if hypotheses.positional is None:
                positional = None
            if progress is not None:
                progress(len(indices))
        broken = sum(1 for ids, score in zip(encoded, scores) if ids and not math.isfinite(score))
        if broken:  # a model whose activations overflow decodes nothing: said, not an empty line with exit 0
            warnings.warn(
                f"{broken} translation(s) scored nan or inf: the model's activations overflow (weights too large: a "
                "broken or tampered checkpoint?), so those outputs are not translations",
                stacklevel=3,
            )
        if at_limit:  # as input truncation is said: an output the limit may have cut
            a, b = named("max_len_a"), named("max_len_b")
            warnings.warn(
                f"{at_limit} translation(s) reached the AR length limit ({a} {options.max_len_a} x source pieces + "
                f"{b} {options.max_len_b}, at most the model's {self.model.config.max_target_positions - 1}) and may "
                f"be cut short; a larger {a} or {b} lets them finish",
                stacklevel=3,
            )
        return Hypotheses(outputs, scores, positional)


# A batch's decoder rows per source token (length candidates or beams per sentence) are covered by
# the token budget up to this many; beyond, the budget shrinks in proportion, so that memory stays
# bounded by --max-batch-tokens whatever --length-beam or --beam (the defaults, 3 and 1-5, keep it).
ROWS_PER_SENTENCE_IN_BUDGET = 4


def rows_budget(max_batch_tokens: int, options: DecodeOptions) -> int:
    """The padded source tokens of one batch: ``max_batch_tokens``, divided by the decoder rows per
    sentence beyond ``ROWS_PER_SENTENCE_IN_BUDGET`` (NAR: length candidates, AR: beams)."""
    rows = options.length_beam if options.mode == "nar" else options.beam if options.mode == "ar" else 1
    return max(1, max_batch_tokens * ROWS_PER_SENTENCE_IN_BUDGET // max(rows or 1, ROWS_PER_SENTENCE_IN_BUDGET))


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
