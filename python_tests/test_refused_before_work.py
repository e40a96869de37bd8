"""Options no run can use are refused before any work, naming the option (issue 34, probe 11):
model sizes past their bounds or past the machine's memory, loss weights and learning rates that
are not finite non-negative numbers, a relaxed margin without relaxed verification, AR length
limits that allow no word, validation iterations the model cannot run, thread counts; and a
training run that diverges stops naming the update, before the broken update is applied."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from test_cli import run_cli
from test_error_lines import TRAIN_OPTIONS, error_line

from janus_fast import memory
from janus_fast.decoding.options import DecodeOptions, SpeculativeOptions
from janus_fast.model import MAX_SIZES, JanusConfig, JanusModel
from janus_fast.training.losses import LossWeights
from janus_fast.training.train import TrainConfig, train_config


@pytest.mark.parametrize("name", sorted(MAX_SIZES))
def test_size_fields_have_upper_bounds(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be <= {MAX_SIZES[name]}"):
        JanusConfig(**{name: MAX_SIZES[name] + 1})


def test_parameter_count_is_the_models() -> None:
    for config in (
        JanusConfig(vocab_size=300, d_model=32, num_heads=2, ffn_dim=64, encoder_layers=1, decoder_layers=2),
        JanusConfig(),
    ):
        assert config.parameter_count() == JanusModel(config).num_parameters


def test_a_model_larger_than_the_available_memory_is_refused_before_allocating(monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10 * 2**20)  # 10 MiB left
    with pytest.raises(ValueError, match=r"needs about .* GB of memory .* choose a smaller shape"):
        JanusModel(JanusConfig())  # 7.7M parameters: 31 MB
    JanusModel(JanusConfig(vocab_size=300, d_model=32, num_heads=2, ffn_dim=64, encoder_layers=1, decoder_layers=1))


@pytest.mark.parametrize(
    ("weights", "option"),
    [
        ({"length": -1e6}, "--weights-length"),
        ({"kl_ar_nar": math.nan}, "--weights-kl-ar-nar"),
        ({"ce_nar_aux": math.inf}, "--weights-ce-nar-aux"),
        ({"label_smoothing": 5.0}, "--weights-label-smoothing"),
        ({"label_smoothing": -1.0}, "--weights-label-smoothing"),
        ({"label_smoothing": 1.0}, "--weights-label-smoothing"),
    ],
)
def test_loss_weights_must_be_usable(weights: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        LossWeights(**weights)


@pytest.mark.parametrize(
    ("values", "option"),
    [
        ({"lr": math.inf}, "--lr"),
        ({"lr": 1e38}, "--lr"),
        ({"lr": math.nan}, "--lr"),
        ({"clip_norm": math.inf}, "--clip-norm"),
        ({"weight_decay": math.inf}, "--weight-decay"),
        ({"threads": 2000}, "--threads"),
        ({"valid_iterations": 100000}, "--valid-iterations"),
    ],
)
def test_train_options_are_checked_before_any_work(values: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        train_config(data_dir="data", output_dir="out", **values)
    assert isinstance(train_config(data_dir="data", output_dir="out", valid_iterations=128), TrainConfig)


def test_a_relaxed_margin_without_relaxed_verification_is_refused() -> None:
    with pytest.raises(ValueError, match="relaxed_margin 5.0 applies to the relaxed verification of mode='spec' only"):
        SpeculativeOptions(relaxed_margin=5.0)
    assert SpeculativeOptions(relaxed_margin=5.0, relaxed_top_k=2).relaxed_margin == 5.0
    result = run_cli("translate", "--mode", "spec", "--relaxed-margin", "5", stdin=b"Zwei Hunde.\n")
    assert result.returncode == 2 and "--relaxed-margin" in error_line(result)


def test_an_ar_length_limit_allowing_no_word_is_refused() -> None:
    config = JanusConfig()
    for a, b in ((0.0, 0), (0.0, 1), (0.0001, 0)):  # the limit counts eos; 0.0001 x 128 positions + 0 < 2
        with pytest.raises(ValueError, match="allows no word"):
            DecodeOptions(mode="ar", max_len_a=a, max_len_b=b).resolve(config)
    assert DecodeOptions(mode="ar", max_len_a=0.02, max_len_b=0).resolve(config).max_len_a == 0.02


def test_a_model_of_few_positions_decodes_with_the_default_options() -> None:
    """The counts a mode does not use are not checked against the model, and a count left to its
    default is capped to what the model allows: 8 target positions are fewer than the default 10
    iterations, which AR does not run and NAR runs as 8; 10 asked for is refused."""
    config = JanusConfig(max_target_positions=8)
    assert DecodeOptions(mode="ar").resolve(config).beam == 1
    resolved = DecodeOptions(mode="nar").resolve(config)
    assert (resolved.iterations, resolved.length_beam) == (8, 3)
    assert DecodeOptions(mode="nar", compat="fairseq").resolve(config).iterations == 8
    with pytest.raises(ValueError, match="iterations"):
        DecodeOptions(mode="nar", iterations=10).resolve(config)
    assert DecodeOptions(mode="ar", max_len_a=0.0, max_len_b=2).resolve(config).max_len_b == 2
    fairseq = DecodeOptions(mode="ar", compat="fairseq", beam=1, max_len_a=0.0, max_len_b=1)
    assert fairseq.resolve(JanusConfig(ar_stream="content")).max_len_b == 1  # fairseq's limit leaves eos out


def test_train_refuses_bad_weights_on_the_command_line(corpus_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "train", "--data-dir", corpus_dir, "--output-dir", str(out), *TRAIN_OPTIONS, "--weights-length=-1e6"
    )
    assert result.returncode == 2 and "--weights-length" in error_line(result)
    assert not out.exists() or not any(out.iterdir())  # nothing written


@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_update(corpus_dir: str, tmp_path: Path) -> None:
    """A loss weight of 1e38 makes the gradient overflow float32: the run stops at that update with
    one line naming it and what to change, the broken update not applied (no checkpoint of NaN
    weights)."""
    out = tmp_path / "run"
    options = [*TRAIN_OPTIONS, "--max-updates", "6", "--vocab-size", "300", "--weights-length", "1e38"]
    result = run_cli("train", "--data-dir", corpus_dir, "--output-dir", str(out), *options)
    assert result.returncode == 2
    assert "training diverged at update 1" in error_line(result, "--lr", "--weights-*")
    assert not (out / "last").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_whose_text_encodes_to_nothing_is_refused(corpus_dir: str, tmp_path: Path, split: str) -> None:
    """Zero-width spaces pass a blank-line check but encode to no piece: a training split of them
    would train on 0 pairs (exit 0, random weights saved), a validation split would score a loss
    of 0.0 over 0 tokens (epoch 1 best forever). Refused, naming the split; the tokenizer this
    start made is not left behind for the rerun."""
    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    lines = (data / f"{split}.en").read_text(encoding="utf-8").count("\n")
    (data / f"{split}.en").write_text("\u200b\n" * lines, encoding="utf-8")
    out = tmp_path / "run"
    options = [*TRAIN_OPTIONS, "--vocab-size", "300"]
    result = run_cli("train", "--data-dir", str(data), "--output-dir", str(out), *options)
    assert result.returncode == 2
    named = {"train": "the training split", "val": "the validation split"}[split]
    error_line(result, named, "encode to at least one piece")
    assert not (out / "spm.model").exists() and not (out / "last").exists()


def test_a_training_text_of_no_learnable_character_is_named_as_such(corpus_dir: str, tmp_path: Path) -> None:
    """Both sides of every training pair only zero-width and blank characters: SentencePiece refused
    with its internal check (all_chars_count > 0) and the message sent the user to --vocab-size."""
    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    for language in ("de", "en"):
        lines = (data / f"train.{language}").read_text(encoding="utf-8").count("\n")
        (data / f"train.{language}").write_text("\u200b\ufeff \u200b\n" * lines, encoding="utf-8")
    out = tmp_path / "run"
    result = run_cli("train", "--data-dir", str(data), "--output-dir", str(out), *TRAIN_OPTIONS, "--vocab-size", "300")
    assert result.returncode == 2
    error_line(result, "no character the tokenizer can learn from", "check the train split")
    assert "--vocab-size" not in result.stderr.decode()
    assert not (out / "spm.model").exists() and not (out / "last").exists()
