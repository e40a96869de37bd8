"""The janus-fast command line on a tiny trained model: line counts, bad input, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "janus_fast.cli", *args], input=stdin, capture_output=True, cwd=REPO_ROOT, timeout=300
    )


@pytest.mark.parametrize("mode", ["nar", "ar"])
def test_translate_preserves_line_count_and_empty_lines(trained_dir, mode):
    text = "Ein Mann fährt Fahrrad.\n\nZwei Hunde spielen im Schnee.\n   \nEine Frau.\n"
    result = run_cli("translate", "--model", trained_dir, "--mode", mode, "--iterations", "2", stdin=text.encode())
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
                "translate", "--model", trained_dir, "--mode", mode, "--iterations", "3", "--decoder", d, stdin=text
            )
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
    result = run_cli("translate", "--model", trained_dir, "--iterations", "1", stdin=long_line)
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


def test_evaluate_json_reports_bleu_chrf_and_speed(trained_dir, corpus_dir):
    result = run_cli(
        "evaluate",
        "--model",
        trained_dir,
        "--src",
        os.path.join(corpus_dir, "val.de"),
        "--ref",
        os.path.join(corpus_dir, "val.en"),
        "--mode",
        "nar",
        "--iterations",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["sentences"] == 40
    assert 0.0 <= report["bleu"] <= 100.0 and "nrefs:1" in report["bleu_signature"]
    assert report["chrf"] > 0.0 and report["sentences_per_second"] > 0


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


def test_keep_repeats_option_reaches_the_decoder():
    from janus_fast.cli import _decode_kwargs, build_parser

    parser = build_parser()
    assert _decode_kwargs(parser.parse_args(["translate"]))["collapse_repeats"] is None  # the default: collapse
    assert _decode_kwargs(parser.parse_args(["translate", "--keep-repeats"]))["collapse_repeats"] is False
    assert (
        _decode_kwargs(parser.parse_args(["evaluate", "--src", "a", "--ref", "b", "--keep-repeats"]))[
            "collapse_repeats"
        ]
        is False
    )


def test_ar_rescore_option_reaches_the_translator(trained_dir):
    from janus_fast.cli import _decode_kwargs, build_parser

    parser = build_parser()
    assert _decode_kwargs(parser.parse_args(["translate"]))["ar_rescore"] is False
    assert _decode_kwargs(parser.parse_args(["translate", "--ar-rescore"]))["ar_rescore"] is True
    result = run_cli("translate", "--model", trained_dir, "--ar-rescore", "--iterations", "2", stdin=b"Ein Mann.\n")
    assert result.returncode == 0 and len(result.stdout.decode().splitlines()) == 1
    result = run_cli("translate", "--model", trained_dir, "--mode", "ar", "--ar-rescore", stdin=b"Ein Mann.\n")
    assert result.returncode != 0 and b"ar_rescore applies" in result.stderr
