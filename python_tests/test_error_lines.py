"""Every user-facing failure of the CLI is one ``janus-fast: error: ...`` line naming the option, file,
environment variable or (1-based) input line at fault: no traceback, exit code 2 (issue 34 item 7)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from test_cli import run_cli

TRAIN_OPTIONS = (
    "--vocab-size", "60", "--d-model", "16", "--num-heads", "2", "--ffn-dim", "32", "--encoder-layers", "1",
    "--decoder-layers", "1", "--max-tokens", "400", "--max-updates", "2", "--epochs", "1", "--threads", "1",
    "--no-valid-bleu", "--no-progress", "--precision", "fp32",
)  # fmt: skip


def error_line(result: subprocess.CompletedProcess, *names: str) -> str:
    """The one line of ``result``'s stderr that is an error (checked: exactly one, no traceback, each
    of ``names`` in it)."""
    stderr = result.stderr.decode(errors="replace")
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("janus-fast: error:")]
    assert len(errors) == 1, stderr
    assert not [line for line in stderr.splitlines() if line.strip() and not line.startswith("janus-fast: ")], stderr
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def run_shell(command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``command`` run by the shell (for redirections such as ``>&-``); ``$JANUS`` is the CLI."""
    environment = dict(os.environ, JANUS=f"{sys.executable} -m janus_fast.cli", **(env or {}))
    return subprocess.run(["bash", "-c", command], capture_output=True, cwd=REPO_ROOT, env=environment, timeout=300)


@pytest.fixture
def source_file(tmp_path) -> str:
    path = tmp_path / "in.de"
    path.write_text("Ein Hund.\nZwei Männer.\n", encoding="utf-8")
    return str(path)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("where", ["stdout_closed", "stdout_full", "output_full", "evaluate_output_full"])
def test_output_failures_are_one_line(trained_dir, corpus_dir, source_file, where):
    translate = f"$JANUS translate --model {trained_dir} --input {source_file}"
    if where == "stdout_closed":
        result = run_shell(f"{translate} >&-")
        names = ["cannot write the translations to standard output:"]
    elif where == "stdout_full":
        result = run_shell(f"{translate} > /dev/full")
        names = ["cannot write the translations to standard output:", "No space left"]
    elif where == "output_full":
        result = run_cli("translate", "--model", trained_dir, "--input", source_file, "-o", "/dev/full")
        names = ["--output /dev/full", "No space left"]
    else:
        src, ref = os.path.join(corpus_dir, "val.de"), os.path.join(corpus_dir, "val.en")
        result = run_cli("evaluate", "--model", trained_dir, "--src", src, "--ref", ref, "--output", "/dev/full")
        names = ["--output /dev/full", "No space left"]
    assert result.returncode == 2
    error_line(result, *names)


def test_standard_output_reaching_a_file_size_limit_part_way_is_an_error(trained_dir, tmp_path):
    """A short write (file size limit or disk full part-way through a chunk) is not success: the
    command exits 2 naming the cause, rather than 0 with the translations cut."""
    source = tmp_path / "many.de"
    source.write_text("Ein Hund rennt.\n" * 600, encoding="utf-8")  # one chunk, well over 2 KiB translated
    out = tmp_path / "out.en"
    result = run_shell(f"ulimit -f 2; $JANUS translate --model {trained_dir} --input {source} > {out}")
    assert result.returncode == 2
    error_line(result, "cannot write the translations to standard output:", "File too large")
    assert out.stat().st_size <= 2048


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_report_line_into_a_full_standard_output_is_one_line(trained_dir, tmp_path):
    result = run_shell(f"$JANUS export --model {trained_dir} --output {tmp_path / 'copy'} > /dev/full")
    assert result.returncode == 2
    error_line(result, "standard output:", "No space left")


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_empty_output_name_is_one_line(trained_dir, corpus_dir, source_file, command):
    if command == "translate":
        result = run_cli("translate", "--model", trained_dir, "--input", source_file, "-o", "")
    else:
        src, ref = os.path.join(corpus_dir, "val.de"), os.path.join(corpus_dir, "val.en")
        result = run_cli("evaluate", "--model", trained_dir, "--src", src, "--ref", ref, "--output", "")
    assert result.returncode == 2
    error_line(result, "--output")


def test_long_input_is_named_by_its_input_line(trained_dir, tmp_path):
    path = tmp_path / "long.de"
    path.write_text("Ein Hund.\n\n" + "Hund " * 400 + "\n", encoding="utf-8")
    result = run_cli("translate", "--model", trained_dir, "--input", str(path), "--on-long-input", "error")
    assert result.returncode == 2
    line = error_line(result, "input line 3")
    assert "sentence 2 " not in line


def test_a_job_failing_before_its_first_chunk_leaves_nothing_that_blocks_the_rerun(trained_dir, tmp_path):
    """A translation to a file that fails on its input before any chunk is done keeps the old output
    and leaves no parts folder (it held only the job's manifest, and refused the corrected rerun
    as 'a run with other options')."""
    path = tmp_path / "long.de"
    path.write_text("Ein Hund.\n" + "Hund " * 400 + "\n", encoding="utf-8")
    out = tmp_path / "keep.en"
    out.write_text("earlier work\n", encoding="utf-8")
    command = ("translate", "--model", trained_dir, "--input", str(path), "-o", str(out), "--no-progress")
    result = run_cli(*command, "--on-long-input", "error")
    assert result.returncode == 2
    error_line(result, "input line 2")
    assert out.read_text(encoding="utf-8") == "earlier work\n"
    assert not os.path.exists(f"{out}.parts")
    rerun = run_cli(*command)  # the fix: long lines truncated (the default)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


def test_closed_standard_input_and_error_are_handled(trained_dir, source_file, tmp_path):
    """``<&-``: one error line saying so (not a traceback); ``2>&-``: the translation still runs (the
    progress bar's default asked the closed stream whether it is a terminal, and every command ended
    with exit code 1 and no word)."""
    result = run_shell(f"$JANUS translate --model {trained_dir} <&-")
    assert result.returncode == 2
    error_line(result, "standard input is closed")
    out = tmp_path / "out.en"
    result = run_shell(f"$JANUS translate --model {trained_dir} --input {source_file} > {out} 2>&-")
    assert result.returncode == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [("JANUS_FAST_ISA", "avx3", "avx512_bf16"), ("JANUS_FAST_FORCE_REFERENCE", "maybe", "maybe")],
)
def test_environment_variables_are_validated_like_options(trained_dir, source_file, variable, value, named):
    result = run_shell(f"$JANUS translate --model {trained_dir} --input {source_file}", env={variable: value})
    assert result.returncode == 2
    error_line(result, variable, named)


def test_bf16_with_the_reference_decoder_says_what_to_use(trained_dir, source_file):
    result = run_cli(
        "translate", "--model", trained_dir, "--input", source_file, "--decoder", "reference", "--precision", "bf16"
    )
    assert result.returncode == 2
    line = error_line(result, "--decoder engine")
    assert "None" not in line


def test_bench_plot_into_a_missing_folder_fails_before_the_run(trained_dir, tmp_path):
    plot = str(tmp_path / "missing" / "bench.png")
    result = run_cli("bench", "--model", trained_dir, "--data-dir", str(tmp_path), "--plot", plot)
    assert result.returncode == 2
    error_line(result, "--plot", plot)


@pytest.mark.parametrize("split", ["valid_empty", "train_blank"])
def test_empty_splits_are_refused_before_training(corpus_dir, tmp_path, split):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.de", "train.en", "val.de", "val.en"):
        shutil.copy(os.path.join(corpus_dir, name), data / name)
    if split == "valid_empty":
        for name in ("val.de", "val.en"):
            (data / name).write_text("", encoding="utf-8")
        named = str(data / "val.de")
    else:
        for name in ("train.de", "train.en"):
            (data / name).write_text("\n \n\n", encoding="utf-8")
        named = str(data / "train.de")
    out = str(tmp_path / "out")
    result = run_cli("train", "--data-dir", str(data), "--output-dir", out, *TRAIN_OPTIONS)
    assert result.returncode == 2
    error_line(result, named)


@pytest.mark.parametrize(
    "flags,names,api_spelling",
    [
        (
            ["--mode", "spec", "--relaxed-margin", "0.5"],
            ["--relaxed-margin 0.5", "give --relaxed-top-k > 0"],
            "relaxed_",
        ),
        (["--mode", "spec", "--draft-iterations", "0"], ["--draft-iterations must be in [1, 128]"], "draft_"),
        (["--mode", "ar", "--iterations", "4"], ["--iterations 4 does not apply to --mode ar", "--mode nar"], "mode="),
        (["--mode", "ar", "--collapse-repeats"], ["--collapse-repeats applies to --mode nar with --compat janus"], "="),
        (["--mode", "spec", "--relaxed-top-k", "3", "--decoder", "reference"], ["needs --decoder engine"], "="),
        (["--relaxed-top-k", "2"], ["--relaxed-top-k 2 applies to --mode spec only, not to --mode ar"], "speculative"),
        (["--mode", "ar", "--relaxed-margin", "0.5"], ["relaxed verification of --mode spec only"], "relaxed_"),
    ],
)
def test_decoding_option_errors_name_the_flags_typed(flags, names, api_spelling):
    """The decoding options' errors name the command-line flags, not the API's fields (issue 34:
    ``relaxed_top_k``, ``mode='nar'`` in a CLI error)."""
    result = run_cli("translate", *flags, stdin=b"Ein Hund.\n")
    assert result.returncode == 2
    assert api_spelling not in error_line(result, *names).split("error:", 1)[1]
