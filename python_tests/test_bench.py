"""janus-fast bench on a tiny trained model: every row present, the JSON parses, a plot is written."""

from __future__ import annotations

import json
import os

from test_cli import run_cli


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
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout)
    names = [row["setting"] for row in report["rows"]]
    for decoder in ("reference", "engine"):
        for t in (1, 2, 4, 10):
            assert f"{decoder} NAR T={t} lb=3" in names
        assert f"{decoder} AR greedy" in names and f"{decoder} AR beam 4" in names
    assert "engine int8 NAR T=4 lb=3" in names and "engine int8 AR greedy" in names
    bleu = {row["setting"]: row["bleu"] for row in report["rows"]}
    for setting in ("NAR T=1 lb=3", "NAR T=10 lb=3", "AR greedy", "AR beam 4"):
        assert bleu[f"engine {setting}"] == bleu[f"reference {setting}"]  # same outputs, same score
    assert report["matmul_peak_gflops"] > 0
    assert all(row["batch_sentences_per_second"] > 0 and row["gflop_per_sentence"] > 0 for row in report["rows"])
    assert "engine NAR T=4 vs engine AR greedy, batch 1" in report["ratios"]
    assert plot.exists() and plot.stat().st_size > 1000
