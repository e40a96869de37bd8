"""Bounded memory (issue 34 item 5): a fairseq checkpoint whose zip records declare more than the file
can hold is refused before anything is inflated, and ``janus-fast profile`` refuses a --vocab or
--repeats it cannot run (its largest case holds about 0.19 MB per vocabulary entry)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from janus_fast import cli
from janus_fast.checkpoint import CheckpointError
from janus_fast.fairseq.checkpoint import load_fairseq_checkpoint

FAIRSEQ_DATA = Path(__file__).resolve().parent / "data" / "fairseq"


def _small_checkpoint(path: Path) -> Path:
    torch.save({"model": {"weight": torch.arange(6.0)}, "args": argparse.Namespace(arch="cmlm_transformer")}, path)
    return path


def _rezip(source: Path, target: Path, declared: dict[str, int] | None = None) -> Path:
    """``source`` re-written with every record deflated; ``declared`` overrides, per record name ending,
    the uncompressed size its central directory declares (nothing that large is written)."""
    with zipfile.ZipFile(source) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in records:
            archive.writestr(name, data)
        for info in archive.infolist():
            for ending, size in (declared or {}).items():
                if info.filename.endswith(ending):
                    info.file_size = size  # what the central directory, written at close, declares
    return target


def test_a_huge_declared_record_is_refused_before_inflating(tmp_path: Path) -> None:
    crafted = _rezip(_small_checkpoint(tmp_path / "small.pt"), tmp_path / "crafted.pt", {"data/0": 8 << 30})
    assert crafted.stat().st_size < 4096
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"declares 8,589,934,592 bytes.*refused before inflating it"):
        load_fairseq_checkpoint(str(crafted))
    assert time.perf_counter() - started < 1.0


def test_an_oversized_pickle_and_a_stored_size_mismatch_are_refused(tmp_path: Path) -> None:
    small = _small_checkpoint(tmp_path / "small.pt")
    crafted = _rezip(small, tmp_path / "pickle.pt", {"data.pkl": 1 << 30})
    with pytest.raises(CheckpointError, match=r"its pickle \S+data.pkl declares .* refused before inflating it"):
        load_fairseq_checkpoint(str(crafted))
    # a stored (uncompressed) record that declares more than it stores: torch would allocate what it declares
    stored = tmp_path / "stored.pt"
    with zipfile.ZipFile(small) as source, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        next(info for info in target.infolist() if info.filename.endswith("data/0")).file_size = 1 << 40
    with pytest.raises(CheckpointError, match=r"declares 1,099,511,627,776 bytes but stores 24"):
        load_fairseq_checkpoint(str(stored))


def test_real_checkpoints_still_load_compressed_or_not(tmp_path: Path) -> None:
    fixture = FAIRSEQ_DATA / "trained.pt"
    expected = load_fairseq_checkpoint(str(fixture))["model"]
    deflated = load_fairseq_checkpoint(str(_rezip(fixture, tmp_path / "deflated.pt")))["model"]
    assert deflated.keys() == expected.keys()
    assert all(torch.equal(deflated[name], expected[name]) for name in expected)


def test_a_zip_bomb_is_refused_without_the_memory(tmp_path: Path) -> None:
    """A 256 MB record of zeros deflated to a ~250 kB file: refused with the process's peak memory
    unchanged (it was inflated before: +256 MB)."""
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(_small_checkpoint(tmp_path / "small.pt")) as source:
        records = [(info.filename, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in records:
            if name.endswith("data/0"):
                with archive.open(name, "w") as stream:
                    for _ in range(256):
                        stream.write(bytes(1 << 20))
            else:
                archive.writestr(name, data)
    assert bomb.stat().st_size < 1 << 20
    code = (
        "import resource, sys\n"
        "from janus_fast.checkpoint import CheckpointError\n"
        "from janus_fast.fairseq.checkpoint import load_fairseq_checkpoint\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    load_fairseq_checkpoint(sys.argv[1])\n"
        "except CheckpointError as error:\n"
        "    print(error)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    message, grown_mb = result.stdout.strip().splitlines()
    assert int(grown_mb) < 64, f"peak memory grew by {grown_mb} MB reading a {bomb.stat().st_size} byte file"
    assert "refused before inflating it" in message, message


@pytest.mark.parametrize(
    ("args", "option"),
    [(["--vocab", "10000000"], "--vocab"), (["--vocab", "262145"], "--vocab"), (["--repeats", "1000"], "--repeats")],
)
def test_profile_refuses_what_it_cannot_hold(
    args: list[str], option: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import janus_fast.benchmarks.report as report

    monkeypatch.setattr(report, "profile_report", lambda **_: pytest.fail("the profile ran"))
    assert cli.main(["profile", *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"janus-fast: error: {option} ") and error.count("\n") == 1, error


@pytest.mark.skipif(not os.path.isfile("/proc/meminfo"), reason="the available memory is read from /proc/meminfo")
def test_profile_refuses_a_vocab_beyond_the_available_memory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import janus_fast.benchmarks.report as report

    monkeypatch.setattr(report, "profile_report", lambda **_: pytest.fail("the profile ran"))
    monkeypatch.setattr(cli, "PROFILE_BYTES_PER_VOCAB_ENTRY", 1 << 50)
    assert cli.main(["profile", "--vocab", "8000"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("janus-fast: error: --vocab 8000 needs about") and "available" in error, error


def test_profile_help_states_the_bounds() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "janus_fast.cli", "profile", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "4 to 262144" in text and "1 to 100" in text


def test_long_lines_are_cut_as_each_is_encoded() -> None:
    """A chunk of long lines keeps at most the model's source positions per line: each line's whole
    piece list (about 7 bytes of memory per character) is dropped as soon as the line is cut, not
    held for the whole chunk (a hostile probe reached 2.6 GB with 300 lines of 1 MiB)."""
    import tracemalloc
    import warnings

    from janus_fast import Translator

    translator = Translator.from_pretrained()
    line = "Ein Hund läuft über die Wiese. " * 6000  # 186,000 characters, 42,000 pieces
    one_line_ids = len(translator.tokenizer.encode(line))
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoded = translator.encode_sources([line] * 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert one_line_ids > 30_000 and all(len(ids) == translator.model.config.max_source_positions for ids in encoded)
    # 20 whole piece lists would take 20 x 42,000 ids (>= 6.7 MB of list slots alone); one at a time
    # peaks at about one line's
    assert peak < 4 * 8 * one_line_ids + 1_000_000, peak
