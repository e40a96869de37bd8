"""Sequence-level distillation (``janus-fast distill``), training on distilled targets and warm starts."""

from __future__ import annotations

import gzip
import os

import pytest
import torch
from conftest import tiny_train_config
from test_cli import run_cli

from janus_fast.checkpoint import CheckpointError, load_pretrained
from janus_fast.data import InputError, read_lines
from janus_fast.model import JanusModel
from janus_fast.training.distill import PARTS_SUFFIX, distill
from janus_fast.training.train import train, warm_start
from janus_fast.translator import Translator


def write_gz(path: str, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def test_distill_cli_gz_in_and_out_matches_translate(trained_dir, corpus_dir, tmp_path):
    sources = read_lines(os.path.join(corpus_dir, "train.de"))[:25] + [""]
    source_path, output_path = str(tmp_path / "src.de.gz"), str(tmp_path / "out.en.gz")
    write_gz(source_path, sources)
    result = run_cli("distill", "--model", trained_dir, "--src", source_path, "--output", output_path,
                     "--chunk-size", "7", "--beam", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    with gzip.open(output_path, "rt", encoding="utf-8") as handle:
        distilled = handle.read().split("\n")[:-1]
    expected = Translator.from_pretrained(trained_dir).translate(sources, mode="ar", beam=2)
    assert distilled == expected and len(distilled) == len(sources) and distilled[-1] == ""
    assert not os.path.exists(output_path + PARTS_SUFFIX)


def test_distill_resumes_from_finished_chunks(trained_dir, corpus_dir, tmp_path, monkeypatch):
    sources = read_lines(os.path.join(corpus_dir, "train.de"))[:10]
    source_path, output_path = str(tmp_path / "src.de"), str(tmp_path / "out.en")
    with open(source_path, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in sources))
    translator = Translator.from_pretrained(trained_dir)
    calls = []

    def first_chunk_then_killed(lines: list[str], **options) -> list[str]:  # noqa: ANN003
        if calls:
            raise KeyboardInterrupt
        calls.append(lines)
        return ["kept"] * len(lines)

    # a run killed after its first chunk: its manifest and that chunk are left behind
    monkeypatch.setattr(translator, "translate", first_chunk_then_killed)
    with pytest.raises(KeyboardInterrupt):
        distill(translator, source_path, output_path, chunk_size=4, mode="ar")
    monkeypatch.undo()
    assert distill(translator, source_path, output_path, chunk_size=4, mode="ar") == 10
    lines = read_lines(output_path)
    assert lines[:4] == ["kept"] * 4  # not translated again
    assert lines[4:] == translator.translate(sources[4:8], mode="ar") + translator.translate(sources[8:], mode="ar")


def test_distill_rejects_bad_chunk_size(trained_dir, tmp_path):
    with pytest.raises(ValueError, match="chunk_size"):
        distill(Translator.from_pretrained(trained_dir), "unused", str(tmp_path / "out"), chunk_size=0)


def test_train_target_replaces_references(corpus_dir, tmp_path):
    references = read_lines(os.path.join(corpus_dir, "train.en"))
    wrong_count = str(tmp_path / "short.en")
    with open(wrong_count, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in references[:5]))
    with pytest.raises(InputError, match="has 5"):
        train(tiny_train_config(corpus_dir, str(tmp_path / "bad"), train_target=wrong_count, max_updates=1))
    # targets that are all one sentence: the model trained on them says "dog" whatever the input
    constant = str(tmp_path / "constant.en.gz")
    write_gz(constant, ["A dog ."] * len(references))
    outputs = {}
    for name, target in (("references", None), ("constant", constant)):
        out = str(tmp_path / name)
        train(tiny_train_config(corpus_dir, out, objective="ar", train_target=target, max_updates=15, epochs=3,
                                lr=3e-3, warmup_updates=3))  # fmt: skip
        model = load_pretrained(os.path.join(out, "last"))
        translator = Translator(model, Translator.from_pretrained(os.path.join(out, "last")).tokenizer)
        outputs[name] = translator.translate(read_lines(os.path.join(corpus_dir, "val.de"))[:5], mode="ar")
    assert all("dog" in line for line in outputs["constant"]), outputs["constant"]
    assert not all("dog" in line for line in outputs["references"]), outputs["references"]


def test_warm_start_copies_weights_and_checks_shapes(trained_dir, corpus_dir, tmp_path):
    source = load_pretrained(trained_dir)
    model = JanusModel(source.config)
    warm_start(model, trained_dir)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    other = JanusModel(type(source.config)(**{**source.config.__dict__, "ffn_dim": 32}))
    with pytest.raises(CheckpointError, match="ffn_dim"):
        warm_start(other, trained_dir)
    tuned = JanusModel(type(source.config)(**{**source.config.__dict__, "length_bonus": 0.05}))
    warm_start(tuned, trained_dir)  # a decoding default is not part of the weights (the shipped model has one)
    assert tuned.config.length_bonus == 0.05
    assert all(torch.equal(tuned.state_dict()[name], tensor) for name, tensor in source.state_dict().items())
    out = str(tmp_path / "warm")
    train(tiny_train_config(corpus_dir, out, init_from=trained_dir, max_updates=1))
    with open(os.path.join(out, "spm.model"), "rb") as mine, open(os.path.join(trained_dir, "spm.model"), "rb") as init:
        assert mine.read() == init.read()
