"""Shared fixtures: tiny models and a small slice of Multi30k (nothing heavy)."""

from __future__ import annotations

import gzip
import inspect
import os

# The Triton kernels are tested on the CPU through Triton's interpreter; it must be chosen before
# triton is imported anywhere.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from janus_fast.decoding import engine
from janus_fast.decoding.hypotheses import Hypotheses
from janus_fast.decoding.options import DecodeOptions
from janus_fast.decoding.passes import PassChoice
from janus_fast.model import JanusConfig, JanusModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _interpreter_index_fix() -> None:
    """Make older Triton interpreters run the kernels' loops under numpy >= 2.4.

    The interpreter holds a scalar kernel argument as a one-element array, and Triton 3.6's (the
    GPU image's; torch 2.11 installs it) turns it into a loop bound with ``int(array)``, which numpy
    2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars": every kernel's
    ``range(0, num_keys, BLOCK_N)`` failed). Later interpreters squeeze the array first; this does
    the same where the installed one does not. Only the interpreter is touched: compiled kernels
    never take this path."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        from triton.runtime import interpreter
    except ImportError:  # no triton: the kernel tests skip themselves
        return
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or "squeeze" in inspect.getsource(patch):
        return

    def patch_with_squeezed_index(tensor, scope) -> None:  # noqa: ANN001
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_with_squeezed_index


_interpreter_index_fix()


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    """Tests marked ``gpu`` run only through scripts/gpu_check.sh (which sets JANUS_FAST_GPU_TESTS=1;
    its --dry-run runs them on the CPU, and a test of the default suite runs that dry run)."""
    if os.environ.get("JANUS_FAST_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="GPU test: run by scripts/gpu_check.sh (JANUS_FAST_GPU_TESTS=1)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# a slice of Multi30k committed with the tests (JANUS_FAST_DATA may name a full copy instead)
MULTI30K = os.environ.get("JANUS_FAST_DATA", os.path.join(REPO_ROOT, "python_tests", "data", "multi30k-mini"))


def tiny_config(**overrides) -> JanusConfig:
    values = dict(
        vocab_size=60,
        d_model=32,
        num_heads=4,
        ffn_dim=64,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
        max_source_positions=64,
        max_target_positions=64,
    )
    values.update(overrides)
    return JanusConfig(**values)


def random_model(seed: int = 0, **overrides) -> JanusModel:
    """A random model with large enough weights that its outputs are not degenerate."""
    torch.manual_seed(seed)
    model = JanusModel(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
        model.length_embed.weight.normal_(0.0, 1.0)
    return model


def engine_decode(model: JanusModel, src_tokens: torch.Tensor, src_lengths: torch.Tensor, **options) -> Hypotheses:
    """``janus_fast.decoding.engine.decode`` with its options as keywords of ``DecodeOptions``
    (e.g. ``mode="nar", iterations=4``), resolved for ``model``, over the passes chosen for their
    precision (default fp32); ``stats=`` a ``SpeculativeStats`` to fill. NAR ranks with the model's
    length bonus (0 in ``random_model``'s config) unless ``length_bonus`` is given."""
    stats = options.pop("stats", None)
    resolved = DecodeOptions(**options).resolve(model.config)
    return engine.decode(PassChoice(model, resolved.precision), src_tokens, src_lengths, resolved, stats)


def random_sources(
    seed: int, batch: int = 6, vocab: int = 60, min_length: int = 1, max_length: int = 11
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random sources of ``min_length`` to ``max_length`` tokens (ids 5 to ``vocab`` - 1),
    padded with 0 to the longest, and their lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (batch,), generator=generator)
    src = torch.randint(5, vocab, (batch, int(lengths.max())), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        src[row, length:] = 0
    return src, lengths


@pytest.fixture
def model() -> JanusModel:
    return random_model()


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
    """A Multi30k-shaped corpus: the first 400 training and 40 validation pairs, de/en."""
    if not os.path.isdir(MULTI30K):
        pytest.fail(f"Multi30k not found at {MULTI30K}; set JANUS_FAST_DATA")
    out = tmp_path_factory.mktemp("corpus")
    for split, count in (("train", 400), ("val", 40)):
        for language in ("de", "en"):
            with gzip.open(os.path.join(MULTI30K, f"{split}.{language}.gz"), "rt", encoding="utf-8") as handle:
                lines = [next(handle) for _ in range(count)]
            (out / f"{split}.{language}").write_text("".join(lines), encoding="utf-8")
    return str(out)


def tiny_train_config(corpus_dir: str, output_dir: str, **overrides):
    from janus_fast.training.train import train_config

    values = dict(
        output_dir=output_dir,
        data_dir=corpus_dir,
        vocab_size=300,
        d_model=32,
        num_heads=4,
        ffn_dim=64,
        encoder_layers=1,
        decoder_layers=1,
        dropout=0.1,
        max_tokens=600,
        epochs=1,
        max_updates=6,
        save_every=3,
        log_every=1,
        warmup_updates=10,
        lr=1e-3,
        valid_bleu=False,
        progress=False,
        precision="fp32",
        threads=1,
    )
    values.update(overrides)
    return train_config(**values)


@pytest.fixture(scope="session")
def trained_dir(corpus_dir, tmp_path_factory) -> str:
    """A tiny model trained for a few updates: a real checkpoint directory for CLI tests."""
    from janus_fast.training.train import train

    out = str(tmp_path_factory.mktemp("trained"))
    train(tiny_train_config(corpus_dir, out, max_updates=12, epochs=2, valid_bleu=True, valid_iterations=2))
    return os.path.join(out, "last")
