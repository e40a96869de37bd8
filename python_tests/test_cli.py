"""The janus-fast command line on a tiny trained model: line counts, bad input, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT


def run_cli(*args: str, stdin: bytes = b"", cwd: str = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "janus_fast.cli", *args], input=stdin, capture_output=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize("mode", ["nar", "ar"])
def test_translate_preserves_line_count_and_empty_lines(trained_dir, mode):
    text = "Ein Mann fährt Fahrrad.\n\nZwei Hunde spielen im Schnee.\n   \nEine Frau.\n"
    counts = ["--iterations", "2"] if mode == "nar" else []
    result = run_cli("translate", "--model", trained_dir, "--mode", mode, *counts, stdin=text.encode())
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 5
    assert lines[1] == "" and lines[3] == ""
    assert lines[0] and lines[2] and lines[4]


@pytest.mark.slow
def test_engine_and_reference_decoders_agree_through_the_cli(trained_dir):
    text = "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n".encode()
    for mode in ("nar", "ar"):
        outputs = [
            run_cli(
                "translate",
                "--model",
                trained_dir,
                "--mode",
                mode,
                *(["--iterations", "3"] if mode == "nar" else []),
                "--decoder",
                d,
                stdin=text,
            )  # fmt: skip
            for d in ("engine", "reference")
        ]
        assert all(o.returncode == 0 for o in outputs)
        assert outputs[0].stdout == outputs[1].stdout


def test_translate_without_final_newline_and_invalid_utf8(trained_dir):
    result = run_cli("translate", "--model", trained_dir, stdin=b"Ein Hund\n\xff\xfe kaputt")
    assert result.returncode == 0
    assert len(result.stdout.decode().split("\n")) - 1 == 2
    assert b"invalid UTF-8" in result.stderr


@pytest.mark.slow
def test_long_input_truncated_with_warning_or_rejected(trained_dir):
    long_line = ("Hund " * 400).encode() + b"\n"
    result = run_cli("translate", "--model", trained_dir, "--mode", "nar", "--iterations", "1", stdin=long_line)
    assert result.returncode == 0
    assert b"truncated" in result.stderr
    assert len(result.stdout.decode().split("\n")) - 1 == 1
    rejected = run_cli("translate", "--model", trained_dir, "--on-long-input", "error", stdin=long_line)
    assert rejected.returncode == 2
    assert b"the model accepts" in rejected.stderr


def test_missing_files_and_models_are_named(trained_dir, tmp_path):
    result = run_cli("translate", "--model", str(tmp_path / "no_model"), stdin=b"x\n")
    assert result.returncode == 2 and b"no_model" in result.stderr
    result = run_cli("translate", "--model", trained_dir, "--input", str(tmp_path / "absent.de"))
    assert result.returncode == 2 and b"absent.de" in result.stderr
    assert b"Traceback" not in result.stderr


def test_evaluate_json_reports_bleu_chrf_and_speed(trained_dir, corpus_dir, tmp_path, monkeypatch, capsys):
    import warnings

    import sacrebleu

    from janus_fast import cli

    sources, references = os.path.join(corpus_dir, "val.de"), os.path.join(corpus_dir, "val.en")
    arguments = ["--src", sources, "--ref", references, "--mode", "nar", "--iterations", "2", "--json"]
    output = tmp_path / "hypotheses.en"
    result = run_cli("evaluate", "--model", trained_dir, *arguments, "--output", str(output))
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["sentences"] == 40 and "nrefs:1" in report["bleu_signature"]
    assert report["sentences_per_second"] > 0
    # the scores are sacreBLEU's of the translations it wrote, computed here on their own
    hypotheses = output.read_text(encoding="utf-8").splitlines()
    reference_lines = Path(references).read_text(encoding="utf-8").splitlines()
    assert len(hypotheses) == len(reference_lines) == 40
    assert report["bleu"] == round(sacrebleu.corpus_bleu(hypotheses, [reference_lines]).score, 2)
    assert report["chrf"] == round(sacrebleu.corpus_chrf(hypotheses, [reference_lines]).score, 2) > 0.0
    # and of a known translation, the references themselves: 100 (the tiny model's own outputs are
    # one word each, without 4-grams, so their BLEU is 0 against any reference)

    class Perfect:
        def resolve_options(self, options, **changes):  # noqa: ANN001, ANN003, ANN202
            return options.replace(**changes)

        def translate(self, lines: list[str], *options, **changes) -> list[str]:  # noqa: ANN002, ANN003
            assert lines == Path(sources).read_text(encoding="utf-8").splitlines()
            return reference_lines

    monkeypatch.setattr(cli, "_translator", lambda args: Perfect())
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # cli.main replaces it
    assert cli.main(["evaluate", *arguments]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bleu"] == 100.0 and report["chrf"] == 100.0 and report["sentences"] == 40


def test_translator_api(trained_dir):
    from janus_fast import Translator

    translator = Translator.from_pretrained(trained_dir)
    outputs = translator.translate(["Ein Mann.", "", "Zwei Frauen."], mode="nar", iterations=2)
    assert len(outputs) == 3 and outputs[1] == ""
    greedy = translator.translate(["Ein Mann."], mode="ar", beam=1)
    assert isinstance(greedy[0], str)
    with pytest.raises(TypeError):
        translator.translate("not a list")


def test_batch_size_and_max_batch_tokens_do_not_change_outputs(trained_dir, corpus_dir):
    from janus_fast import Translator
    from janus_fast.translator import length_sorted_batches

    sources = open(os.path.join(corpus_dir, "val.de"), encoding="utf-8").read().splitlines()[:12] + [""]
    translator = Translator.from_pretrained(trained_dir)
    done = []
    expected = translator.translate(sources, mode="nar", iterations=2, progress=done.append)
    assert sum(done) == len(sources)  # the progress callback sees every line, blank ones too
    for options in ({"batch_size": 1}, {"batch_size": 5}, {"max_batch_tokens": 30}):
        assert translator.translate(sources, mode="nar", iterations=2, **options) == expected, options
    batches = length_sorted_batches([[5] * n for n in (3, 1, 4, 1, 5, 9, 2, 6)], 1000, batch_size=3)
    assert [len(batch) for batch in batches] == [3, 3, 2]
    assert sorted(i for batch in batches for i in batch) == list(range(8))
    for bad in ({"batch_size": 0}, {"max_batch_tokens": -1}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be >= 1"):
            translator.translate(sources, **bad)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        translator.translate(sources, batch_size=2.5)
    result = run_cli("translate", "--model", trained_dir, "--batch-size", "0", stdin=b"Ein Mann.\n")
    assert result.returncode != 0 and b"--batch-size: must be >= 1" in result.stderr


def test_keep_repeats_option_reaches_the_decoder(trained_dir, corpus_dir, tmp_path, monkeypatch, capsys):
    """--keep-repeats arrives as ``decode_batch``'s collapse_repeats=False (the call that decodes) and
    changes the output: the tiny model's NAR outputs repeat tokens, which are kept, and collapsing
    each run gives the default output."""
    import warnings

    from janus_fast import cli, translator
    from janus_fast.checkpoint import load_tokenizer
    from janus_fast.decoding.hypotheses import collapse_repeats

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # cli.main replaces it
    seen: list[bool | None] = []
    decode_batch = translator.decode_batch

    def spy(model, src, lengths, options, *args):  # noqa: ANN001, ANN002, ANN202
        seen.append(options.collapse_repeats)
        return decode_batch(model, src, lengths, options, *args)

    monkeypatch.setattr(translator, "decode_batch", spy)
    tokenizer = load_tokenizer(trained_dir)
    sources = Path(corpus_dir, "val.de").read_text(encoding="utf-8").splitlines()[:6]
    (tmp_path / "source.ids").write_text("".join(" ".join(map(str, tokenizer.encode(s))) + "\n" for s in sources))

    def translate(*options: str) -> list[list[int]]:
        seen.clear()
        output = tmp_path / "output.ids"
        arguments = ["--model", trained_dir, "--mode", "nar", "--iterations", "2", "--token-ids", "-o", str(output)]
        assert cli.main(["translate", *arguments, "--input", str(tmp_path / "source.ids"), *options]) == 0
        return [[int(i) for i in line.split()] for line in output.read_text().splitlines()]

    collapsed = translate()
    assert seen and all(value is True for value in seen)
    kept = translate("--keep-repeats")
    assert seen and all(value is False for value in seen)
    assert len(kept) == len(collapsed) == len(sources)
    assert [collapse_repeats(ids) for ids in kept] == collapsed
    assert kept != collapsed  # repeats were there to keep
    seen.clear()
    source, reference = os.path.join(corpus_dir, "val.de"), os.path.join(corpus_dir, "val.en")
    arguments = ["--model", trained_dir, "--src", source, "--ref", reference, "--mode", "nar", "--iterations", "2"]
    assert cli.main(["evaluate", *arguments, "--json", "--keep-repeats"]) == 0
    assert seen and all(value is False for value in seen)
    capsys.readouterr()


def train_options() -> dict:
    """The ``janus-fast train`` parser's options: {first flag: argparse action}, without --help."""
    import argparse

    from janus_fast.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train_parser = commands.choices["train"]
    assert "--objective {janus,ar,cmlm}" in train_parser.format_help()  # the help renders
    return {a.option_strings[0]: a for a in train_parser._actions if a.option_strings[0] != "-h"}


def test_train_help_describes_every_option():
    """Every ``train`` option (dataclass fields, nested ones included) has a help text of its own,
    not just its default, and the options with a fixed set of values show it."""
    import re

    options = train_options()
    assert len(options) >= 50
    for flag, action in options.items():
        text = re.sub(r"\s*\((default: [^()]*|required)\)$", "", action.help or "")
        assert len(text.split()) >= 3, f"{flag}: {action.help!r}"
    assert options["--data-dir"].required and options["--data-dir"].help.endswith("(required)")
    assert "default: " not in options["--data-dir"].help
    for flag, values in (
        ("--objective", "{janus,ar,cmlm}"),
        ("--masking", "{span,uniform}"),
        ("--precision", "{auto,bf16,fp32}"),
        ("--tokenizer-type", "{unigram,bpe,char,word}"),
        ("--valid-mode", "{ar,nar}"),
    ):
        assert options[flag].metavar == values, flag


@pytest.mark.parametrize("option", ["--objective", "--masking", "--precision", "--tokenizer-type", "--valid-mode"])
def test_train_choices_are_the_accepted_values(option, tmp_path, monkeypatch, capsys):
    """Every value ``train --help`` lists for ``option`` is accepted, and another is refused before
    any work, naming the option and its values."""
    import warnings

    from janus_fast import cli
    from janus_fast.training.train import TrainConfig

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # cli.main replaces it
    listed = tuple(train_options()[option].metavar.strip("{}").split(","))
    arguments = ["train", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "run")]
    for value in listed:
        config = cli._build_dataclass(TrainConfig, cli.build_parser().parse_args([*arguments, option, value]))
        assert getattr(config, option[2:].replace("-", "_")) == value
    assert cli.main([*arguments, option, "bad"]) == 2
    error = capsys.readouterr().err
    assert f"{option} must be one of " in error and "got 'bad'" in error
    assert all(repr(value) in error for value in listed), error
    assert not (tmp_path / "run").exists()


def test_ar_rescore_option_reaches_the_translator(trained_dir):
    from janus_fast.cli import _decode_options, build_parser

    parser = build_parser()
    assert _decode_options(parser.parse_args(["translate"])).ar_rescore is False
    assert _decode_options(parser.parse_args(["translate", "--ar-rescore"])).ar_rescore is True
    args = ("--mode", "nar", "--ar-rescore", "--iterations", "2")
    result = run_cli("translate", "--model", trained_dir, *args, stdin=b"Ein Mann.\n")
    assert result.returncode == 0 and len(result.stdout.decode().splitlines()) == 1
    result = run_cli("translate", "--model", trained_dir, "--ar-rescore", stdin=b"Ein Mann.\n")  # default: AR
    assert result.returncode != 0 and b"--ar-rescore applies to --mode nar" in result.stderr


@pytest.mark.parametrize(("text", "value"), [("-1e-3", -0.001), ("-2E2", -200.0), ("-0.5", -0.5), ("-.5", -0.5)])
def test_negative_numbers_in_scientific_notation_are_values(text, value):
    from janus_fast.cli import build_parser

    args = build_parser().parse_args(["translate", "--length-bonus", text])
    assert args.length_bonus == value


@pytest.mark.parametrize("text", ["-inf", "-Infinity"])
def test_negative_infinity_is_a_value_not_the_short_option_i(text):
    """translate has ``-i``: argparse alone reads ``-inf`` as ``-i nf`` (input file "nf")."""
    from janus_fast.cli import build_parser

    args = build_parser().parse_args(["translate", "--length-bonus", text])
    assert args.length_bonus == float("-inf") and args.input == "-"


@pytest.mark.parametrize("command", ["export", "bench"])
def test_an_option_is_taken_by_its_whole_name_only(command):
    """argparse's abbreviations would read ``--mode ar`` as ``--model ar`` where a command has
    ``--model`` and no ``--mode`` (a folder ./ar then exported or benchmarked in its place)."""
    from janus_fast.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--model", "m", "--mode", "ar"])


def test_distill_help_states_its_own_beam_default():
    from janus_fast.cli import DISTILL_BEAM, build_parser

    distill = build_parser()._subparsers._group_actions[0].choices["distill"]
    (beam,) = [action for action in distill._actions if action.dest == "beam"]
    assert f"default {DISTILL_BEAM}" in beam.help and "default 1" not in beam.help
    assert f"default {DISTILL_BEAM}" in " ".join(distill.format_help().split())


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    """``kill`` (SIGTERM) of an ``evaluate`` without --output: its scratch folder of translated
    chunks is removed, as on Ctrl-C, and the exit status says the signal (128 + 15)."""
    import gzip
    import signal
    import time

    mini = os.path.join(REPO_ROOT, "python_tests", "data", "multi30k-mini")
    with gzip.open(os.path.join(mini, "train.de.gz"), "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    (tmp_path / "src.de").write_text("\n".join(lines * 5) + "\n", encoding="utf-8")  # 2,000 lines
    (tmp_path / "ref.en").write_text("\n".join(lines * 5) + "\n", encoding="utf-8")
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    command = [sys.executable, "-m", "janus_fast.cli", "evaluate", "--src", str(tmp_path / "src.de")]
    command += ["--ref", str(tmp_path / "ref.en"), "--chunk-size", "50", "--beam", "4"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, "TMPDIR": str(scratch_root)})
    try:
        deadline = time.monotonic() + 300
        while not any(scratch_root.glob("janus-fast-evaluate-*/hypotheses.txt.parts/chunk*")):
            assert process.poll() is None and time.monotonic() < deadline, "no chunk written before the end"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        process.kill()
    assert list(scratch_root.glob("janus-fast-evaluate-*")) == []  # (torch may leave a cache folder of its own)


@pytest.mark.parametrize("command", ["evaluate", "distill"])
def test_a_directory_as_src_is_named_as_one(tmp_path, command):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rest = ["--ref", str(folder)] if command == "evaluate" else ["--output", str(tmp_path / "out.txt")]
    result = run_cli(command, "--src", str(folder), *rest)
    assert result.returncode == 2 and f"--src {folder}: is a directory".encode() in result.stderr, result.stderr


def test_evaluate_refuses_the_source_as_reference_and_says_of_blank_references(
    corpus_dir, tmp_path, monkeypatch, capsys
):
    """A --ref that is the --src file, or all blank, is refused before any translating; some blank
    references are scored (as sacreBLEU scores them) with a warning counting them; a byte order
    mark is not part of the first reference; an invalid-UTF-8 reference is warned about once."""
    import warnings

    from janus_fast import cli

    sources = os.path.join(corpus_dir, "val.de")
    references = Path(corpus_dir, "val.en").read_text(encoding="utf-8").splitlines()

    class Perfect:  # translates every source into its reference
        def resolve_options(self, options, **changes):  # noqa: ANN001, ANN003, ANN202
            return options.replace(**changes)

        def translate(self, lines: list[str], *options, **changes) -> list[str]:  # noqa: ANN002, ANN003
            return references[: len(lines)]

    monkeypatch.setattr(cli, "_translator", lambda args: Perfect())
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # cli.main replaces it

    def evaluate(reference: str) -> tuple[int, str, str]:  # exit code, output, errors and warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = cli.main(["evaluate", "--src", sources, "--ref", reference, "--json"])
        captured = capsys.readouterr()
        return code, captured.out, captured.err + "".join(f"{w.message}\n" for w in caught)

    code, _, err = evaluate(sources)
    assert code == 2 and "is the --src file" in err
    blank = tmp_path / "blank.en"
    blank.write_text("\n" * len(references), encoding="utf-8")
    code, _, err = evaluate(str(blank))
    assert code == 2 and "every line is blank" in err
    some_blank = tmp_path / "some_blank.en"
    some_blank.write_text("".join(("" if i in (2, 6) else line) + "\n" for i, line in enumerate(references)))
    code, out, err = evaluate(str(some_blank))
    assert code == 0 and "2 of 40 lines are blank (the first: line 3)" in err and json.loads(out)["bleu"] < 100
    bom = tmp_path / "bom.en"
    bom.write_bytes(b"\xef\xbb\xbf" + "".join(line + "\n" for line in references).encode("utf-8"))
    code, out, err = evaluate(str(bom))
    assert code == 0 and json.loads(out)["bleu"] == 100.0
    invalid = tmp_path / "invalid.en"
    invalid.write_bytes(b"\xff\xfe " + "".join(line + "\n" for line in references).encode("utf-8"))
    code, out, err = evaluate(str(invalid))
    assert code == 0 and err.count("invalid UTF-8") == 1


def test_evaluate_scores_in_chunks_as_sacrebleu_scores_the_whole_corpus(tmp_path, monkeypatch):
    """evaluate held every translation and reference for sacreBLEU (5-8 KB a line: 996 MB at 80,000
    lines); it now adds up BLEU's and chrF's sentence statistics chunk by chunk. The scores must be
    sacreBLEU's own on whole lists, here with chunks of 7 lines and a last partial one."""
    import gzip
    import random

    import sacrebleu

    from janus_fast import cli

    mini = os.path.join(REPO_ROOT, "python_tests", "data", "multi30k-mini")
    with gzip.open(os.path.join(mini, "val.en.gz"), "rt", encoding="utf-8") as handle:
        references = handle.read().splitlines()[:40]
    shuffled = random.Random(0)
    hypotheses = [" ".join(shuffled.sample(line.split(), len(line.split()))) for line in references]
    hypotheses[3] = ""  # an empty translation
    (tmp_path / "hyp.txt").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("\n".join(references) + "\n", encoding="utf-8")
    monkeypatch.setattr(cli, "SCORED_LINES_PER_CHUNK", 7)
    metrics = [sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()]
    streamed = cli.streamed_corpus_scores(metrics, str(tmp_path / "hyp.txt"), str(tmp_path / "ref.txt"))
    whole = [
        metric.corpus_score(hypotheses, [references]) for metric in (sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF())
    ]
    assert [score.score for score in streamed] == [score.score for score in whole]
    assert 0 < streamed[0].score < 100 and str(streamed[0]) == str(whole[0])
