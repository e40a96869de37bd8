"""janus-fast bench on a tiny trained model: every row present, the JSON parses, a plot is written."""

from __future__ import annotations

import json
import os

import pytest
from test_cli import run_cli

from janus_fast.benchmarks.ctranslate2_compare import ctranslate2_available
from janus_fast.native.decoder import native_decoder_available


@pytest.mark.slow
@pytest.mark.skipif(
    not native_decoder_available(),
    reason="native decoder not available (janus_fast._C not built, or JANUS_FAST_FORCE_REFERENCE): the engine "
    "rows would partly be the reference's (AR beam 4 compared with itself) and there would be no engine bf16 rows",
)
def test_bench_smoke(trained_dir, corpus_dir, tmp_path):
    os.symlink(os.path.join(corpus_dir, "val.de"), tmp_path / "test_2016_flickr.de")
    os.symlink(os.path.join(corpus_dir, "val.en"), tmp_path / "test_2016_flickr.en")
    plot = tmp_path / "bench.png"
    result = run_cli(
        "bench",
        "--model",
        trained_dir,
        "--data-dir",
        str(tmp_path),
        "--limit",
        "6",
        "--batch1",
        "2",
        "--repeats",
        "1",
        "--plot",
        str(plot),
        "--json",
        *(["--compare", "ctranslate2"] if ctranslate2_available() else []),
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout)
    names = [row["setting"] for row in report["rows"]]
    for decoder in ("reference", "engine"):
        for t in (1, 2, 4, 10):
            assert f"{decoder} NAR T={t} lb=3" in names
        assert f"{decoder} AR greedy" in names and f"{decoder} AR beam 4" in names
    for precision in ("bf16", "int8"):
        assert f"engine {precision} NAR T=4 lb=3" in names and f"engine {precision} AR greedy" in names
    assert {f"engine NAR T={t} lb=3 + AR rescore" for t in (2, 4, 10)} <= set(names)
    bleu = {row["setting"]: row["bleu"] for row in report["rows"]}
    for setting in ("NAR T=1 lb=3", "NAR T=10 lb=3", "AR greedy", "AR beam 4"):
        assert bleu[f"engine {setting}"] == bleu[f"reference {setting}"]  # same outputs, same score
    assert report["matmul_peak_gflops"] > 0
    ours = [row for row in report["rows"] if row["decoder"] != "ctranslate2"]
    assert all(row["batch_sentences_per_second"] > 0 and row["gflop_per_sentence"] > 0 for row in ours)
    assert report["cpu"] and report["native_isa"]
    assert report["nar_ranking"] == {"ar_rescore": False, "length_bonus": 0.0}  # the model's defaults, with its rows
    if ctranslate2_available():
        theirs = {row["setting"]: row for row in report["rows"] if row["decoder"] == "ctranslate2"}
        assert set(theirs) == {"CTranslate2 AR greedy float32", "CTranslate2 AR greedy int8"}
        assert all(row["batch1_ms_per_sentence"] > 0 and row["bleu"] is None for row in theirs.values())
        assert "engine NAR T=4 lb=3 vs CTranslate2 AR greedy float32, batch 1" in report["ratios"]
    assert "engine NAR T=4 vs engine AR greedy, batch 1" in report["ratios"]
    assert plot.exists() and plot.stat().st_size > 1000


def test_compare_without_ctranslate2_says_how_to_install(monkeypatch):
    import pytest

    from janus_fast.benchmarks import decoding
    from janus_fast.data import InputError

    monkeypatch.setattr(decoding, "ctranslate2_available", lambda: False)
    with pytest.raises(InputError, match="pip install"):
        decoding.run_bench(None, "/nonexistent", compare=("ctranslate2",))


def test_ctranslate2_model_has_the_engine_shape(tmp_path):
    """The same-shape CTranslate2 model loads and decodes exactly the forced number of tokens."""
    import pytest

    ctranslate2 = pytest.importorskip("ctranslate2")
    from janus_fast.benchmarks.ctranslate2_compare import build_model
    from janus_fast.model import JanusConfig

    config = JanusConfig(vocab_size=300, d_model=64, num_heads=4, ffn_dim=128, encoder_layers=2, decoder_layers=2)
    build_model(config, str(tmp_path / "model"))
    translator = ctranslate2.Translator(str(tmp_path / "model"), device="cpu", intra_threads=1)
    out = translator.translate_batch([["w1", "w2", "w3"]], beam_size=1, max_decoding_length=7, min_decoding_length=7)
    assert len(out[0].hypotheses[0]) in (6, 7)  # 7 steps; the last one may be the end token


@pytest.mark.parametrize(
    ("name", "message"),
    [("report.txt", "must end in .png, .pdf or .svg"), ("missing/plot.png", "no such folder")],
)
def test_plot_option_is_checked_before_the_benchmark(tmp_path, name, message):
    result = run_cli("bench", "--data-dir", str(tmp_path), "--plot", str(tmp_path / name))
    assert result.returncode == 2
    assert message in result.stderr.decode() and "--plot" in result.stderr.decode()


def test_plot_onto_the_data_or_the_model_is_refused(tmp_path, trained_dir):
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "test_2016_flickr.de"
    data.write_bytes(b"keep")
    (tmp_path / "link.png").symlink_to(data)
    result = run_cli("bench", "--data-dir", str(tmp_path / "data"), "--plot", str(tmp_path / "link.png"))
    assert result.returncode == 2 and "--plot" in result.stderr.decode()
    assert data.read_bytes() == b"keep"
    plot = os.path.join(trained_dir, "plot.png")
    result = run_cli("bench", "--model", trained_dir, "--data-dir", str(tmp_path), "--plot", plot)
    assert result.returncode == 2 and "inside" in result.stderr.decode() and not os.path.exists(plot)


def test_plot_through_a_dangling_link_is_checked_where_it_points(tmp_path):
    """The folder check looked at the link's folder; the plot then created the target's missing folders."""
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere" / "deeper" / "plot.png")
    result = run_cli("bench", "--data-dir", str(tmp_path), "--plot", str(tmp_path / "dangling.png"))
    assert result.returncode == 2 and "no such folder" in result.stderr.decode()
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"batch1_sentences": 0}, "batch1_sentences must be >= 1"),
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"limit": -1}, "limit must be >= 1"),
        ({"max_batch_tokens": 0}, "max_batch_tokens must be >= 1"),
        ({"compat": "bogus"}, "compat must be 'janus' or 'fairseq'"),
    ],
)
def test_run_bench_checks_its_arguments_before_the_work(tmp_path, arguments, message):
    """From Python these reached a ZeroDivisionError after the timing (batch1 0) or were taken."""
    from janus_fast.benchmarks.decoding import run_bench

    with pytest.raises(ValueError, match=message):
        run_bench(None, str(tmp_path), **arguments)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"sentences": 0}, "sentences must be >= 1"),
        ({"batch1": 0}, "batch1 must be >= 1"),
        ({"threads": (0,)}, "threads must be >= 1"),
        ({"threads": ()}, "at least one entry"),
        ({"precisions": ("fp64",)}, "each fp32, bf16 or int8"),
    ],
)
def test_run_shape_bench_checks_its_arguments_before_the_work(arguments, message):
    from janus_fast.benchmarks.shapes import run_shape_bench

    with pytest.raises(ValueError, match=message):
        run_shape_bench("base", **arguments)


def test_a_failing_plot_still_prints_the_report(tmp_path, monkeypatch, capsys):
    """The measurements are not lost when the plot cannot be written: the report is printed, then
    the error (exit 2)."""
    import errno

    from janus_fast.benchmarks import decoding
    from janus_fast.cli import main

    def no_space(report: dict, path: str) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(decoding, "run_bench", lambda *args, **kwargs: {"rows": [{"setting": "measured"}]})
    monkeypatch.setattr(decoding, "write_plot", no_space)
    (tmp_path / "data").mkdir()
    status = main(["bench", "--data-dir", str(tmp_path / "data"), "--plot", str(tmp_path / "plot.png"), "--json"])
    captured = capsys.readouterr()
    assert status == 2
    assert json.loads(captured.out)["rows"] == [{"setting": "measured"}]
    assert "--plot" in captured.err and "No space left" in captured.err


def test_bench_of_a_one_sided_model_times_its_trained_side_only(corpus_dir, tmp_path):
    """An AR-only model (objective ar): bench times its AR rows and names the NAR and speculative
    rows it leaves out, instead of refusing the whole model."""
    from conftest import tiny_train_config

    from janus_fast.benchmarks.decoding import format_report, run_bench
    from janus_fast.training.train import train

    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, objective="ar", max_updates=2))
    data = tmp_path / "data"
    data.mkdir()
    for language in ("de", "en"):
        os.symlink(os.path.join(corpus_dir, f"val.{language}"), data / f"test_2016_flickr.{language}")
    report = run_bench(os.path.join(out, "last"), str(data), limit=3, batch1_sentences=1)
    modes = {row["mode"] for row in report["rows"]}
    assert modes == {"ar"} and {"engine AR greedy", "reference AR beam 4"} <= {row["setting"] for row in report["rows"]}
    assert "engine NAR T=4 lb=3" in report["untrained_rows"] and "engine speculative" in report["untrained_rows"]
    assert "engine NAR T=4 lb=3 + AR rescore" in report["untrained_rows"]
    assert "left out, a side this model's training never trained: " in format_report(report)
