"""Issue 34: a checkpoint directory written at once and never over a source, a literal ``<mask>``
in text, reserved ids in token-id input, and a stray fairseq dictionary beside a checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from janus_fast.checkpoint import (
    CheckpointError,
    checkpoint_output,
    load_pretrained,
    load_tokenizer,
    replaced_directory,
    save_pretrained,
    save_tokenizer,
)
from janus_fast.translator import Translator
from janus_fast.vocab import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID


def test_export_through_a_symlink_to_its_source_is_refused(trained_dir, tmp_path):
    from test_cli import run_cli

    link = tmp_path / "link"
    os.symlink(trained_dir, link)
    before = {name: os.path.getmtime(os.path.join(trained_dir, name)) for name in os.listdir(trained_dir)}
    result = run_cli("export", "--model", trained_dir, "--output", str(link), "--dtype", "bf16")
    assert result.returncode != 0 and b"must differ" in result.stderr
    result = run_cli("average", "--models", trained_dir, trained_dir, "--output", str(link))
    assert result.returncode != 0 and b"must differ" in result.stderr
    assert before == {name: os.path.getmtime(os.path.join(trained_dir, name)) for name in os.listdir(trained_dir)}


def test_export_and_average_refuse_an_output_that_holds_a_source(trained_dir, tmp_path):
    """A checkpoint folder nested in --output would be deleted with the folder it replaces."""
    from test_cli import run_cli

    outer = tmp_path / "outer"
    shutil.copytree(trained_dir, outer)
    shutil.copytree(trained_dir, outer / "inner")  # (a checkpoint put there by hand: export refuses it, below)
    before = sorted(os.listdir(outer))
    result = run_cli("export", "--model", str(outer / "inner"), "--output", str(outer), "--dtype", "bf16")
    assert result.returncode != 0 and b"holds the source checkpoint" in result.stderr
    result = run_cli("average", "--models", str(outer / "inner"), trained_dir, "--output", str(outer))
    assert result.returncode != 0 and b"holds the source checkpoint" in result.stderr
    assert sorted(os.listdir(outer)) == before and load_pretrained(str(outer / "inner")) is not None


def test_export_and_average_refuse_an_output_inside_a_source(trained_dir, tmp_path):
    """A copy written inside the folder it was read from (e.g. a run's last/) is deleted without a
    word when that folder is saved again (replaced whole), as translate's outputs there are refused."""
    from test_cli import run_cli

    source = tmp_path / "last"
    shutil.copytree(trained_dir, source)
    before = sorted(os.listdir(source))
    result = run_cli("export", "--model", str(source), "--output", str(source / "shipme"), "--dtype", "bf16")
    assert result.returncode == 2 and b"is inside the source checkpoint" in result.stderr, result.stderr
    result = run_cli("average", "--models", str(source), trained_dir, "--output", str(source / "avg" / "deeper"))
    assert result.returncode == 2 and b"is inside the source checkpoint" in result.stderr, result.stderr
    assert sorted(os.listdir(source)) == before


def test_export_replaces_an_old_copy_whole_and_refuses_a_folder_of_other_files(trained_dir, tmp_path):
    from test_cli import run_cli

    output = tmp_path / "copy"
    assert run_cli("export", "--model", trained_dir, "--output", str(output), "--dtype", "bf16").returncode == 0
    (output / "MODEL.md").write_text("notes beside the old copy")
    result = run_cli("export", "--model", trained_dir, "--output", str(output), "--dtype", "fp32")
    assert result.returncode != 0 and b"also holds MODEL.md" in result.stderr  # replacing would delete it
    assert (output / "MODEL.md").read_text() == "notes beside the old copy"
    (output / "MODEL.md").unlink()
    result = run_cli("export", "--model", trained_dir, "--output", str(output), "--dtype", "fp32")
    assert result.returncode == 0, result.stderr.decode()
    assert load_pretrained(str(output)).embed_tokens.weight.dtype.is_floating_point
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".copy.")]  # nothing left beside
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    result = run_cli("export", "--model", trained_dir, "--output", str(other))
    assert result.returncode != 0 and b"holds no checkpoint" in result.stderr
    assert (other / "mine.txt").read_text() == "keep me"


def test_an_interrupted_write_leaves_the_old_copy_as_it_was(trained_dir, tmp_path):
    output = str(tmp_path / "copy")
    shutil.copytree(trained_dir, output, ignore=shutil.ignore_patterns("train_state.pt"))  # a plain checkpoint
    before = {name: open(os.path.join(output, name), "rb").read() for name in os.listdir(output)}
    model = load_pretrained(trained_dir)
    with pytest.raises(KeyboardInterrupt):
        with replaced_directory(checkpoint_output(output, [trained_dir])) as staging:
            save_pretrained(model, staging)
            raise KeyboardInterrupt  # killed before the tokenizer was written
    assert {name: open(os.path.join(output, name), "rb").read() for name in os.listdir(output)} == before
    assert os.listdir(tmp_path) == ["copy"]
    with pytest.raises(CheckpointError, match="must differ"):
        checkpoint_output(output, [output])


def test_a_literal_mask_in_text_is_an_unknown_word(trained_dir):
    tokenizer = load_tokenizer(trained_dir)
    ids = tokenizer.encode("ein <mask> hund")
    assert MASK_ID not in ids and UNK_ID in ids
    assert tokenizer.encode_batch(["<mask>", "ein hund"]) == [tokenizer.encode("<mask>"), tokenizer.encode("ein hund")]
    translator = Translator.from_pretrained(trained_dir)
    text = translator.translate(["ein <mask> hund"])
    assert text == [translator.tokenizer.decode(translator.translate_ids([ids]).tokens[0])]


def test_token_id_input_refuses_reserved_ids(trained_dir):
    translator = Translator.from_pretrained(trained_dir)
    words = translator.tokenizer.encode("ein hund")
    assert len(translator.translate_ids([words]).tokens) == 1
    for reserved in (PAD_ID, BOS_ID, EOS_ID, MASK_ID):
        with pytest.raises(ValueError, match=r"input line 2\): token ids \[\d\] are reserved"):
            translator.translate_ids([words, [*words, reserved]])
    assert len(translator.translate_ids([[*words, UNK_ID]]).tokens) == 1  # an unknown word is a word


def test_a_stray_fairseq_dictionary_is_not_the_checkpoints_tokenizer(trained_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(trained_dir, model_dir)
    with open(os.path.join(model_dir, "dict.txt"), "w", encoding="utf-8") as handle:
        handle.write("hello 1\nworld 1\n")
    with pytest.warns(UserWarning, match="dict.txt: not this checkpoint's tokenizer"):
        tokenizer = load_tokenizer(model_dir)
    assert tokenizer.vocab_size == load_tokenizer(trained_dir).vocab_size
    bare = str(tmp_path / "bare")
    os.makedirs(bare)
    shutil.copy(os.path.join(trained_dir, "spm.model"), bare)
    shutil.copy(os.path.join(model_dir, "dict.txt"), bare)
    with pytest.raises(CheckpointError, match="holds both spm.model and dict.txt"):
        load_tokenizer(bare)
    save_tokenizer(load_tokenizer(trained_dir), str(tmp_path / "alone"))
    assert load_tokenizer(str(tmp_path / "alone")).vocab_size == tokenizer.vocab_size


def test_distill_names_a_long_input_by_its_line_in_the_file(trained_dir, tmp_path):
    """A long line in a later chunk of distill's source is named by its line in the file."""
    from janus_fast.training.distill import distill

    translator = Translator.from_pretrained(trained_dir, on_long_input="error")
    source = tmp_path / "src.de"
    lines = ["ein hund"] * 4 + [" ".join(["hund"] * 400)]
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"\(input line 5\)"):
        distill(translator, str(source), str(tmp_path / "out.en"), chunk_size=2)


def test_the_public_names_are_the_functions_and_classes():
    """``from janus_fast import generate`` is the function (the README's example), not a module."""
    import inspect

    import janus_fast
    from janus_fast import JanusConfig, JanusModel, Translator, generate

    assert inspect.isfunction(generate) and inspect.isclass(Translator)
    assert inspect.isclass(JanusModel) and inspect.isclass(JanusConfig)
    assert janus_fast.generate is generate


# ----------------------------------------------------------------------- the second hostile probe
def test_export_and_average_refuse_an_existing_file_as_output(trained_dir, tmp_path):
    from test_cli import run_cli

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for command in (["export", "--model", trained_dir], ["average", "--models", trained_dir, trained_dir]):
        result = run_cli(*command, "--output", str(victim))
        assert result.returncode != 0 and b"is a file" in result.stderr
        assert victim.read_text() == "precious"


def test_huge_length_limits_and_bonuses_and_numpy_numbers(trained_dir):
    """AR length limits far beyond the model's positions mean "up to the model's positions" (they
    overflowed int64 to an empty output); a length bonus beyond float32's range still ranks by
    length; NumPy numbers are options like Python's."""
    import numpy as np

    translator = Translator.from_pretrained(trained_dir)
    sentences = ["ein mann fährt fahrrad", "zwei hunde spielen im schnee"]
    plain = translator.translate(sentences, max_len_a=1e6)
    assert plain == translator.translate(sentences, max_len_a=1e19) == translator.translate(sentences, max_len_b=10**30)
    assert translator.translate(sentences, max_len_a=np.float32(1e6), beam=np.int64(1)) == plain
    nar = {"mode": "nar", "iterations": 2, "length_beam": 5, "collapse_repeats": False}
    assert translator.translate(sentences, **nar, length_bonus=1e39) == translator.translate(
        sentences, **nar, length_bonus=1e37
    )
    assert translator.translate(sentences, **{**nar, "iterations": np.int64(2)}) == translator.translate(
        sentences, **nar
    )


def test_translator_refuses_a_model_put_back_in_training_mode(trained_dir):
    translator = Translator.from_pretrained(trained_dir)
    translator.model.train()
    with pytest.raises(ValueError, match="training mode"):
        translator.translate(["ein hund"], mode="nar")


def test_bounded_options_and_batches():
    """Speculative draft iterations are capped like --iterations; batches of many length candidates
    or beams hold proportionally fewer source tokens (memory bounded by --max-batch-tokens)."""
    from janus_fast.decoding.options import MAX_DRAFT_ITERATIONS, DecodeOptions, SpeculativeOptions
    from janus_fast.translator import length_sorted_batches, rows_budget

    with pytest.raises(ValueError, match="draft_iterations"):
        SpeculativeOptions(draft_iterations=MAX_DRAFT_ITERATIONS + 1)
    assert rows_budget(4096, DecodeOptions(mode="nar", length_beam=3)) == 4096
    assert rows_budget(4096, DecodeOptions(mode="ar", beam=4)) == 4096
    assert rows_budget(4096, DecodeOptions(mode="nar", length_beam=256)) == 64
    assert rows_budget(4096, DecodeOptions(mode="ar", beam=128)) == 128
    encoded = [[5] * 10] * 100
    assert max(len(batch) for batch in length_sorted_batches(encoded, rows_budget(4096, DecodeOptions(beam=128)))) == 12


def test_reference_decoder_runs_a_float64_model():
    from conftest import random_model

    from janus_fast.generation import generate

    model = random_model(4).double()
    src, lengths = torch.randint(5, 60, (2, 6)), torch.tensor([6, 3])
    assert len(generate(model, src, lengths, mode="nar", iterations=2, decoder="reference")) == 2


def test_torchrun_environment_is_checked(monkeypatch):
    from janus_fast.distributed import DistributedContext

    for name, value, message in (("WORLD_SIZE", "0", "WORLD_SIZE=0"), ("WORLD_SIZE", "abc", "WORLD_SIZE='abc'")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=message):
            DistributedContext()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK=3 must be below WORLD_SIZE=1"):
        DistributedContext()


def test_evaluate_refuses_empty_files(tmp_path):
    from test_cli import run_cli

    empty, empty_reference = tmp_path / "empty.txt", tmp_path / "empty.en"
    empty.write_text("")
    empty_reference.write_text("")
    result = run_cli("evaluate", "--src", str(empty), "--ref", str(empty_reference))
    assert result.returncode != 0 and b"no lines" in result.stderr and b"Traceback" not in result.stderr


def test_validation_by_loss_keeps_a_best_checkpoint():
    """Without --valid-bleu the best score is minus the loss: any first validation improves on the start."""
    from janus_fast.training.train import TrainState

    assert -12.4 > TrainState().best_bleu


def test_small_refusals_of_the_probe(trained_dir):
    """A set of sentences (no order), a zero AR length limit and a profile vocabulary without the
    profiled mask id are refused with one clear message each."""
    from test_cli import run_cli

    translator = Translator.from_pretrained(trained_dir)
    with pytest.raises(TypeError, match="not a set"):
        translator.translate({"ein hund"})
    with pytest.raises(ValueError, match="allows no word"):
        translator.translate(["ein hund"], max_len_a=0, max_len_b=0)
    result = run_cli("profile", "--vocab", "2")
    assert result.returncode != 0 and b"--vocab must be at least 4" in result.stderr


def test_error_texts_name_the_real_problem(tmp_path):
    """A checkpoint path that is a file is called a file; a bench on empty test files says so."""
    from janus_fast.benchmarks.decoding import run_bench
    from janus_fast.data import InputError

    a_file = tmp_path / "model.txt"
    a_file.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="a file, not a folder"):
        Translator.from_pretrained(str(a_file))
    for lang in ("de", "en"):
        (tmp_path / f"test_2016_flickr.{lang}").write_text("")
    with pytest.raises(InputError, match="hold no sentences"):
        run_bench(None, str(tmp_path))


# ---------------------------------------------------------------------------------------------
# the third hostile probe (issue 34)

FAIRSEQ_DATA = os.path.join(os.path.dirname(__file__), "data", "fairseq")
PRETRAINED_DIR = os.path.join(os.path.dirname(__file__), "..", "janus_fast", "pretrained", "multi30k-de-en")


def test_corrupt_gzip_input_is_one_error_naming_the_file(tmp_path):
    import gzip

    from janus_fast.data import InputError, iter_lines, read_lines

    path = tmp_path / "in.de.gz"
    path.write_bytes(gzip.compress("".join(f"Zeile {i} mit Text\n" for i in range(3000)).encode()))
    data = bytearray(path.read_bytes())
    for offset in range(200, len(data) - 200, 97):  # damaged deflate data (not just a wrong CRC)
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    for read in (read_lines, lambda p: list(iter_lines(p))):
        with pytest.raises(InputError, match="cannot read .*in.de.gz"):
            read(str(path))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"mode": "nar", "beam": 4}, "beam=4 does not apply to mode='nar'"),
        ({"mode": "spec", "beam": 4}, "beam=4 does not apply to mode='spec'"),
        ({"mode": "ar", "iterations": 3}, "iterations=3 does not apply to mode='ar'"),
        ({"mode": "ar", "length_beam": 5}, "length_beam=5 does not apply to mode='ar'"),
        ({"mode": "nar", "max_len_a": 0.0, "max_len_b": 1}, "max_len_a=0.0 does not apply to mode='nar'"),
        ({"mode": "ar", "compat": "fairseq", "iterations": 99999}, "iterations=99999 does not apply"),
        ({"mode": "ar", "compat": "fairseq", "force_max_iter": True}, "force_max_iter applies to mode='nar'"),
    ],
)
def test_an_option_the_mode_does_not_use_is_refused(trained_dir, options, named):
    translator = Translator.from_pretrained(trained_dir)
    with pytest.raises(ValueError, match=named):
        translator.translate(["Ein Hund."], **options)


def test_the_default_of_an_unused_option_is_accepted(trained_dir):
    translator = Translator.from_pretrained(trained_dir)
    for options in ({"mode": "nar", "beam": 1}, {"mode": "ar", "iterations": 10, "length_beam": 3}, {"mode": "spec"}):
        assert len(translator.translate(["Ein Hund."], **options)) == 1


def test_a_resume_on_other_native_products_is_refused(tmp_path, monkeypatch):
    from janus_fast import corpus
    from janus_fast.data import InputError

    class Upper:
        def translate(self, lines, progress=None, **options):  # noqa: ANN001, ANN003, ANN201
            if any(line == "stop" for line in lines):
                raise KeyboardInterrupt
            return [line.upper() for line in lines]

    source = tmp_path / "src.txt"
    source.write_text("".join(f"zeile {i}\n" for i in range(30)) + "stop\n", encoding="utf-8")
    output = str(tmp_path / "out.txt")
    monkeypatch.setattr(corpus, "native_products", lambda: "avx2")
    with pytest.raises(KeyboardInterrupt):
        corpus.translate_file(Upper(), str(source), output, chunk_size=10)
    monkeypatch.setattr(corpus, "native_products", lambda: "avx512_bf16 vnni")
    with pytest.raises(InputError, match=r"native products .*'avx2' -> 'avx512_bf16 vnni'"):
        corpus.translate_file(Upper(), str(source), output, chunk_size=10)


def test_evaluate_and_distill_refuse_standard_streams_and_pipes(tmp_path):
    from test_cli import run_cli

    source = tmp_path / "src.de"
    source.write_text("Ein Hund.\n", encoding="utf-8")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for arguments, named in (
        (["evaluate", "--src", str(source), "--ref", str(source), "--output", "-"], b"--output -"),
        (["evaluate", "--src", str(source), "--ref", "-"], b"--ref -"),
        (["evaluate", "--src", str(fifo), "--ref", str(source)], b"--src " + str(fifo).encode()),
        (["distill", "--src", str(fifo), "--output", str(tmp_path / "out")], b"--src"),
        (["distill", "--src", str(source), "--output", "-"], b"--output -"),
    ):
        result = run_cli(*arguments)
        assert result.returncode == 2 and result.stderr.startswith(b"janus-fast: error:"), result.stderr
        assert named in result.stderr and result.stderr.count(b"\n") == 1
    assert not os.path.exists("-")


def test_translate_reads_a_pipe_once_and_gzips_a_gz_output(tmp_path):
    import gzip
    import subprocess
    import sys

    from test_cli import REPO_ROOT

    text = "Ein Hund.\n\nZwei Katzen spielen.\n"
    output = tmp_path / "out.en.gz"
    command = f"printf '{text}' | {sys.executable} -m janus_fast.cli translate -i /dev/stdin -o {output}"
    result = subprocess.run(command, shell=True, capture_output=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    with gzip.open(output, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[0] and lines[2]


@pytest.mark.parametrize("kind", ["sentencepiece-garbage", "subword-nmt-malformed", "subword-nmt-binary"])
def test_convert_names_an_unusable_bpe_file(tmp_path, kind):
    from test_cli import run_cli

    checkpoint = sorted(p for p in os.listdir(FAIRSEQ_DATA) if p.endswith(".pt"))[0]
    bpe = tmp_path / "bpe"
    bpe.write_bytes({"sentencepiece-garbage": b"not a model\n", "subword-nmt-malformed": b"#version: 0.2\na b c\n",
                     "subword-nmt-binary": bytes(range(128, 256)) * 4}[kind])  # fmt: skip
    tool = kind.split("-garbage")[0].split("-malformed")[0].split("-binary")[0]
    fairseq = ["--fairseq", os.path.join(FAIRSEQ_DATA, checkpoint), "--dict", os.path.join(FAIRSEQ_DATA, "dict.txt")]
    result = run_cli("convert", *fairseq, "--bpe", tool, str(bpe), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count(b"\n") == 1, result.stderr
    assert result.stderr.startswith(f"janus-fast: error: --bpe {tool} {bpe}: not ".encode())
    assert not os.path.exists(tmp_path / "out")


def test_convert_refuses_a_checkpoint_failing_its_crc(tmp_path):
    import zipfile

    from janus_fast.fairseq.checkpoint import load_fairseq_checkpoint

    checkpoint = sorted(p for p in os.listdir(FAIRSEQ_DATA) if p.endswith(".pt"))[0]
    data = bytearray(open(os.path.join(FAIRSEQ_DATA, checkpoint), "rb").read())
    with zipfile.ZipFile(os.path.join(FAIRSEQ_DATA, checkpoint)) as archive:
        record = max(archive.infolist(), key=lambda item: item.file_size)  # a tensor's stored bytes
    data[record.header_offset + 200] ^= 0xFF  # inside the record's data, past its local header
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"fails its CRC-32 check"):
        load_fairseq_checkpoint(str(damaged))


def test_api_refusals_of_the_third_probe(trained_dir):
    from janus_fast.generation import generate

    translator = Translator.from_pretrained(trained_dir)
    with pytest.raises(ValueError, match=r"sentence index 1 \(input line 2\) cannot be encoded") as refused:
        translator.translate(["Ein Hund.", "Ein \ud800 Hund."])
    # where it is, in the user's terms (before: pybind11's "Unable to cast Python instance ...")
    assert str(refused.value).endswith("(a lone surrogate U+D800 at character 4)")
    with pytest.raises(TypeError, match="src_lengths must be a torch.Tensor"):
        generate(translator.model, torch.tensor([[12, 73, 5]]), [3])
    with pytest.raises((TypeError, ValueError), match="first_line"):
        translator.translate(["Ein Hund."], first_line="a")


def test_out_of_memory_is_one_error_line(monkeypatch, capsys):
    from janus_fast import cli

    def exhausted(args):  # noqa: ANN001, ANN202
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(cli, "command_translate", exhausted)
    assert cli.main(["translate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("janus-fast: error: out of memory: lower --max-batch-tokens") and err.count("\n") == 1


def test_ar_training_validates_with_ar_greedy(corpus_dir, tmp_path):
    """An AR run's validation BLEU decodes AR greedy (no NAR counts passed to it: refused now)."""
    import json

    from conftest import tiny_train_config

    from janus_fast.training.train import train

    out = tmp_path / "ar"
    train(tiny_train_config(corpus_dir, str(out), objective="ar", max_updates=None, epochs=1, valid_bleu=True))
    with open(out / "metrics.jsonl", encoding="utf-8") as handle:
        valid = [record for record in map(json.loads, handle) if record["type"] == "valid"]
    assert valid and valid[-1]["bleu_mode"] == "ar" and valid[-1]["bleu"] >= 0.0


def test_fifth_probe_cases(trained_dir, corpus_dir, tmp_path):
    """A length bonus whose product with a length overflows float64 ranks as a huge finite one
    (longest wins) rather than tying every candidate; a changed --vocab-size is refused on resume;
    meta tensors are a ValueError."""
    from conftest import tiny_train_config

    from janus_fast.generation import generate
    from janus_fast.training.train import train

    translator = Translator.from_pretrained()  # the shipped model: its candidates differ in score
    sentences = ["Ein Mann schläft in einem grünen Raum auf einem Sofa."]
    for decoder in ("engine", "reference"):
        huge = translator.translate(sentences, mode="nar", length_bonus=1e30, decoder=decoder)
        assert translator.translate(sentences, mode="nar", length_bonus=1e308, decoder=decoder) == huge
    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, max_updates=2))
    with pytest.raises(ValueError, match=r"--vocab-size 300 -> 400"):
        train(tiny_train_config(corpus_dir, out, max_updates=4, vocab_size=400))
    with pytest.raises(ValueError, match="meta device"):
        generate(translator.model, torch.zeros(1, 3, dtype=torch.long, device="meta"), torch.tensor([3]))


def test_outputs_inside_the_model_folder_are_refused(trained_dir, tmp_path):
    """translate -o / evaluate --output / distill --output naming a file of the checkpoint they read
    would destroy it: refused, the checkpoint untouched."""
    from test_cli import run_cli

    model = tmp_path / "model"
    shutil.copytree(trained_dir, model)
    source = tmp_path / "in.de"
    source.write_text("ein hund\n")
    before = {name: (model / name).read_bytes() for name in os.listdir(model)}
    for command in (
        ("translate", "-i", str(source), "-o", str(model / "model.safetensors")),
        ("translate", "-i", str(source), "-o", str(model / "new.txt")),
        ("evaluate", "--src", str(source), "--ref", str(source), "--output", str(model / "spm.model")),
        ("distill", "--src", str(source), "--output", str(model / "config.json")),
    ):
        result = run_cli(*command, "--model", str(model))
        assert result.returncode == 2 and b"which this command reads" in result.stderr, result.stderr
    assert {name: (model / name).read_bytes() for name in os.listdir(model)} == before


def test_export_refuses_a_dtype_the_weights_do_not_fit(trained_dir, tmp_path):
    """A weight past float16's range would be stored as inf and the copy would not load: refused."""
    model = load_pretrained(trained_dir)
    with torch.no_grad():
        model.embed_tokens.weight[5, 0] = 1e6
    with pytest.raises(CheckpointError, match=r"embed_tokens.weight does not fit torch.float16 .*1e\+06"):
        save_pretrained(model, str(tmp_path / "half"), dtype=torch.float16)
    save_pretrained(model, str(tmp_path / "bf16"), dtype=torch.bfloat16)
    assert load_pretrained(str(tmp_path / "bf16")) is not None


def test_out_of_memory_advice_is_the_commands_own(monkeypatch, capsys):
    from janus_fast import cli

    def exhausted(args):  # noqa: ANN001, ANN202
        raise MemoryError

    for command, handler, advice in (
        (["train", "--data-dir", "d"], "command_train", "lower --max-tokens"),
        (["bench", "--shape", "base"], "command_bench", "smaller --shape"),
    ):
        monkeypatch.setattr(cli, handler, exhausted)
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("janus-fast: error: out of memory: ") and advice in err and "--beam" not in err, err


def test_gzip_input_is_read_by_its_magic_bytes_whatever_its_name(tmp_path):
    """A gzip file named .GZ, or with no .gz at all, is decompressed (not read as raw bytes and
    "translated"); standard input too; an output named .GZ is written compressed."""
    import gzip
    import subprocess
    import sys

    from test_cli import REPO_ROOT

    from janus_fast.data import read_lines

    text = "Ein Hund.\nZwei Katzen spielen.\n"
    for name in ("in.de.GZ", "in.txt"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(text.encode()))
        assert read_lines(str(path)) == ["Ein Hund.", "Zwei Katzen spielen."]
    empty = tmp_path / "empty.gz"
    empty.write_bytes(b"")
    with pytest.raises(Exception, match="empty.gz: named .gz but not gzip data"):  # not an empty corpus
        read_lines(str(empty))
    # a pipe that delivers gzip's first byte alone still reads as gzip
    piped = f"(printf '\\037'; sleep 1; tail -c +2 {tmp_path / 'in.txt'}) | {sys.executable} -c " + (
        "\"import sys; from janus_fast.data import stream_lines; print(list(stream_lines(sys.stdin.buffer, 'in')))\""
    )
    result = subprocess.run(piped, shell=True, capture_output=True, cwd=REPO_ROOT, timeout=300)
    assert result.stdout.decode().strip() == "['Ein Hund.', 'Zwei Katzen spielen.']", result
    plain = tmp_path / "plain.gz"
    plain.write_text(text)
    with pytest.raises(Exception, match="plain.gz"):  # named .gz but not gzip: an error, as before
        read_lines(str(plain))
    output = tmp_path / "out.en.GZ"
    command = f"{sys.executable} -m janus_fast.cli translate --mode ar --no-progress -o {output}"
    result = subprocess.run(command, shell=True, input=gzip.compress(text.encode()), capture_output=True,
                            cwd=REPO_ROOT, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    lines = gzip.decompress(output.read_bytes()).decode().splitlines()
    assert len(lines) == 2 and all(lines) and "invalid UTF-8" not in result.stderr.decode()


def test_token_ids_are_ascii_digits_only():
    from janus_fast.cli import parse_token_ids
    from janus_fast.data import InputError

    assert parse_token_ids(" 50  6\t7 ", 1) == [50, 6, 7]
    for line, message in (("5_0 6", "'5_0'"), ("\u0663\u0664 7", "expects space-separated integers"),
                          ("+5", r"'\+5'"), ("-5", ">= 0")):  # fmt: skip
        with pytest.raises(InputError, match=message):
            parse_token_ids(line, 3)


def test_a_second_training_run_on_one_folder_is_refused(corpus_dir, tmp_path):
    """While a run holds OUT/.lock, another run on OUT is refused before it reads or writes
    anything; the lock of a run that ended (or died: flock) does not block."""
    from filelock import FileLock
    from test_cli import run_cli
    from test_error_lines import TRAIN_OPTIONS, error_line

    out = tmp_path / "run"
    out.mkdir()
    holder = FileLock(str(out / ".lock"))
    with holder:
        result = run_cli("train", "--data-dir", corpus_dir, "--output-dir", str(out), *TRAIN_OPTIONS)
        assert result.returncode == 2
        error_line(result, "--output-dir", "another training run is using this folder")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    result = run_cli("train", "--data-dir", corpus_dir, "--output-dir", str(out), *TRAIN_OPTIONS, "--vocab-size", "300")
    assert result.returncode == 0, result.stderr.decode()


def test_translate_ids_takes_lists_and_numpy_arrays_not_one_shot_iterables():
    """A generator of sources, or sources given as iterators, would be used up by the checks and
    come back empty: refused (TypeError); NumPy arrays and NumPy integers are token ids."""
    import numpy as np

    translator = Translator.from_pretrained()
    sources = [translator.tokenizer.encode("Ein Mann fährt Fahrrad."), translator.tokenizer.encode("Ein Hund.")]
    expected = translator.translate_ids(sources).tokens
    assert all(expected)
    assert translator.translate_ids([np.array(s) for s in sources]).tokens == expected
    assert translator.translate_ids([[np.int64(i) for i in s] for s in sources]).tokens == expected
    bad_sources = ((s for s in sources), [iter(s) for s in sources], ["abc"], [[1.5, 20]], [bytearray(b"ab")])
    for bad in (*bad_sources, [torch.tensor(5)], [memoryview(b"ab")]):
        with pytest.raises(TypeError):
            translator.translate_ids(bad)


def test_scores_of_janus_decoding_have_no_positional_lines_whatever_the_chunks(tmp_path):
    from test_cli import run_cli

    source = tmp_path / "blank.de"
    source.write_text("Ein Mann.\n\n  \nZwei Hunde.\n", encoding="utf-8")
    for extra in ([], ["--chunk-size", "1"]):
        output = tmp_path / "scores.txt"
        result = run_cli("translate", "--print-scores", "-i", str(source), "-o", str(output), *extra)
        assert result.returncode == 0, result.stderr.decode()
        lines = output.read_text(encoding="utf-8").splitlines()
        assert [line.split("\t")[0] for line in lines] == ["H-0", "H-1", "H-2", "H-3"], lines
    result = run_cli("translate", "--print-scores", stdin=b"\n\n")
    assert result.returncode == 0 and b"P-" not in result.stdout, result.stdout
    # scored lines under compat fairseq show the masks fairseq's stop left, as plain output does
    result = run_cli("translate", "--print-scores", "--compat", "fairseq", "--mode", "nar", stdin=b"Ein Mann.\n")
    assert result.returncode == 0 and b"<mask>" in result.stdout and b"<mask>" in result.stderr, result


def test_masks_left_by_fairseqs_adaptive_stop_are_shown_not_dropped():
    """compat fairseq NAR on a model that masks with its own <mask> (not <unk>, as a fairseq CMLM):
    positions fairseq's stop leaves masked print as <mask>, with a warning, not as missing words."""
    translator = Translator.from_pretrained()
    sources = ["Ein Mann.", "Zwei Hunde spielen im Schnee."]
    ids = translator.translate_ids([translator.tokenizer.encode(s) for s in sources], mode="nar", compat="fairseq")
    masked = [MASK_ID in tokens for tokens in ids.tokens]
    with pytest.warns(UserWarning, match=f"{sum(masked)} translation"):
        texts = translator.translate(sources, mode="nar", compat="fairseq")
    for tokens, text in zip(ids.tokens, texts):
        assert text.count("<mask>") == tokens.count(MASK_ID)
    assert any(masked), "the shipped model no longer stops with masks left: pick other sentences"


def test_a_training_run_folder_given_as_model_names_its_checkpoints(trained_dir):
    from janus_fast.checkpoint import read_config

    run_folder = os.path.dirname(trained_dir)
    expected = r"is a training run's folder, not a checkpoint: use .*last \(the latest save\)"
    with pytest.raises(CheckpointError, match=expected):
        read_config(run_folder)


def test_average_refuses_a_checkpoint_twice_and_warns_about_different_runs(trained_dir, tmp_path):
    from janus_fast.checkpoint import TRAINING_RUN, average_checkpoints

    with pytest.raises(CheckpointError, match="the same weights as"):
        average_checkpoints([trained_dir, os.path.join(trained_dir, ".")])
    copy = tmp_path / "copy"
    shutil.copytree(trained_dir, copy)  # a byte copy: the same weights
    with pytest.raises(CheckpointError, match="the same weights as"):
        average_checkpoints([trained_dir, str(copy)])
    from test_cli import run_cli

    export = tmp_path / "export"
    result = run_cli("export", "--model", trained_dir, "--output", str(export), "--dtype", "bf16")
    assert result.returncode == 0, result.stderr.decode()
    import json as json_module

    exported = json_module.loads((export / "config.json").read_text())
    original = json_module.loads((Path(trained_dir) / "config.json").read_text())
    assert exported[TRAINING_RUN] == original[TRAINING_RUN]  # an export keeps its run
    with pytest.raises(CheckpointError, match="the same weights as"):  # and counts as the checkpoint it copies
        average_checkpoints([trained_dir, str(export)])
    # another run's save (other weights, another run id): averaged, with a warning
    from janus_fast.checkpoint import load_pretrained, load_tokenizer, save_pretrained, save_tokenizer

    other_run = str(tmp_path / "other_run")
    model = load_pretrained(trained_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    save_pretrained(model, other_run, training_run="another-run")
    save_tokenizer(load_tokenizer(trained_dir), other_run)
    with pytest.warns(UserWarning, match="2 different training runs"):
        average_checkpoints([trained_dir, other_run])


def test_convert_refuses_a_sentencepiece_model_the_dictionary_was_not_built_with(tmp_path):
    """The shipped model's SentencePiece with the fixtures' word dictionary: 396 of 2,648 symbols
    are its pieces, so nearly every word would become <unk> (translations of nothing, exit 0)."""
    from test_cli import run_cli

    spm_model = os.path.join(PRETRAINED_DIR, "spm.model")
    fairseq = ["--fairseq", os.path.join(FAIRSEQ_DATA, "trained.pt"), "--dict", os.path.join(FAIRSEQ_DATA, "dict.txt")]
    result = run_cli("convert", *fairseq, "--bpe", "sentencepiece", spm_model, "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and b"not the model the dictionary was built with" in result.stderr, result.stderr
    assert not os.path.exists(tmp_path / "out")


def test_a_dictionary_of_a_sentencepiece_models_pieces_is_accepted():
    import sentencepiece as spm

    from janus_fast.fairseq.dictionary import SPECIAL_SYMBOLS, check_sentencepiece_matches

    with open(os.path.join(PRETRAINED_DIR, "spm.model"), "rb") as handle:
        data = handle.read()
    processor = spm.SentencePieceProcessor(model_proto=data)
    pieces = [processor.id_to_piece(i) for i in range(10, 606)]  # past the control symbols
    check_sentencepiece_matches([*SPECIAL_SYMBOLS, *pieces, "madeupword0000", "<mask>"], data)  # no error
    with pytest.raises(ValueError, match="only 296 of the dictionary's 796 symbols"):
        check_sentencepiece_matches([*SPECIAL_SYMBOLS, *pieces[:296], *(f"w{i}" for i in range(500))], data)
