"""Corpus jobs (``janus_fast.corpus``): translate, evaluate and distill of a file in chunks, streamed,
resumable, and shared among the processes of a ``torchrun`` launch (gloo on the CPU)."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import REPO_ROOT, run_cli

from janus_fast.corpus import (
    BLOCK_LINES,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MAX_CHUNKS,
    PARTS_SUFFIX,
    TOKEN_IDS,
    assign_chunks,
    check_parts,
    default_chunk_size,
    scan_source,
    translate_file,
    translate_stream,
)
from janus_fast.data import InputError, iter_lines, read_lines

SENTENCES = [
    "Ein Mann fährt Fahrrad.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau liest ein Buch in einem Café.",
    "Kinder spielen Fußball auf einer Wiese.",
    "Ein älterer Mann sitzt auf einer Bank und füttert Tauben.",
    "Eine Gruppe von Menschen steht vor einem großen Gebäude.",
    "Ein Hund.",
]


class Upper:
    """A stand-in translator: upper-cases each line; counts the lines it was given."""

    def __init__(self) -> None:
        self.translated = 0

    def translate(self, lines: list[str], progress=None, **options) -> list[str]:  # noqa: ANN001, ANN003
        self.translated += len(lines)
        if progress is not None:
            progress(len(lines))
        return [line.upper() for line in lines]


def write_lines(path: str, lines: list[str], ending: str = "\n", final: bool = True) -> str:
    text = ending.join(lines) + (ending if final and lines else "")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(text.encode("utf-8"))
    return path


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return subprocess.run([*command, "-m", "janus_fast.cli", *args], capture_output=True, cwd=REPO_ROOT, timeout=900)


def corpus(corpus_dir: str, tmp_path, lines: int = 40) -> str:  # noqa: ANN001
    """The first ``lines`` German validation sentences, with a blank line and a CRLF line among
    them and no final newline."""
    sources = read_lines(os.path.join(corpus_dir, "val.de"))[:lines]
    sources[3] = ""
    return write_lines(str(tmp_path / "src.de"), sources, final=False)


# --- the pieces --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=60), st.integers(1, 8))
def test_assign_chunks_gives_each_chunk_one_rank_balanced_by_cost(costs, world_size):
    owners = assign_chunks(costs, world_size)
    assert len(owners) == len(costs) and all(0 <= rank < world_size for rank in owners)
    loads = [sum(c for c, r in zip(costs, owners) if r == rank) for rank in range(world_size)]
    # the greedy rule: no rank carries more than the fair share plus one chunk
    assert max(loads) <= sum(costs) / world_size + max(costs, default=0)
    assert owners == assign_chunks(list(costs), world_size)  # the same on every rank


def test_default_chunk_size_is_a_sixteenth_within_bounds():
    assert default_chunk_size(0) == 50 and default_chunk_size(1014) == 70
    assert default_chunk_size(29_000) == 1820 and default_chunk_size(40_000_000) == 2000
    assert all(default_chunk_size(n) % BLOCK_LINES == 0 for n in range(0, 50_000, 997))
    huge = 10 * 2000 * MAX_CHUNKS  # past MAX_CHUNKS chunks of 2000 lines: the chunks grow instead
    assert default_chunk_size(huge) * MAX_CHUNKS >= huge


def test_the_bookkeeping_of_a_job_stays_bounded_whatever_its_line_count(tmp_path, monkeypatch):
    """The scan keeps at most MAX_SCAN_BLOCKS block sizes (merging neighbours as the file goes on),
    its chunk costs still add up to the file's bytes, and a chunk size that would make more than
    MAX_CHUNKS chunks is refused naming --chunk-size."""
    import janus_fast.corpus as corpus

    monkeypatch.setattr(corpus, "MAX_SCAN_BLOCKS", 8)
    path = tmp_path / "many.de"
    lines = [f"Zeile {i}" + "x" * (i % 7) for i in range(1000)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    scan = corpus.scan_source(str(path), 10)
    assert len(scan.block_bytes) <= 8 and scan.block_lines >= 1000 / 8 and scan.lines == 1000
    total = sum(len(line) + 1 for line in lines)
    for chunk_size in (1, 7, 50, 333, 5000):
        costs = scan.chunk_costs(chunk_size)
        assert len(costs) == -(-1000 // chunk_size) and abs(sum(costs) - total) <= len(costs)
    exact = corpus.scan_source(str(path), 10)  # coarse blocks but chunk sizes that are multiples: exact
    assert exact.chunk_costs(exact.block_lines) == list(exact.block_bytes)
    monkeypatch.setattr(corpus, "MAX_CHUNKS", 100)
    with pytest.raises(InputError, match="--chunk-size 5: .* more than 100 chunks; choose --chunk-size >= 10"):
        corpus.check_chunk_count(1000, 5)
    corpus.check_chunk_count(1000, 10)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("ending, final", [("\n", True), ("\r\n", True), ("\n", False), ("\r\n", False)])
def test_streamed_lines_are_those_read_whole(tmp_path, suffix, ending, final):
    lines = ["eins", "", "zwei \r", "drei\u00e9", "", "  "]
    path = write_lines(str(tmp_path / f"in.txt{suffix}"), lines, ending, final)
    streamed = list(iter_lines(path))
    assert streamed == read_lines(path)
    assert streamed == [line.rstrip("\r") for line in lines]
    scan = scan_source(path, block_lines=4)
    assert scan.lines == len(lines) and scan.chunk_costs(4) == [
        sum(len(line.rstrip("\r").encode()) + 1 for line in lines[:4]),
        sum(len(line.encode()) + 1 for line in lines[4:]),
    ]


def test_scan_of_invalid_utf8_warns_once_and_counts_every_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"gut\n\xff\xfe\nok\n\xc3\n")
    with pytest.warns(UserWarning, match="invalid UTF-8") as caught:
        scan = scan_source(str(path))
    assert scan.lines == 4 and len(caught) == 1


def test_truncated_gzip_is_an_input_error(tmp_path):
    path = write_lines(str(tmp_path / "in.gz"), [f"line {i}" for i in range(2000)])
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    from janus_fast.data import InputError

    with pytest.raises(InputError, match="in.gz"):
        scan_source(path)


# --- one process -------------------------------------------------------------------------------


@pytest.mark.parametrize("lines", [0, 1, 7, 95])
@pytest.mark.parametrize("output_name", ["out.txt", "out.txt.gz"])
def test_translate_file_writes_one_line_per_input_in_order(tmp_path, lines, output_name):
    sources = [f"satz {i}" if i % 5 != 3 else "" for i in range(lines)]
    source = write_lines(str(tmp_path / "src.txt"), sources, "\r\n", final=False)
    output = str(tmp_path / output_name)
    translator = Upper()
    assert translate_file(translator, source, output, chunk_size=10) == lines
    assert read_lines(output) == [s.upper() for s in sources] and translator.translated == lines
    assert not os.path.exists(output + PARTS_SUFFIX)


def test_translate_file_resumes_only_the_missing_chunks(tmp_path):
    sources = [f"satz {i}" for i in range(95)]
    source = write_lines(str(tmp_path / "src.txt"), sources)
    output = str(tmp_path / "out.txt")

    class Killed(Upper):
        def translate(self, lines, progress=None, **options):  # noqa: ANN001, ANN003, ANN201
            if self.translated >= 30:
                raise KeyboardInterrupt
            return super().translate(lines, progress, **options)

    with pytest.raises(KeyboardInterrupt):
        translate_file(Killed(), source, output, chunk_size=10)
    parts = output + PARTS_SUFFIX
    assert sorted(os.listdir(parts)) == ["chunk-000000.txt", "chunk-000001.txt", "chunk-000002.txt", MANIFEST_NAME]
    assert not os.path.exists(output)
    resumed = Upper()
    done, reused = [], []
    translate_file(resumed, source, output, chunk_size=10, progress=done.append, reused=reused.append)
    assert read_lines(output) == [s.upper() for s in sources]
    assert resumed.translated == 65 and sum(done) == 95  # the progress counts the kept chunks too
    assert reused == [30]  # said to the caller, whose speed counts this run's 65 only
    # a changed option is refused, naming it, and loses nothing
    with pytest.raises(KeyboardInterrupt):
        translate_file(Killed(), source, output, chunk_size=10)
    from janus_fast.data import InputError

    with pytest.raises(InputError, match=r"--beam unset -> 5"):
        translate_file(Upper(), source, output, chunk_size=10, beam=5)
    # what the lines hold is named by the flag that sets it (before: "--output 'token ids' -> unset")
    with pytest.raises(InputError, match=r"\(--token-ids off -> on\)"):
        translate_file(Upper(), source, output, chunk_size=10, output_kind=TOKEN_IDS)
    assert len(os.listdir(parts)) == 4
    shutil.rmtree(parts)
    with pytest.raises(KeyboardInterrupt):
        translate_file(Killed(), source, output, chunk_size=10, output_kind=TOKEN_IDS)
    with pytest.raises(InputError, match=r"\(--token-ids on -> off\)"):
        translate_file(Upper(), source, output, chunk_size=10)
    assert len(os.listdir(parts)) == 4


def test_a_refused_resume_names_switches_as_they_are_typed():
    """collapse_repeats=True (the default) is --keep-repeats off: the message names the flag's state
    (before: "--keep-repeats True", the opposite of what the run did)."""
    from janus_fast.corpus import manifest_changes

    shared = {"format": MANIFEST_FORMAT, "source_sha256": "s", "lines": 9, "chunk_size": 10, "model": {}}
    kept = {**shared, "translator": {}, "decoding": {"collapse_repeats": False, "output": TOKEN_IDS}}
    collapsed = {**shared, "translator": {}, "decoding": {"collapse_repeats": True}}
    unset = {**shared, "translator": {}, "decoding": {}}
    assert manifest_changes(collapsed, unset) == ["--keep-repeats off -> unset"]
    assert manifest_changes(kept, collapsed) == ["--keep-repeats on -> off", "--token-ids on -> off"]
    assert manifest_changes(unset, kept) == ["--keep-repeats unset -> on", "--token-ids off -> on"]


def test_a_default_typed_out_on_the_rerun_resumes_the_job(trained_dir, tmp_path):
    """The manifest records the options as they decode (resolved), so an option left unset in the
    interrupted run and typed with its default value in the rerun is the same job, not a change."""
    from janus_fast.decoding.options import DecodeOptions
    from janus_fast.translator import Translator

    translator = Translator.from_pretrained(trained_dir)

    source = write_lines(str(tmp_path / "src.txt"), ["Ein Hund.", "Zwei Katzen.", "Ein Mann.", "Eine Frau."])
    output = str(tmp_path / "out.txt")

    def first_chunk_only(lines, first_line, progress):  # noqa: ANN001, ANN202
        if first_line > 1:
            raise KeyboardInterrupt
        return translator.translate(lines, DecodeOptions(mode="ar"))

    with pytest.raises(KeyboardInterrupt):
        translate_file(translator, source, output, chunk_size=2, options=DecodeOptions(mode="ar"),
                       translate_chunk=first_chunk_only)  # fmt: skip
    default_b = translator.resolve_options(DecodeOptions(mode="ar")).max_len_b
    reused = []
    translate_file(translator, source, output, chunk_size=2, options=DecodeOptions(mode="ar", max_len_b=default_b),
                   reused=reused.append)  # fmt: skip
    assert reused == [2] and read_lines(output) == translator.translate(read_lines(source), mode="ar")
    with pytest.raises(KeyboardInterrupt):
        translate_file(translator, source, output, chunk_size=2, options=DecodeOptions(mode="ar"),
                       translate_chunk=first_chunk_only)  # fmt: skip
    with pytest.raises(InputError, match=r"max-len-b 10 -> 3"):  # another value is still refused
        translate_file(translator, source, output, chunk_size=2, options=DecodeOptions(mode="ar", max_len_b=3))


def test_evaluate_speed_counts_only_the_sentences_this_run_translated():
    from janus_fast.cli import speed_summary

    assert speed_summary(100, 10.0, 0) == "100 sentences in 10.00s: 10.0 sentences/s"
    assert speed_summary(250, 33.32, 50) == (
        "250 sentences in 33.32s: 7.5 sentences/s (50 translated by an interrupted run of this job and reused)"
    )
    assert speed_summary(0, 0.01, 300).startswith("0 sentences translated (300 translated by an interrupted run")


def test_translate_stream_hands_over_each_chunk_as_it_is_done():
    written = []
    translator = Upper()

    def chunk(lines: list[str], first_line: int, progress) -> list[str]:  # noqa: ANN001
        assert first_line == 1 + 3 * len(written)
        return translator.translate(lines)

    count = translate_stream(iter(["a", "b", "", "d", "e\nf", "g", "h"]), written.append, chunk, chunk_size=3)
    assert count == 7 and written == ["A\nB\n\n", "D\nE F\nG\n", "H\n"]


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """The job holds a chunk, not the file: the peak of Python allocations while translating 200k
    lines stays that of 20k lines (same chunk size)."""
    peaks = []
    for lines in (20_000, 200_000):
        source = write_lines(
            str(tmp_path / f"src{lines}.txt"), [f"eine zeile mit der nummer {i}" for i in range(lines)]
        )
        output = str(tmp_path / f"out{lines}.txt.gz")
        tracemalloc.start()
        assert translate_file(Upper(), source, output, chunk_size=1000) == lines
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert sum(1 for _ in iter_lines(output)) == lines
    assert peaks[1] < 1.1 * peaks[0] + 64_000, peaks


# --- the command line, one process and under torchrun -------------------------------------------


def test_translate_cli_to_a_file_matches_standard_output(corpus_dir, tmp_path):
    source = corpus(corpus_dir, tmp_path, lines=25)
    output = str(tmp_path / "out.en")
    to_file = run_cli("translate", "-i", source, "-o", output, "--chunk-size", "10")
    assert to_file.returncode == 0, to_file.stderr.decode()
    to_stdout = run_cli("translate", "-i", source, "--chunk-size", "10")
    assert to_stdout.returncode == 0, to_stdout.stderr.decode()
    with open(output, "rb") as handle:
        assert handle.read() == to_stdout.stdout
    assert to_stdout.stdout.count(b"\n") == 25


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [["--mode", "ar"], ["--mode", "ar", "--beam", "4"], ["--mode", "nar", "--iterations", "4"]],
    ids=["ar-greedy", "ar-beam4", "nar-t4"],
)
def test_two_processes_write_the_bytes_of_one(corpus_dir, tmp_path, options):
    source = corpus(corpus_dir, tmp_path)
    one, two = str(tmp_path / "one.en"), str(tmp_path / "two.en.gz")
    single = run_cli("translate", "-i", source, "-o", one, "--chunk-size", "10", *options)
    assert single.returncode == 0, single.stderr.decode()
    double = torchrun("translate", "-i", source, "-o", two, "--chunk-size", "10", "--no-progress", *options)
    assert double.returncode == 0, double.stderr.decode()
    with open(one, "rb") as first, gzip.open(two, "rb") as second:
        assert first.read() == second.read()
    assert len(read_lines(one)) == 40 and read_lines(one)[3] == ""


@pytest.mark.slow
def test_a_rank_killed_mid_run_then_resumed_gives_the_same_output(corpus_dir, tmp_path):
    source = corpus(corpus_dir, tmp_path)
    expected, output = str(tmp_path / "expected.en"), str(tmp_path / "out.en")
    options = ["--mode", "ar", "--beam", "4", "--chunk-size", "10"]
    single = run_cli("translate", "-i", source, "-o", expected, *options)
    assert single.returncode == 0, single.stderr.decode()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "janus_fast.cli", "translate", "-i", source, "-o", output, "--no-progress", *options]
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = output + PARTS_SUFFIX
    deadline = time.monotonic() + 600
    while not (os.path.isdir(parts) and any(name.startswith("chunk-") for name in os.listdir(parts))):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read().decode()
        time.sleep(0.05)
    victim = rank_process(launcher.pid, rank=1)
    os.kill(victim, signal.SIGKILL)
    launcher.communicate(timeout=600)
    assert launcher.returncode != 0 and not os.path.exists(output)
    kept = [name for name in os.listdir(parts) if name.startswith("chunk-")]
    assert 1 <= len(kept) < 4
    resumed = torchrun("translate", "-i", source, "-o", output, "--no-progress", *options)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"{len(kept)} of 4 chunks already translated" in resumed.stderr.decode()
    with open(expected, "rb") as first, open(output, "rb") as second:
        assert first.read() == second.read()


def rank_process(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker of ``rank`` (a child of the launcher with RANK=rank)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    environment = handle.read().split(b"\0")
            except OSError:
                continue
            if parent == launcher and f"RANK={rank}".encode() in environment:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} under {launcher}")


@pytest.mark.slow
def test_evaluate_and_distill_under_torchrun_match_one_process(corpus_dir, tmp_path):
    source = corpus(corpus_dir, tmp_path)
    references = write_lines(str(tmp_path / "ref.en"), read_lines(os.path.join(corpus_dir, "val.en"))[:40])
    evaluate = ["evaluate", "--src", source, "--ref", references, "--json", "--chunk-size", "10"]
    single, double = run_cli(*evaluate), torchrun(*evaluate)
    assert single.returncode == 0 and double.returncode == 0, double.stderr.decode()
    import json

    first, second = json.loads(single.stdout), json.loads(double.stdout)
    assert (first["processes"], second["processes"]) == (1, 2)
    assert (first["bleu"], first["chrf"], first["sentences"]) == (second["bleu"], second["chrf"], 40)
    one, two = str(tmp_path / "one.en.gz"), str(tmp_path / "two.en.gz")
    distill = ["distill", "--src", source, "--chunk-size", "10", "--no-progress", "--beam", "2"]
    assert run_cli(*distill, "--output", one).returncode == 0
    result = torchrun(*distill, "--output", two)
    assert result.returncode == 0, result.stderr.decode()
    assert read_lines(one) == read_lines(two) and len(read_lines(two)) == 40


@pytest.mark.slow
@pytest.mark.parametrize("lines", [0, 1])
def test_tiny_inputs_under_torchrun(tmp_path, lines):
    """A 0-line and a 1-line input with 2 processes: a rank without chunks still takes part."""
    source = write_lines(str(tmp_path / "src.de"), ["Ein Hund."][:lines], final=False)
    output = str(tmp_path / "out.en")
    result = torchrun("translate", "-i", source, "-o", output, "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert len(read_lines(output)) == lines and not os.path.exists(output + PARTS_SUFFIX)


def test_torchrun_refuses_standard_streams(tmp_path):
    source = write_lines(str(tmp_path / "src.de"), ["Ein Hund."])
    result = torchrun("translate", "-i", source, "--no-progress")
    assert result.returncode != 0
    assert b"janus-fast: error: under torchrun, translate reads --input FILE" in result.stderr


def test_each_rank_decodes_on_its_own_gpu(monkeypatch):
    """Under torchrun ``--device cuda`` is the rank's own GPU, ``cuda:LOCAL_RANK`` (one process per
    GPU); other devices, and one process, are left as given."""
    import torch.distributed as dist

    from janus_fast.distributed import DistributedContext

    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # as if torchrun's group were up
    for name, value in (("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    context = DistributedContext("gloo")
    assert (context.device("cuda"), context.device("cuda:0"), context.device("cpu")) == ("cuda:1", "cuda:0", "cpu")
    assert not context.single_machine and not context.owns_group
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert DistributedContext("gloo").device("cuda") == "cuda"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("rank", ["0", "1"])  # rank 0 hosts torch's store and waits; rank 1 connects to it
def test_a_rank_without_peers_gives_up_at_its_timeout(monkeypatch, capsys, rank):
    """WORLD_SIZE set by hand, no other process: one ValueError naming it, at the timeout given (the
    corpus commands wait CONNECT_TIMEOUT; here 3 s), after a line saying what it waits for. Torch's
    store client alone retries its connect several times: a 5-minute CONNECT_TIMEOUT took 9.5
    minutes."""
    import datetime

    from janus_fast.distributed import DistributedContext

    for name, value in (
        ("WORLD_SIZE", "2"),
        ("RANK", rank),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(_free_port())),
    ):
        monkeypatch.setenv(name, value)
    from janus_fast import distributed

    monkeypatch.setattr(distributed, "WAITING_NOTICE", datetime.timedelta(seconds=1))  # (10 s)
    start = time.monotonic()
    with pytest.raises(ValueError, match="WORLD_SIZE=2: cannot reach the other ranks .*torchrun"):
        DistributedContext("gloo", datetime.timedelta(seconds=3))
    assert time.monotonic() - start < 60  # 3 s on a quiet machine
    assert "janus-fast: waiting for the other 1 rank(s) of WORLD_SIZE=2 at 127.0.0.1:" in capsys.readouterr().err


def test_a_master_address_that_does_not_resolve_is_named_at_once(monkeypatch):
    """No wait (torch would retry the name until the timeout, printing a warning every few seconds)."""
    import datetime

    from janus_fast.distributed import DistributedContext

    for name, value in (
        ("WORLD_SIZE", "2"),
        ("RANK", "1"),
        ("MASTER_ADDR", "nosuchhost.invalid"),
        ("MASTER_PORT", "29500"),
    ):
        monkeypatch.setenv(name, value)
    start = time.monotonic()
    with pytest.raises(ValueError, match="MASTER_ADDR='nosuchhost.invalid' does not resolve"):
        DistributedContext("gloo", datetime.timedelta(minutes=5))
    assert time.monotonic() - start < 60  # at once (a name lookup) on a quiet machine


def test_sigterm_ends_a_rank_waiting_for_its_peers(tmp_path):
    """SIGTERM (kill, timeout, a scheduler) ends a translate whose ranks never come at once, as
    Ctrl-C would (exit 143), not after torch's connect retries, and without C++ stack dumps."""
    source = tmp_path / "in.de"
    source.write_text("Ein Hund.\n")
    env = dict(os.environ, WORLD_SIZE="2", RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    process = subprocess.Popen(
        [sys.executable, "-m", "janus_fast.cli", "translate", "-i", str(source), "-o", str(tmp_path / "out.en")],
        cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(8)  # the import and the start of the rendezvous (it waits 5 minutes for rank 0)
    assert process.poll() is None
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - start < 60  # at once on a quiet machine
    assert process.returncode == 143, stderr.decode()
    assert b"frame #" not in stderr and not (tmp_path / "out.en").exists()


def test_two_jobs_claiming_one_parts_folder_at_once_cannot_both_start(tmp_path, monkeypatch):
    """Two jobs on one output that both found the parts folder empty (started at the same moment):
    one makes the manifest, the other finds it when it tries to and is refused if its options differ
    (before, both wrote one and translated into the same chunks); the same options go on together."""
    from janus_fast import corpus
    from janus_fast.output import create_exclusively

    parts = str(tmp_path / "out.en.parts")
    shared = {"format": MANIFEST_FORMAT, "source_sha256": "s", "lines": 9, "chunk_size": 10, "model": {}}
    first = {**shared, "translator": {"precision": "fp32"}, "decoding": {}}
    second = {**shared, "translator": {"precision": "int8"}, "decoding": {}}
    real_listdir = os.listdir
    monkeypatch.setattr(corpus.os, "listdir", lambda path: [])  # both listed the folder before either wrote
    check_parts(parts, first)
    with pytest.raises(InputError, match="precision"):
        check_parts(parts, second)
    check_parts(parts, dict(first))  # an identical job: the same manifest, accepted
    monkeypatch.setattr(corpus.os, "listdir", real_listdir)
    assert [name for name in os.listdir(parts) if not name.startswith(".tmp-")] == ["manifest.json"]
    assert not [name for name in os.listdir(parts) if name.startswith(".tmp-")]  # nothing left beside
    assert create_exclusively(str(tmp_path / "x"), b"one") and not create_exclusively(str(tmp_path / "x"), b"two")
    assert (tmp_path / "x").read_bytes() == b"one"


def test_the_manifest_names_the_model_as_it_was_loaded(trained_dir, tmp_path):
    """A checkpoint folder replaced after the translator loaded it (a training run saving into
    --model's folder): the manifest keeps the digests of the weights that translate, not the new
    folder's, so a resume with the new model is refused."""
    import json
    import shutil

    from janus_fast.corpus import model_identity
    from janus_fast.translator import Translator

    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    translator = Translator.from_pretrained(str(model_dir))
    loaded = model_identity(translator, str(model_dir))
    config = json.loads((model_dir / "config.json").read_text())
    config["weights_sha256"] = "0" * 64  # the folder now holds another checkpoint
    (model_dir / "config.json").write_text(json.dumps(config))
    assert model_identity(translator, str(model_dir)) == loaded
    assert (
        model_identity(Translator.from_pretrained(trained_dir), trained_dir)["weights_sha256"]
        == (loaded["weights_sha256"])
    )
