"""``janus-fast bench --shape``: random models of the sizes users bring, with forced output lengths."""

from __future__ import annotations

import pytest
import torch
from test_cli import run_cli

from janus_fast.benchmarks.ctranslate2_compare import ctranslate2_available, large_batch_figures
from janus_fast.benchmarks.shapes import (
    ROWS,
    SHAPES,
    ForcedLengthModel,
    _Vocabulary,
    format_shape_report,
    random_model,
    random_sources,
    run_shape_bench,
    shape_config,
    source_lengths,
)
from janus_fast.decoding.candidates import length_candidates
from janus_fast.translator import Translator

TINY = "64,128,4,1,1,300"


def test_shapes_are_the_transformer_sizes():
    base, big = shape_config("base"), shape_config("big")
    assert (base.d_model, base.ffn_dim, base.num_heads, base.encoder_layers, base.vocab_size) == (
        512,
        2048,
        8,
        6,
        32000,
    )
    assert (big.d_model, big.ffn_dim, big.num_heads) == (1024, 4096, 16) and set(SHAPES) == {"base", "big"}
    tiny = shape_config(TINY)
    assert (tiny.d_model, tiny.decoder_layers, tiny.vocab_size, tiny.length_offset) == (64, 1, 300, True)
    for bad in ("huge", "1,2,3", "64,128,5,1,1,300", "64,128,4,0,1,300", "64,128,4,1,1,8", "a,b,c,d,e,f"):
        with pytest.raises(ValueError, match="--shape"):
            shape_config(bad)


def test_source_lengths(tmp_path):
    wmt = source_lengths("wmt", 4000)
    assert 3 <= min(wmt) and max(wmt) <= 150 and 25 < sum(wmt) / len(wmt) < 29 and max(wmt) > 90
    assert source_lengths("wmt", 50, seed=3) == source_lengths("wmt", 50, seed=3)
    assert source_lengths("12", 3) == [12, 12, 12]
    listed = tmp_path / "lengths.txt"
    listed.write_text("5\n7\n\n9\n")
    assert source_lengths(str(listed), 5) == [5, 7, 9, 5, 7]
    for bad in ("0", "999", str(tmp_path / "missing.txt"), "/dev/zero"):  # /dev/zero: read 64 bytes, not forever
        with pytest.raises(ValueError, match="--lengths"):
            source_lengths(bad, 3)


@pytest.mark.parametrize("decoder", ["engine", "reference"])
def test_outputs_are_forced_to_the_source_length(decoder):
    config = shape_config(TINY)
    model = random_model(config)
    assert isinstance(model, ForcedLengthModel)
    translator = Translator(model, _Vocabulary(config.vocab_size), decoder=decoder)
    lengths = [5, 17, 40]
    sources = random_sources(config, lengths)
    assert [len(s) for s in sources] == lengths and min(min(s) for s in sources) > config.mask_id
    # AR: eos never chosen, so every output runs to its limit: as many words as the source
    for beam in (1, 4):
        found = translator.translate_ids(sources, **{**ROWS["AR greedy"], "beam": beam})
        assert [len(t) for t in found.tokens] == lengths
    found = translator.translate_ids(sources, **ROWS["NAR T=2 l=3"])  # the best of the three candidates
    assert all(abs(len(t) - n) <= 1 for t, n in zip(found.tokens, lengths))
    found = translator.translate_ids(sources, **ROWS["NAR T=2 l=1"])  # the predicted length alone
    assert [len(t) for t in found.tokens] == lengths
    # NAR: the length head predicts as many words as the source has, then one fewer and one more
    wrapped = translator.wrap_sources(sources)
    src = torch.tensor([ids + [config.pad_id] * (41 - len(ids)) for ids in wrapped])
    encoder_out = model.encode(src, torch.tensor([len(ids) for ids in wrapped]))
    candidates, _ = length_candidates(model, encoder_out, 3)
    expected = torch.tensor([[n + 2, n + 1, n + 3] for n in lengths])  # target lengths count bos and eos
    assert torch.equal(candidates, expected)


@pytest.mark.slow
def test_bench_shape_cli_prints_every_row_and_the_memory(tmp_path):
    rows = "AR greedy,NAR T=2 l=3,speculative"
    result = run_cli("bench", "--shape", TINY, "--sentences", "6", "--batch1", "2", "--rows", rows, "--repeats", "1")
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    for row in rows.split(","):
        assert f"| {row} | fp32 | 1 |" in out and f"| {row} | int8 | 1 |" in out
    assert out.count("memory ") == 2 and "peak RSS" in out


def test_bench_shape_refuses_bad_options():
    for options, named in (
        (["--shape", "1,2"], "--shape"),
        (["--shape", TINY, "--threads", "0"], "--threads"),
        (["--shape", TINY, "--precisions", "fp64"], "--precisions"),
        (["--shape", TINY, "--threads", "1,1"], "1 given twice"),
        (["--shape", TINY, "--precisions", "bf16,bf16"], "bf16 given twice"),
        (["--shape", TINY, "--rows", "AR turbo"], "unknown rows"),
        ([], "--data-dir"),
        # a shape past the machine's memory: refused in one line (two nested tracebacks before)
        (["--shape", "65536,65536,2,6,6,300000", "--lengths", "5"], "choose a smaller shape"),
        # an architecture limit named as the shape's field, not as train's --d-model
        (["--shape", "100000,100000,2,6,6,300"], "--shape '100000,100000,2,6,6,300': d_model must be <= 65536"),
    ):
        result = run_cli("bench", *options)
        assert result.returncode == 2, result.stderr.decode()
        err = result.stderr.decode()
        assert err.startswith("janus-fast: error:") and named in err and err.count("\n") == 1, err


def test_a_worker_job_larger_than_a_command_line_argument_runs():
    """The job (one length per sentence) goes to the worker on its standard input: 60,000 lengths
    are over the 128 KiB a single command-line argument may hold."""
    from janus_fast.benchmarks.shapes import run_shape_bench

    report = run_shape_bench(
        "16,32,2,1,1,20", "5", sentences=40000, batch1=1, rows=("AR greedy",), precisions=("int8",)
    )
    assert len(report["rows"]) == 1 and report["rows"][0]["batch_ms_per_sentence"] > 0


def test_bench_refuses_the_options_of_its_other_form(tmp_path):
    """--shape times a random model; without it a trained model on a test set: an option only the
    other form reads is refused, not ignored (a report would say 1 thread where 2 were asked)."""

    shape = ("bench", "--shape", "32,64,2,1,1,100", "--lengths", "5", "--sentences", "2")
    for extra, name in [
        (("--model", str(tmp_path)), "--model"),
        (("--compat", "fairseq"), "--compat"),
        (("--limit", "3"), "--limit"),
        (("--plot", ""), "--plot"),
    ]:
        result = run_cli(*shape, *extra)
        assert result.returncode == 2 and f"{name} applies to bench with a trained model".encode() in result.stderr
    for extra, name in [(("--threads", "2"), "--threads"), (("--rows", "AR greedy"), "--rows")]:
        result = run_cli("bench", "--data-dir", str(tmp_path), *extra)
        assert result.returncode == 2 and f"{name} applies to bench with --shape only".encode() in result.stderr
    result = run_cli(*shape, "--rows", "")
    assert result.returncode == 2 and b"--rows is empty" in result.stderr


@pytest.mark.skipif(not ctranslate2_available(), reason="CTranslate2 not installed (pip install ctranslate2)")
def test_ctranslate2_rows_are_timed_on_the_engines_work():
    """CTranslate2 forces one output length per batch: with sources of one length its batches decode
    exactly the engine's steps (greedy and beam 4); with mixed lengths more, and its time is scaled."""
    rows = ("AR greedy", "AR beam 4")
    for lengths, equal in (("9", True), ("wmt", False)):
        report = run_shape_bench(TINY, lengths=lengths, sentences=12, batch1=2, rows=rows, precisions=("fp32",),
                                 compare=("ctranslate2",))  # fmt: skip
        theirs = {(r["row"], r["precision"]): r for r in report["rows"] if r["row"].startswith("CTranslate2")}
        assert set(theirs) == {(f"CTranslate2 {row}", t) for row in rows for t in ("float32", "int8")}
        for row in theirs.values():
            assert (row["ctranslate2_extra_work"] == 1.0) == equal and row["ctranslate2_extra_work"] >= 1.0
            assert row["batch_ms_per_sentence"] > 0 and row["batch1_ms_per_sentence"] > 0
        assert ("decoded" in format_shape_report(report)) != equal
        ours = [r for r in report["rows"] if not r["row"].startswith("CTranslate2")]
        assert all(r["achieved_gflops"] > 0 and r["of_fp32_matmul_peak"] > 0 for r in ours)


def test_large_batch_figures_scale_to_the_engines_work():
    timing = {"batch_seconds": 3.0, "batch_output_tokens": 30}
    figures = large_batch_figures(timing, [5, 5])  # the engine's 10 steps in 2 sentences, CTranslate2's 30
    assert figures["ctranslate2_extra_work"] == 3.0
    assert figures["batch_ms_per_sentence"] == pytest.approx(500.0) and figures["batch_sentences_per_second"] == 2.0
