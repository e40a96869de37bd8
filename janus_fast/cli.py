"""The ``janus-fast`` command line: train, distill, translate, evaluate, export, average, convert, profile, bench."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import gzip
import json
import math
import os
import re
import signal
import stat
import sys
import threading
import time
import typing
import warnings
from collections.abc import Sequence

from janus_fast.arguments import MAX_THREADS, check_writable_directory, flag
from janus_fast.checkpoint import CheckpointError
from janus_fast.data import InputError, corpus_candidates, gzip_named, read_lines
from janus_fast.memory import check_fits_in_memory
from janus_fast.output import check_output


def _optional_type(hint: object) -> type:
    """``int`` for ``int | None`` (an option whose default is None)."""
    kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if len(kinds) != 1 or not isinstance(kinds[0], type):
        raise TypeError(f"no command-line type for {hint!r}")
    return kinds[0]


def _add_dataclass_options(
    parser: argparse.ArgumentParser,
    instance: object,
    prefix: str = "",
    unset: bool = False,
) -> None:
    """One ``--option`` per dataclass field, typed from its annotation (``int | None``: int), its help
    text, allowed values and other spellings from the field's metadata ("help", "choices",
    "required", "aliases", "negative_aliases": flags that set a boolean false). A bool field is a
    ``--name / --no-name`` pair (``bool | None``: unset unless given). A nested dataclass's fields
    are options too (under the field's metadata "title" as a group, if any); a field that is
    None unless given (metadata "cli_dataclass": its class) has its class's options with ``unset``
    defaults (None: ``_build_dataclass`` makes the nested object only from the options given). The
    values of "choices" are shown; the dataclass itself refuses others, with its own message."""
    hints = typing.get_type_hints(type(instance))
    for item in dataclasses.fields(instance):
        if not item.metadata.get("cli", True):
            continue
        value = getattr(instance, item.name)
        nested_type = item.metadata.get("cli_dataclass")
        if dataclasses.is_dataclass(value) or nested_type is not None:
            nested_prefix = item.metadata.get("cli_prefix", f"{item.name}_")
            title = item.metadata.get("title")
            group = parser.add_argument_group(title) if title else parser
            nested = value if nested_type is None else nested_type()
            _add_dataclass_options(group, nested, nested_prefix, nested_type is not None)
            continue
        metadata = item.metadata
        flags = [flag(prefix + item.name), *metadata.get("aliases", ())]
        dest = prefix + item.name
        text = metadata.get("help", "")
        kind = type(value) if value is not None else _optional_type(hints[item.name])
        if kind is bool:
            action = parser.add_argument(
                *flags, dest=dest, action=argparse.BooleanOptionalAction, default=value, help=text
            )
            if value is not None and "%(default)" not in action.help:  # Python 3.10 adds the default itself
                action.help = f"{text} (default: {'--' if value else '--no-'}{flags[0][2:]})".lstrip()
            for negative in metadata.get("negative_aliases", ()):
                parser.add_argument(
                    negative, dest=dest, action="store_const", const=False, help=f"= --no-{flags[0][2:]}"
                )
            continue
        choices = metadata.get("choices")
        options = {"metavar": "{" + ",".join(map(str, choices)) + "}"} if choices else {}
        if metadata.get("required"):
            options["required"] = True
            text = f"{text} (required)"
        elif value is not None:
            text = f"{text} (default: {value})"
        parser.add_argument(
            *flags, dest=dest, type=kind, default=None if unset else value, help=text.lstrip(), **options
        )


def _build_dataclass(cls: type, args: argparse.Namespace, prefix: str = ""):  # noqa: ANN202
    """The dataclass ``cls`` from the options ``_add_dataclass_options`` added."""
    values = {}
    for item in dataclasses.fields(cls):
        if not item.metadata.get("cli", True):
            continue
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else None
        nested_prefix = item.metadata.get("cli_prefix", f"{item.name}_")
        if dataclasses.is_dataclass(default):
            values[item.name] = _build_dataclass(type(default), args, prefix=nested_prefix)
        elif "cli_dataclass" in item.metadata:  # None unless one of its options was given
            nested_type = item.metadata["cli_dataclass"]
            names = [nested.name for nested in dataclasses.fields(nested_type)]
            given = {name: getattr(args, nested_prefix + name) for name in names}
            given = {name: value for name, value in given.items() if value is not None}
            values[item.name] = nested_type(**given) if given else None
        else:
            values[item.name] = getattr(args, prefix + item.name)
    return cls(**values)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_decoding_options(parser: argparse.ArgumentParser) -> None:
    """The decoding flags (one per ``DecodeOptions`` field) and the batch and input options."""
    from janus_fast.decoding.options import DecodeOptions

    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    _add_dataclass_options(parser, DecodeOptions())
    parser.add_argument("--max-batch-tokens", type=positive_int, default=4096, help="padded source tokens per batch")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="at most this many sentences per batch")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N; under torchrun, cuda is each process's own GPU, cuda:LOCAL_RANK (default: cpu)",
    )
    parser.add_argument(
        "--on-long-input",
        choices=("truncate", "error"),
        default="truncate",
        help="what to do with inputs longer than the model accepts",
    )


# the flags that set up a Translator (Translator.from_pretrained's keywords, under the same names)
TRANSLATOR_FLAGS = ("device", "max_batch_tokens", "on_long_input", "decoder", "precision")


def _translator(args: argparse.Namespace):  # noqa: ANN202
    from janus_fast.translator import Translator

    settings = {name: getattr(args, name) for name in TRANSLATOR_FLAGS}
    translator = Translator.from_pretrained(args.model, **settings)
    if translator.choice.can_release_weights:  # the command decodes at this precision only: weights once
        translator.choice.release_weights()
    return translator


DISTILL_BEAM = 4  # distill's beam in mode ar unless --beam is given (sequence-level distillation's usual)


def _decode_options(args: argparse.Namespace):  # noqa: ANN202
    """The ``DecodeOptions`` of the decoding flags (those left unset resolve per --compat)."""
    from janus_fast.decoding.options import DecodeOptions

    options = _build_dataclass(DecodeOptions, args)
    if getattr(args, "command", None) == "distill" and options.mode == "ar" and options.beam is None:
        options = options.replace(beam=DISTILL_BEAM)
    return options


def translation_rate(translated: int, seconds: float) -> float | None:
    """Sentences per second over the sentences this run translated (None: it translated none)."""
    return round(translated / max(seconds, 1e-9), 2) if translated else None


def speed_summary(translated: int, seconds: float, reused: int) -> str:
    """The speed line of ``evaluate``, over the sentences this run translated; those an interrupted
    run of the job had translated are said apart, not counted in the speed."""
    earlier = f"{reused} translated by an interrupted run of this job and reused"
    if reused and not translated:
        return f"0 sentences translated ({earlier}; no speed measured)"
    line = f"{translated} sentences in {seconds:.2f}s: {translation_rate(translated, seconds) or 0.0} sentences/s"
    return f"{line} ({earlier})" if reused else line


def command_train(args: argparse.Namespace) -> int:
    from janus_fast.training.train import TrainConfig, train

    config = _build_dataclass(TrainConfig, args)
    check_writable_directory(config.output_dir, "--output-dir")
    state = train(config)
    print_report(f"done: {state.update} updates, {state.epoch} epochs, {state.train_seconds:.0f}s of training")
    return 0


def check_output_option(path: str, option: str, inputs: Sequence[str | None] = (), model: str | None = None) -> None:
    """``check_output`` for the file an option names, neither an input nor inside the ``model``
    checkpoint folder the command reads (None: the shipped model's); an empty name is an InputError
    naming the option too."""
    from janus_fast.translator import DEFAULT_MODEL_DIR

    if not path:
        raise InputError(f"{option} is empty: give the name of a file to write")
    check_output(path, option, inputs=inputs, folders=[model if model is not None else DEFAULT_MODEL_DIR])


def write_output_file(path: str, data: bytes, option: str, what: str) -> None:
    """``atomic_write`` of ``data`` (``what``: e.g. "the translations") to the file of ``option``; a
    failure to write (a full disk, ``/dev/full``, ...) is an InputError naming the option and file."""
    from janus_fast.checkpoint import atomic_write

    try:
        atomic_write(path, data)
    except OSError as error:
        reason = error.strerror or str(error)
        raise InputError(f"{option} {path}: cannot write {what} ({reason})") from error


def _standard_input() -> typing.BinaryIO:
    """Standard input's binary stream; a closed one (``<&-``) is an InputError saying so."""
    if sys.stdin is None:
        raise InputError("standard input is closed: give --input FILE or pipe the lines in")
    return sys.stdin.buffer


def write_standard_output(text: str, what: str) -> None:
    """Write ``text`` (``what``: e.g. "the translations") to standard output and flush it; a closed
    or failing standard output (``>&-``, ``> /dev/full``, a full disk or a file size limit reached
    part-way) is an InputError saying so. Standard output is then pointed at the null device, so
    that Python's own flush at exit has nothing to report."""
    stream = sys.stdout
    try:
        if stream is None:
            raise OSError(errno.EBADF, "it is closed")
        stream.flush()
        descriptor = _file_descriptor(stream)
        if descriptor is None:  # not a file (captured, a StringIO): its own write reports failures
            stream.write(text)
            stream.flush()
        else:  # write(2) until every byte is out: a short write is followed by the error it stopped at
            data = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
            while data:
                data = data[os.write(descriptor, data) :]
    except (OSError, ValueError) as error:
        _silence_standard_output()
        reason = (error.strerror if isinstance(error, OSError) else None) or str(error)
        raise InputError(f"cannot write {what} to standard output: {reason}") from error


def _file_descriptor(stream: object) -> int | None:
    """The file descriptor under a text stream, or None where it has none."""
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


def print_report(text: str) -> None:
    """Print a command's report line(s) to standard output: nothing when it is closed (``>&-``: the
    work is done, the report unwanted), an InputError when writing it fails (``> /dev/full``)."""
    if sys.stdout is not None:
        write_standard_output(text + "\n", "the report")


def flush_standard_output() -> None:
    """Flush what a command printed to standard output (unless it is closed: then nothing was), so
    that a failing one (``> /dev/full``) is an InputError here rather than Python's report at exit."""
    if sys.stdout is not None:
        write_standard_output("", "the output")


def _silence_standard_output() -> None:
    """Point standard output's descriptor at the null device (best effort), after a failed write."""
    try:
        descriptor = os.open(os.devnull, os.O_WRONLY)
        os.dup2(descriptor, sys.stdout.fileno())
        os.close(descriptor)
    except (AttributeError, OSError, ValueError):
        pass


def _decoding_context(args: argparse.Namespace):  # noqa: ANN202
    """The ranks of this run (one process outside torchrun; gloo between processes under it),
    with ``args.device`` made this rank's (``cuda`` -> ``cuda:LOCAL_RANK``)."""
    from janus_fast.corpus import CONNECT_TIMEOUT
    from janus_fast.distributed import DistributedContext

    context = DistributedContext("gloo", CONNECT_TIMEOUT)
    args.device = context.device(args.device)
    return context


def _chunk_function(args: argparse.Namespace, translator, options):  # noqa: ANN001, ANN202
    """How translate turns a chunk of input lines into output lines: translations, or with
    --token-ids / --print-scores ids / fairseq-style scored lines (then one or two lines per input)."""
    from janus_fast.corpus import plain_translations

    if not (args.token_ids or args.print_scores):
        return plain_translations(translator, options, args.batch_size, {})

    def translate_chunk(lines: list[str], first_line: int, progress) -> list[str]:  # noqa: ANN001
        if args.token_ids:
            sources = [parse_token_ids(line, first_line + i) for i, line in enumerate(lines)]
        else:
            sources = [translator.tokenizer.encode(line) if line.strip() else [] for line in lines]
        found = translator.translate_ids(
            sources, options=options, batch_size=args.batch_size, progress=progress, first_line=first_line
        )
        if args.token_ids:
            outputs = [" ".join(map(str, ids)) for ids in found.tokens]
        else:
            outputs = translator.texts(found.tokens, options.mode)
        if args.print_scores:
            outputs = scored_lines(outputs, found, base_two=args.compat == "fairseq", first_index=first_line - 1)
        return outputs

    return translate_chunk


def _progress_bar(enabled: bool, total: int | None = None):  # noqa: ANN202
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="sent", smoothing=0.1)


def _bar_total(bar):  # noqa: ANN001, ANN202
    """A ``translate_file(total=...)`` callback: the bar's total, once the job's scan knows it."""

    def set_total(lines: int) -> None:
        bar.total = lines
        bar.refresh()

    return set_total


def is_regular_input(path: str) -> bool:
    """Whether ``path`` (symlinks followed) is a regular file, which can be read more than once
    (not standard input, a pipe, a FIFO, ``/dev/stdin`` or a process substitution)."""
    try:
        return path != "-" and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # a missing file: reading it names it


def check_file_options(args: argparse.Namespace, command: str, *options: str) -> None:
    """InputError unless each of ``options`` (e.g. "src") names a regular file: ``command`` reads its
    inputs more than once (a resumable job, a count and a check) and writes its outputs beside a
    parts folder, so standard input and output ('-'), pipes and FIFOs are refused."""
    for option in options:
        path = getattr(args, option)
        if path is not None and os.path.isdir(path):
            raise InputError(f"--{option} {path}: is a directory, not a file of lines")
        if path is not None and not is_regular_input(path):
            raise InputError(
                f"--{option} {path}: {command} reads and writes files ('-', pipes and FIFOs are not supported "
                "here; translate streams them)"
            )


def command_translate(args: argparse.Namespace) -> int:
    from janus_fast.corpus import (
        MAX_CHUNK_LINES,
        TOKEN_IDS,
        count_lines,
        iter_lines,
        stream_lines,
        translate_file,
        translate_stream,
    )
    from janus_fast.output import atomic_writer, is_replaceable

    if args.output != "-":
        check_output_option(args.output, "--output", inputs=[args.input], model=args.model)
    context = _decoding_context(args)
    try:
        resumable = (
            is_regular_input(args.input)
            and args.output != "-"
            and is_replaceable(args.output)
            and not args.print_scores
        )
        if context.world_size > 1 and not resumable:
            raise InputError(
                "under torchrun, translate reads --input FILE and writes --output FILE (regular files, not standard "
                "input or output, pipes or devices), without --print-scores: each rank translates its share of "
                "the file's chunks"
            )
        translator = _translator(args)
        options = _decode_options(args)
        translate_chunk = _chunk_function(args, translator, options)
        if resumable:
            kind = TOKEN_IDS if args.token_ids else None
            with _progress_bar(args.progress and context.is_main) as bar:
                translate_file(
                    translator,
                    args.input,
                    args.output,
                    chunk_size=args.chunk_size,
                    options=options,
                    batch_size=args.batch_size,
                    progress=bar.update,
                    total=_bar_total(bar),
                    model_dir=getattr(translator, "checkpoint_dir", None),
                    context=context,
                    translate_chunk=translate_chunk,
                    output_kind=kind,
                )
            return 0
        # one process, streamed (read once, nothing to resume): standard input or output, a pipe or a
        # device, or scored lines
        lines = stream_lines(_standard_input(), "standard input") if args.input == "-" else iter_lines(args.input)
        total = count_lines(args.input) if is_regular_input(args.input) else None
        chunk_size = args.chunk_size or MAX_CHUNK_LINES
        with _progress_bar(args.progress, total) as bar:
            if args.output == "-":
                translate_stream(
                    lines,
                    lambda text: write_standard_output(text, "the translations"),
                    translate_chunk,
                    chunk_size=chunk_size,
                    progress=bar.update,
                )
            else:
                try:
                    with atomic_writer(args.output) as raw:
                        out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gzip_named(args.output) else raw
                        translate_stream(
                            lines,
                            lambda text: out.write(text.encode("utf-8")),
                            translate_chunk,
                            chunk_size=chunk_size,
                            progress=bar.update,
                        )
                        if out is not raw:
                            out.close()
                except OSError as error:
                    raise InputError(
                        f"--output {args.output}: cannot write the translations ({error.strerror or error})"
                    ) from error
        return 0
    finally:
        context.close()


def scored_lines(outputs: list[str], found, base_two: bool, first_index: int = 0) -> list[str]:  # noqa: ANN001
    """fairseq-generate's lines for each input i (0-based, the first ``first_index``):
    ``H-i<TAB>score<TAB>hypothesis`` and, where the decoding reports per-token scores (compat
    fairseq), ``P-i<TAB>scores``; scores in base 2 with ``base_two`` (as fairseq prints them), else
    natural log."""
    scale = 1 / math.log(2) if base_two else 1.0
    lines = []
    for index, (text, score) in enumerate(zip(outputs, found.scores)):
        lines.append(f"H-{first_index + index}\t{score * scale}\t{text}")
        if found.positional is not None:
            scores = " ".join(f"{value * scale:.4f}" for value in found.positional[index])
            lines.append(f"P-{first_index + index}\t{scores}")
    return lines


def parse_token_ids(line: str, number: int) -> list[int]:
    """Space-separated non-negative integers of input line ``number``, written in ASCII digits only
    (not Python's ``int`` syntax: no ``5_0``, sign or other scripts' digits); InputError otherwise."""
    fields = line.split()
    for field in fields:
        if not (field.isascii() and field.isdigit()):
            if field[:1] == "-" and field[1:].isascii() and field[1:].isdigit():
                raise InputError(f"input line {number}: token ids must be >= 0, got {field}")
            raise InputError(f"input line {number}: --token-ids expects space-separated integers, got {field!r}")
    return [int(field) for field in fields]


def command_convert(args: argparse.Namespace) -> int:
    from janus_fast.fairseq.convert import convert_fairseq, new_folder_problem

    bpe, bpe_path = (None, None) if args.bpe is None else args.bpe
    if bpe is not None and bpe not in ("sentencepiece", "subword-nmt"):
        raise ValueError(f"--bpe {bpe}: expected sentencepiece or subword-nmt")
    for path, option in ((args.fairseq, "--fairseq"), (args.dict, "--dict"), (bpe_path, "--bpe")):
        if path is not None and not os.path.isfile(path):
            found = (
                "a folder, not a file"
                if os.path.isdir(path)
                else "not a regular file"
                if os.path.exists(path)
                else "no such file"
            )
            raise InputError(f"{option} {path}: {found}")
    if bpe is not None:  # the BPE file checked before the work (and named in the error)
        from janus_fast.fairseq.dictionary import bpe_splitter

        try:
            with open(bpe_path, "rb") as handle:
                bpe_splitter(bpe, handle.read())
        except OSError as error:
            raise InputError(f"--bpe {bpe_path}: cannot read it ({error.strerror or error})") from error
        except ValueError as error:
            raise InputError(f"--bpe {bpe} {bpe_path}: {error}") from error
    problem = new_folder_problem(args.output)
    if problem is not None:
        raise InputError(f"--output: {problem}")
    check_writable_directory(args.output, "--output")
    model = convert_fairseq(args.fairseq, args.dict, args.output, bpe, bpe_path)
    config = model.config
    print_report(
        f"wrote {args.output}: {config.extra.get('fairseq_arch')} -> janus_fast, {model.num_parameters / 1e6:.2f}M "
        f"parameters, vocabulary {config.vocab_size}; decode with --compat fairseq for fairseq-generate's outputs"
    )
    return 0


SCORED_LINES_PER_CHUNK = 10_000  # evaluate scores this many lines at a time


def streamed_corpus_scores(metrics: list, hypotheses_path: str, references_path: str) -> list:
    """sacreBLEU's ``corpus_score`` of each metric (BLEU, chrF: their sufficient statistics add up
    sentence by sentence) over two files read ``SCORED_LINES_PER_CHUNK`` lines at a time: the same
    scores as one call on whole lists, in memory that does not grow with the corpus (whole lists
    took 5 to 8 KB a line)."""
    from janus_fast.data import iter_lines

    totals: list[list | None] = [None] * len(metrics)

    def add(hypotheses: list[str], references: list[str]) -> None:
        for index, metric in enumerate(metrics):
            for statistics in metric._extract_corpus_statistics(hypotheses, [references]):
                total = totals[index]
                totals[index] = list(statistics) if total is None else [a + b for a, b in zip(total, statistics)]

    hypotheses: list[str] = []
    references: list[str] = []
    for hypothesis, reference in zip(iter_lines(hypotheses_path), iter_lines(references_path)):
        hypotheses.append(hypothesis)
        references.append(reference)
        if len(hypotheses) == SCORED_LINES_PER_CHUNK:
            add(hypotheses, references)
            hypotheses, references = [], []
    if hypotheses:
        add(hypotheses, references)
    return [metric._aggregate_and_compute([total]) for metric, total in zip(metrics, totals)]


def command_evaluate(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    import sacrebleu

    from janus_fast.corpus import count_lines, translate_file
    from janus_fast.data import iter_lines
    from janus_fast.output import is_replaceable

    check_file_options(args, "evaluate", "src", "ref")
    if args.output is not None:
        if args.output == "-":
            raise InputError("--output -: evaluate prints its scores there; write the translations to a file")
        check_output_option(args.output, "--output", inputs=[args.src, args.ref], model=args.model)
    if os.path.samefile(args.src, args.ref):
        raise InputError(f"--ref {args.ref} is the --src file: the references are translations, in the target language")
    sources = count_lines(args.src)
    references, blank, first_blank = 0, 0, 0
    for references, line in enumerate(iter_lines(args.ref, warn=False), 1):  # read_lines warns, below
        if not line.strip():
            blank, first_blank = blank + 1, first_blank or references
    if not sources:
        raise InputError(f"{args.src} has no lines to translate and score")
    if sources != references:
        raise InputError(f"{args.src} has {sources} lines but {args.ref} has {references}")
    if blank == references:
        raise InputError(f"--ref {args.ref}: every line is blank: nothing to score against")
    if blank:
        warnings.warn(
            f"--ref {args.ref}: {blank} of {references} lines are blank (the first: line {first_blank}): their "
            "translations are scored against an empty reference",
            stacklevel=2,
        )
    context = _decoding_context(args)
    scratch = None
    try:
        if args.output is None and not context.single_machine:
            raise InputError("under torchrun on several machines, give --output on a filesystem every machine sees")
        translator = _translator(args)
        options = translator.resolve_options(_decode_options(args))
        output = args.output if args.output is not None and is_replaceable(args.output) else None
        if output is None:  # the translations go to a scratch folder (rank 0's, shared with the others)
            scratch = context.broadcast(tempfile.mkdtemp(prefix="janus-fast-evaluate-") if context.is_main else None)
            output = os.path.join(scratch, "hypotheses.txt")
        start = time.perf_counter()
        reused: list[int] = []  # sentences an interrupted run of this job had translated
        translate_file(
            translator,
            args.src,
            output,
            chunk_size=args.chunk_size,
            options=options,
            batch_size=args.batch_size,
            model_dir=getattr(translator, "checkpoint_dir", None),
            context=context,
            output_name=None if scratch is None else f"{output} (evaluate's scratch file: no --output given)",
            reused=reused.append,
        )
        seconds = time.perf_counter() - start
        if not context.is_main:
            return 0
        if args.output is not None and output != args.output:  # a device or a pipe: written once, here
            data = "".join(h + "\n" for h in read_lines(output)).encode("utf-8")
            write_output_file(args.output, data, "--output", "the translations")
        bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
        bleu_score, chrf_score = streamed_corpus_scores([bleu, chrf], output, args.ref)
    finally:
        if scratch is not None and context.is_main:
            shutil.rmtree(scratch, ignore_errors=True)
        context.close()
    result = {
        "bleu": round(bleu_score.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf": round(chrf_score.score, 2),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": sources,
        "reused_sentences": reused[0],  # translated before, by an interrupted run: not in the speed
        "seconds": round(seconds, 3),
        "sentences_per_second": translation_rate(sources - reused[0], seconds),
        "processes": context.world_size,
        **dataclasses.asdict(options),
    }
    if args.json:
        summary = json.dumps(result) + "\n"
    else:
        summary = (
            f"{bleu_score}\n  {bleu.get_signature()}\n{chrf_score}\n  {chrf.get_signature()}\n"
            f"{speed_summary(sources - reused[0], seconds, reused[0])}"
            f"{f' ({context.world_size} processes)' if context.world_size > 1 else ''}\n"
        )
    write_standard_output(summary, "the scores")
    return 0


def command_distill(args: argparse.Namespace) -> int:
    from janus_fast.training.distill import distill

    check_file_options(args, "distill", "src")
    if args.output == "-":
        raise InputError("--output -: distill writes a file (resumable, beside its parts folder)")
    check_output_option(args.output, "--output", inputs=[args.src], model=args.model)
    context = _decoding_context(args)
    try:
        translator = _translator(args)
        with _progress_bar(args.progress and context.is_main) as bar:
            count = distill(
                translator,
                args.src,
                args.output,
                chunk_size=args.chunk_size,
                progress=bar.update,
                total=_bar_total(bar),
                model_dir=getattr(translator, "checkpoint_dir", None),
                options=_decode_options(args),
                batch_size=args.batch_size,
                context=context,
            )
    finally:
        context.close()
    if context.is_main:
        print(f"wrote {count} lines to {args.output}", file=sys.stderr)
    return 0


def command_export(args: argparse.Namespace) -> int:
    import torch

    from janus_fast.checkpoint import (
        TOKENIZER_DIGEST,
        checkpoint_output,
        lineage,
        load_checkpoint,
        read_config,
        replaced_directory,
        save_pretrained,
        save_tokenizer,
    )
    from janus_fast.model import decoding_default_side, decoding_defaults

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    output = checkpoint_output(args.output, [args.model])
    check_writable_directory(os.path.dirname(output), "--output")
    model, tokenizer = load_checkpoint(args.model)
    if TOKENIZER_DIGEST not in read_config(args.model) and hasattr(tokenizer, "model_proto"):
        warnings.warn(
            f"{args.model}: its config.json records no tokenizer digest, so its spm.model cannot be checked "
            "against the weights; the copy records that file as the model's tokenizer",
            stacklevel=1,
        )
    given = {name: getattr(args, name) for name in decoding_defaults() if getattr(args, name) is not None}
    for name in given:  # translate would refuse it: a dead setting
        if decoding_default_side(name) == "nar" and not model.config.has_nar:
            raise InputError(f"{flag(name)} is a NAR setting; {args.model} is a plain transformer (AR only)")
    model.config = dataclasses.replace(model.config, **given)  # decoding defaults kept with the copy
    with replaced_directory(output) as staging:  # the old copy stays whole until the new one is
        save_pretrained(model, staging, dtype=dtype, **lineage([args.model]))
        save_tokenizer(tokenizer, staging)
    size = sum(os.path.getsize(os.path.join(output, name)) for name in os.listdir(output))
    print_report(f"wrote {args.output}: {args.dtype} weights, {size / 1e6:.1f} MB")
    return 0


def command_average(args: argparse.Namespace) -> int:
    from janus_fast.checkpoint import (
        average_checkpoints,
        checkpoint_output,
        lineage,
        load_tokenizer,
        replaced_directory,
        save_pretrained,
        save_tokenizer,
    )

    output = checkpoint_output(args.output, args.models)
    check_writable_directory(os.path.dirname(output), "--output")
    model = average_checkpoints(args.models)
    with replaced_directory(output) as staging:  # the old copy stays whole until the new one is
        save_pretrained(model, staging, training_run=lineage(args.models)["training_run"])
        save_tokenizer(load_tokenizer(args.models[0]), staging)
    print_report(f"wrote {args.output}: the mean of {len(args.models)} checkpoints' weights (fp32)")
    return 0


# `profile` bounds: its largest case holds (192 x 64 x V) logits a few times over, about 0.19 MB per
# vocabulary entry (8000: 1.5 GB); 262144 = 2**18 covers the largest real vocabularies (~256k).
PROFILE_MAX_VOCAB = 262_144
PROFILE_MIN_VOCAB = 4  # the timed op's mask id (3) must be a vocabulary entry
PROFILE_BYTES_PER_VOCAB_ENTRY = 200_000
PROFILE_MAX_REPEATS = 100


def command_profile(args: argparse.Namespace) -> int:
    """``janus-fast profile``; a ValueError (a one-line error) for a --vocab or --repeats that is too large
    or a --vocab whose logits would not fit in the memory available now."""
    from janus_fast.benchmarks.report import profile_report

    if args.vocab < PROFILE_MIN_VOCAB:
        raise ValueError(f"--vocab must be at least {PROFILE_MIN_VOCAB} (the profiled mask id is 3), got {args.vocab}")
    if args.vocab > PROFILE_MAX_VOCAB:
        raise ValueError(
            f"--vocab must be at most {PROFILE_MAX_VOCAB} (the profile holds about "
            f"{PROFILE_BYTES_PER_VOCAB_ENTRY / 1e6:.1f} MB per vocabulary entry), got {args.vocab}"
        )
    if args.repeats > PROFILE_MAX_REPEATS:
        raise ValueError(f"--repeats must be at most {PROFILE_MAX_REPEATS}, got {args.repeats}")
    check_fits_in_memory(
        args.vocab * PROFILE_BYTES_PER_VOCAB_ENTRY,
        f"--vocab {args.vocab}",
        f"choose a smaller --vocab (the profile holds about {PROFILE_BYTES_PER_VOCAB_ENTRY / 1e6:.1f} MB per entry)",
    )
    print_report(profile_report(vocab_size=args.vocab, repeats=args.repeats, as_json=args.json))
    return 0


PLOT_FORMATS = ("png", "pdf", "svg")  # --plot's file types, by the name's extension


def check_plot_option(path: str, model: str | None, inputs: Sequence[str]) -> None:
    """Raise InputError before the benchmark unless the ``--plot`` file can be written: a name ending
    in one of ``PLOT_FORMATS``, in an existing (the plot does not create it), writable folder
    (``check_output``), none of the ``inputs`` the bench reads nor inside the model's checkpoint."""
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension not in PLOT_FORMATS:
        raise InputError(f"--plot {path}: the name must end in .png, .pdf or .svg (the plot's file type)")
    folder = os.path.dirname(os.path.realpath(path))  # a symlink's target's folder: where the plot lands
    if not os.path.isdir(folder):
        raise InputError(f"--plot {path}: no such folder {folder}; create it or choose another path")
    check_output_option(path, "--plot", inputs=inputs, model=model)


def command_shape_bench(args: argparse.Namespace) -> int:
    from janus_fast.benchmarks.shapes import DEFAULT_ROWS, format_shape_report, run_shape_bench

    def listed(text: str, option: str, kind: type = str) -> tuple:
        try:
            values = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as error:
            raise InputError(f"{option} {text!r}: {error}") from error
        if not values:
            raise InputError(f"{option} is empty")
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise InputError(f"{option} {text!r}: {', '.join(map(str, repeated))} given twice (each is run once)")
        return values

    threads = listed(args.threads, "--threads", int)
    if min(threads) < 1 or max(threads) > MAX_THREADS:
        raise InputError(f"--threads {args.threads}: thread counts of 1 to {MAX_THREADS}")
    precisions = listed(args.precisions, "--precisions")
    if set(precisions) - {"fp32", "bf16", "int8"}:
        raise InputError(f"--precisions {args.precisions}: fp32, bf16 or int8")
    if args.sentences > 100_000:
        raise InputError(f"--sentences {args.sentences}: at most 100000")
    report = run_shape_bench(
        args.shape,
        lengths=args.lengths,
        sentences=args.sentences,
        batch1=args.batch1,
        threads=threads,
        precisions=precisions,
        rows=listed(args.rows, "--rows") if args.rows is not None else DEFAULT_ROWS,
        repeats=args.repeats,
        max_batch_tokens=args.max_batch_tokens,
        compare=tuple(args.compare),
    )
    write_standard_output((json.dumps(report) if args.json else format_shape_report(report)) + "\n", "the report")
    return 0


# bench's options that only one of its two forms reads, with their defaults (None in the parser, so
# that an option given to the other form is refused instead of ignored)
BENCH_SHAPE_ONLY = {"lengths": "wmt", "sentences": 64, "threads": "1", "precisions": "fp32,int8", "rows": None}
BENCH_TRAINED_ONLY = {
    "model": None,
    "data_dir": None,
    "source_lang": "de",
    "target_lang": "en",
    "limit": 1000,
    "plot": "bench.png",
    "compat": "janus",
}


def command_bench(args: argparse.Namespace) -> int:
    shape = args.shape is not None
    ignored, used = (BENCH_TRAINED_ONLY, BENCH_SHAPE_ONLY) if shape else (BENCH_SHAPE_ONLY, BENCH_TRAINED_ONLY)
    for name in ignored:
        if getattr(args, name) is not None:
            form = "a trained model (no --shape)" if shape else "--shape"
            raise InputError(f"{flag(name)} applies to bench with {form} only")
    for name, default in used.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if shape:
        return command_shape_bench(args)
    if args.data_dir is None:
        raise InputError("bench needs --data-dir (the test set to time a trained model on) or --shape (a random model)")
    from janus_fast.benchmarks.decoding import TEST_SPLIT, format_bench_report, run_bench, write_plot

    if args.plot:  # never onto what the bench reads (a candidate that is missing: harmless)
        inputs = [
            path
            for language in (args.source_lang, args.target_lang)
            for path in corpus_candidates(args.data_dir, TEST_SPLIT, language)
        ]
        check_plot_option(args.plot, args.model, inputs)
    report = run_bench(
        args.model,
        args.data_dir,
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        limit=args.limit,
        batch1_sentences=args.batch1,
        max_batch_tokens=args.max_batch_tokens,
        repeats=args.repeats,
        compare=tuple(args.compare),
        compat=args.compat,
    )
    plot_error = None
    if args.plot:  # the report is printed even when the plot fails: the measurements are not lost
        try:
            report["plot"] = args.plot if write_plot(report, args.plot) else None
        except (OSError, ValueError) as error:
            report["plot"] = None
            plot_error = InputError(
                f"--plot {args.plot}: cannot write the plot ({getattr(error, 'strerror', None) or error})"
            )
    write_standard_output(format_bench_report(report, args.json) + "\n", "the benchmark report")
    if plot_error is not None:
        raise plot_error
    return 0


CHUNK_SIZE_HELP = (
    "lines per chunk: the unit of work shared among torchrun's processes and of a resume, each chunk written to "
    "OUTPUT.parts/ as it completes (default: about a sixteenth of the input, 50 to 2000 lines; translate: "
    "2000 when it streams standard input or output, a pipe or a device)"
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser that also reads ``-1e-3``, ``-1E5`` and ``-inf`` as negative numbers (values
    of an option such as ``--length-bonus``), not as unknown options, as it does ``-1`` and ``-0.5``,
    and takes options by their whole names only: argparse would otherwise read ``--mode ar`` as
    ``--model ar`` in a command that has ``--model`` but no ``--mode``. (Its sub-command parsers are
    of this class too.)"""

    NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self.NEGATIVE_NUMBER  # what argparse consults (3.10 to 3.13)

    def _parse_optional(self, arg_string: str) -> typing.Any:
        # argparse tries prefixes of short options first, so ``-inf`` would be read as ``-i nf``
        # where the command has a ``-i``; a negative number is a value before anything else
        if self.NEGATIVE_NUMBER.match(arg_string) and not self._has_negative_number_optionals:
            return None
        return super()._parse_optional(arg_string)


def build_parser() -> argparse.ArgumentParser:
    from janus_fast.model import JanusConfig
    from janus_fast.training.train import TrainConfig

    parser = ArgumentParser(prog="janus-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser("train", help="train a JANUS / AR / CMLM model")
    _add_dataclass_options(train_parser, TrainConfig())
    train_parser.set_defaults(handler=command_train)

    translate_parser = commands.add_parser("translate", help="translate lines from stdin (or --input) to stdout")
    _add_decoding_options(translate_parser)
    translate_parser.add_argument("--input", "-i", default="-", help="input file (default: stdin)")
    translate_parser.add_argument("--output", "-o", default="-", help="output file (default: stdout)")
    translate_parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())
    translate_parser.add_argument(
        "--token-ids",
        action="store_true",
        help="input lines are space-separated vocabulary ids (no bos/eos); output lines are ids too",
    )
    translate_parser.add_argument(
        "--print-scores",
        action="store_true",
        help="print fairseq-generate's H-i (score, hypothesis) lines and, with --compat fairseq, its P-i "
        "per-token scores (base 2 with --compat fairseq, as fairseq prints them; natural log otherwise)",
    )
    translate_parser.add_argument("--chunk-size", type=positive_int, default=None, help=CHUNK_SIZE_HELP)
    translate_parser.set_defaults(handler=command_translate)

    evaluate_parser = commands.add_parser("evaluate", help="sacreBLEU and chrF of translations of --src against --ref")
    _add_decoding_options(evaluate_parser)
    evaluate_parser.add_argument("--src", required=True)
    evaluate_parser.add_argument("--ref", required=True)
    evaluate_parser.add_argument("--output", default=None, help="also write the translations here")
    evaluate_parser.add_argument("--json", action="store_true")
    evaluate_parser.add_argument("--chunk-size", type=positive_int, default=None, help=CHUNK_SIZE_HELP)
    evaluate_parser.set_defaults(handler=command_evaluate)

    distill_parser = commands.add_parser(
        "distill", help="translate a training corpus with a teacher (sequence-level knowledge distillation)"
    )
    _add_decoding_options(distill_parser)
    distill_parser.set_defaults(mode="ar")  # and beam DISTILL_BEAM in mode ar (_decode_options)
    for action in distill_parser._actions:  # its own beam default, said where --help says the default
        if action.dest == "beam":
            action.help = f"beam size (AR; 1 = greedy; default {DISTILL_BEAM}, also with --compat fairseq)"
    distill_parser.add_argument("--src", required=True, help="source lines (plain or .gz)")
    distill_parser.add_argument("--output", required=True, help="translations, one per line (.gz: gzip)")
    distill_parser.add_argument("--chunk-size", type=positive_int, default=None, help=CHUNK_SIZE_HELP)
    distill_parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())
    distill_parser.set_defaults(handler=command_distill)

    export_parser = commands.add_parser("export", help="write an inference-only copy of a checkpoint (e.g. bf16)")
    export_parser.add_argument("--model", required=True, help="checkpoint directory to read")
    export_parser.add_argument("--output", required=True, help="directory to write")
    export_parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16")
    for item in dataclasses.fields(JanusConfig):  # the decoding defaults a copy may set
        if item.metadata.get("decoding_default"):
            export_parser.add_argument(flag(item.name), type=float, default=None, help=item.metadata["help"])
    export_parser.set_defaults(handler=command_export)

    average_parser = commands.add_parser(
        "average", help="average the weights of several checkpoints of one run (e.g. its last saves)"
    )
    average_parser.add_argument("--models", nargs="+", required=True, help="checkpoint directories (2 or more)")
    average_parser.add_argument("--output", required=True, help="directory to write (fp32; `export` makes bf16)")
    average_parser.set_defaults(handler=command_average)

    convert_parser = commands.add_parser(
        "convert",
        help="convert a fairseq CMLM, JANUS or transformer checkpoint (read without running pickled code) "
        "to a janus_fast one",
    )
    convert_parser.add_argument("--fairseq", required=True, metavar="CHECKPOINT.pt", help="fairseq checkpoint")
    convert_parser.add_argument("--dict", required=True, metavar="DICT.txt", help="its (joined) dictionary")
    convert_parser.add_argument(
        "--bpe",
        nargs=2,
        metavar=("KIND", "PATH"),
        default=None,
        help="the BPE its text was cut with: 'sentencepiece MODEL' or 'subword-nmt CODES' (default: none, "
        "inputs are pre-tokenised in the dictionary's symbols)",
    )
    convert_parser.add_argument("--output", required=True, help="checkpoint directory to write (new or empty)")
    convert_parser.set_defaults(handler=command_convert)

    profile_parser = commands.add_parser("profile", help="throughput of the native ops and kernels")
    profile_parser.add_argument(
        "--vocab",
        type=positive_int,
        default=8000,
        help=f"vocabulary size V of the timed (N, T, V) logits, {PROFILE_MIN_VOCAB} to {PROFILE_MAX_VOCAB}; it holds "
        f"about {PROFILE_BYTES_PER_VOCAB_ENTRY / 1e6:.1f} MB per entry (the default: 1.6 GB) and refuses a V "
        "that does not fit in the available memory (default: %(default)s)",
    )
    profile_parser.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help=f"timed calls per case, the median is reported; 1 to {PROFILE_MAX_REPEATS} (default: %(default)s)",
    )
    profile_parser.add_argument("--json", action="store_true")
    profile_parser.set_defaults(handler=command_profile)

    bench_parser = commands.add_parser("bench", help="reference vs engine, NAR vs AR: speed and BLEU, one table")
    bench_parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    bench_parser.add_argument(
        "--data-dir", default=None, help="folder with test_2016_flickr.<lang>[.gz] (required unless --shape)"
    )
    bench_parser.add_argument(
        "--shape",
        default=None,
        help="time a seeded random model of this shape instead of a trained one: base (transformer-base), big, or "
        "D,FFN,HEADS,ENC,DEC,VOCAB; outputs forced to the source lengths on every engine (no BLEU)",
    )
    bench_parser.add_argument(
        "--lengths",
        default=None,
        help="--shape: source lengths, wmt (mean 27, 3 to 150), N, or a file of integers (default: wmt)",
    )
    bench_parser.add_argument(
        "--sentences", type=positive_int, default=None, help="--shape: sentences of the large batch (default: 64)"
    )
    bench_parser.add_argument(
        "--threads", default=None, help="--shape: thread counts, comma-separated, e.g. 1,2 (default: 1)"
    )
    bench_parser.add_argument(
        "--precisions",
        default=None,
        help="--shape: precisions, comma-separated: fp32, bf16, int8 (default: fp32,int8)",
    )
    bench_parser.add_argument(
        "--rows",
        default=None,
        help="--shape: the rows, comma-separated (default: AR greedy, AR beam 4, NAR T=2/4/10 "
        "l=3, speculative; also NAR T=1..10 l=1)",
    )
    bench_parser.add_argument("--source-lang", default=None, help="source language of the test files (default: de)")
    bench_parser.add_argument("--target-lang", default=None, help="target language of the test files (default: en)")
    bench_parser.add_argument(
        "--limit", type=positive_int, default=None, help="test sentences for the large-batch rows (default: 1000)"
    )
    bench_parser.add_argument("--batch1", type=positive_int, default=100, help="sentences decoded one at a time")
    bench_parser.add_argument("--max-batch-tokens", type=positive_int, default=4096)
    bench_parser.add_argument("--repeats", type=positive_int, default=3, help="timed repeats (the median is reported)")
    bench_parser.add_argument(
        "--plot",
        default=None,
        help="plot of BLEU vs ms/sentence, a .png, .pdf or .svg file ('' for none; default: bench.png)",
    )
    bench_parser.add_argument("--json", action="store_true")
    bench_parser.add_argument(
        "--compare",
        action="append",
        default=[],
        choices=("ctranslate2",),
        help="also time another tool on a same-shape model in its own process (ctranslate2: pip install ctranslate2)",
    )
    bench_parser.add_argument(
        "--compat",
        choices=("janus", "fairseq"),
        default=None,
        help="fairseq (default: janus): time fairseq-generate's decoding (mask-predict, or AR beam search for a "
        "transformer) on a converted fairseq model (pre-tokenised test files)",
    )
    bench_parser.set_defaults(handler=command_bench)
    return parser


# what to lower when a command runs out of memory (the decoding commands: DECODE_ADVICE)
DECODE_ADVICE = "lower --max-batch-tokens or --batch-size (or --length-beam, --beam), or use --decoder engine"
OUT_OF_MEMORY_ADVICE = {
    "train": "lower --max-tokens, or the model's size (--d-model, --ffn-dim, layers, --vocab-size), or --threads",
    "bench": "lower --max-batch-tokens, or time a smaller --shape",
    "profile": "choose a smaller --vocab",
    "convert": "the model does not fit in this machine's memory",
    "export": "the model does not fit in this machine's memory",
    "average": "the models do not fit in this machine's memory (average fewer at a time)",
}


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # as Ctrl-C: cleanup (`finally`, temporary files) runs, then the exit


def main(argv: Sequence[str] | None = None) -> int:
    if sys.stderr is None:  # started with standard error closed (2>&-): warnings and errors go nowhere
        # (before the parser, whose --progress default asks it; print(file=None) would write to stdout)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    args = build_parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)  # kill / torchrun's stop: as Ctrl-C
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


PEER_FAILURE_SIGNS = ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer", "Broken pipe")


def peer_failure(error: BaseException) -> str | None:
    """One line for a collective that failed because another process of a torchrun job died or
    vanished (gloo's or NCCL's error carries C++ stack frames); None for any other error."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or os.environ.get("WORLD_SIZE", "1").strip() in ("", "1"):  # not under torchrun
        return None
    text = str(error).strip()
    dist_error = getattr(distributed, "DistError", ())
    if not (isinstance(error, dist_error) or any(sign in text for sign in PEER_FAILURE_SIGNS)):
        return None
    first = text.splitlines()[0] if text else type(error).__name__
    first = first if len(first) <= 200 else first[:200] + " ..."
    return (
        f"another process of this torchrun job failed or was stopped ({first}); its own error says why. Rerun the "
        "same command: training resumes from its last save, a corpus job from its finished chunks"
    )


def _run(args: argparse.Namespace) -> int:
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *_: f"janus-fast: warning: {message}\n"
    from janus_fast.arguments import spelled_as_flags

    try:
        with spelled_as_flags():  # option errors name the flags typed (--relaxed-top-k, --mode nar)
            status = args.handler(args)
        flush_standard_output()
        return status
    except (InputError, CheckpointError, ValueError, TypeError) as error:
        print(f"janus-fast: error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        peer = peer_failure(error)
        if peer is not None:
            print(f"janus-fast: error: {peer}", file=sys.stderr)
            return 1
        if isinstance(error, RuntimeError) and "allocate" not in str(error):
            raise
        advice = OUT_OF_MEMORY_ADVICE.get(args.command, DECODE_ADVICE)
        print(f"janus-fast: error: out of memory: {advice}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. a full disk while saving a checkpoint: one line naming the file
        where = f"{error.filename}: " if error.filename else ""
        print(f"janus-fast: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
