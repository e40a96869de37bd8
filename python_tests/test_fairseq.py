"""Converted fairseq CMLM checkpoints against fairseq-generate (0.12.2) itself.

The fixtures in ``data/fairseq`` were made by running fairseq (``scripts/fairseq_fixtures``, see
``data/fairseq/README.md``): two checkpoints and fairseq-generate's H- (score in base 2 and
hypothesis) and P- (positional scores) lines for several ``--iter-decode-max-iter``,
``--iter-decode-with-beam``, adaptive and forced. fairseq is not needed here.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import os
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from janus_fast.checkpoint import (
    FAIRSEQ_TOKENIZER_DIGEST,
    CheckpointError,
    load_pretrained,
    load_tokenizer,
    read_config,
)
from janus_fast.cli import main as cli_main
from janus_fast.data import pad_sequences
from janus_fast.decoding import fairseq as fairseq_decoding
from janus_fast.fairseq.checkpoint import load_fairseq_checkpoint
from janus_fast.fairseq.convert import convert_fairseq
from janus_fast.fairseq.dictionary import FairseqTokenizer, read_dictionary
from janus_fast.generation import generate
from janus_fast.model import JanusConfig, JanusModel
from janus_fast.native.decoder import NativeDecoder, unsupported_reason

DATA = os.path.join(os.path.dirname(__file__), "data", "fairseq")
GOLDEN = sorted(glob.glob(os.path.join(DATA, "generate_*.txt")))
SETTING = re.compile(r"generate_(\w+?)_iter(\d+)_beam(\d+)_(adaptive|force)\.txt$")


def read_golden(path: str) -> tuple[dict[int, tuple[float, str]], dict[int, list[float]]]:
    """fairseq-generate's H- lines (id -> (score base 2, hypothesis)) and P- lines (id -> scores)."""
    hypotheses, positional = {}, {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            key, rest = line.rstrip("\n").split("\t", 1)
            if key.startswith("H-"):
                score, text = rest.split("\t") if "\t" in rest else (rest, "")
                hypotheses[int(key[2:])] = (float(score), text)
            elif key.startswith("P-"):
                positional[int(key[2:])] = [float(v) for v in rest.split()]
    return hypotheses, positional


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, str]:
    """Each fixture checkpoint converted once: model name -> checkpoint directory."""
    out = {}
    for path in sorted(glob.glob(os.path.join(DATA, "*.pt"))):
        name = os.path.basename(path)[:-3]
        out[name] = str(tmp_path_factory.mktemp(name) / "model")
        convert_fairseq(path, os.path.join(DATA, "dict.txt"), out[name])
    return out


def source_batch(tokenizer: FairseqTokenizer, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` (default all) test sentences as translation_lev and janus_translation
    feed them: ``<bos> x <eos>``, right-padded here."""
    with open(os.path.join(DATA, "test.de"), encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle][:count]
    return pad_sequences([[0, *tokenizer.encode(line), 2] for line in lines], 1)


def transformer_sources(tokenizer: FairseqTokenizer, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` test sentences as fairseq's translation task feeds them: ``x </s>``."""
    with open(os.path.join(DATA, "test.de"), encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle][:count]
    return pad_sequences([[*tokenizer.encode(line), 2] for line in lines], 1)


def test_fixtures_present() -> None:
    names = {SETTING.search(path).group(1) for path in GOLDEN}
    assert {"trained", "prenorm", "janus"} <= names
    for golden in ("ar_janus_greedy", "ar_janus_beam5", "ar_transformer_greedy", "ar_transformer_beam5"):
        assert os.path.exists(os.path.join(DATA, f"{golden}.txt"))
    assert os.path.exists(os.path.join(DATA, "transformer.pt"))
    assert all(os.path.getsize(path) <= 2_000_000 for path in glob.glob(os.path.join(DATA, "*.pt")))


@pytest.mark.parametrize("native", [True, False], ids=["native_passes", "pytorch_passes"])
@pytest.mark.parametrize("path", GOLDEN, ids=os.path.basename)
def test_tokens_and_scores_match_fairseq_generate(path: str, native: bool, converted: dict[str, str]) -> None:
    name, iterations, beam, stop = SETTING.search(path).groups()
    model, tokenizer = load_pretrained(converted[name]), load_tokenizer(converted[name])
    if native and unsupported_reason(model) is not None:
        pytest.skip(unsupported_reason(model))
    hypotheses, positional = read_golden(path)
    src, lengths = source_batch(tokenizer, len(hypotheses))  # the JANUS plugin's files: the first 20

    found = fairseq_decoding.mask_predict(model, src, lengths, int(iterations), int(beam), stop == "force", native)
    api = generate(
        model,
        src,
        lengths,
        mode="nar",
        iterations=int(iterations),
        length_beam=int(beam),
        compat="fairseq",
        force_max_iter=stop == "force",
        decoder="engine" if native else "reference",
        return_scores=True,
    )
    for index, hypothesis in enumerate(found):
        score, text = hypotheses[index]
        assert tokenizer.symbols_of(hypothesis.tokens) == text, f"sentence {index}"
        assert hypothesis.score / math.log(2) == pytest.approx(score, abs=1e-4), f"sentence {index}"
        ours = [value / math.log(2) for value in hypothesis.positional_scores]
        assert ours == pytest.approx(positional[index], abs=2e-4), f"sentence {index}"
        assert tokenizer.symbols_of(api.tokens[index]) == text
        assert api.scores[index] == pytest.approx(hypothesis.score, abs=1e-6)


def test_fixtures_cover_adaptive_stops_unk_and_diverse_outputs() -> None:
    """The fixtures exercise what differs from the project's mask-predict: adaptive stops that
    change the output, ``<unk>`` (the mask) in outputs, and models with varied outputs."""
    adaptive, _ = read_golden(os.path.join(DATA, "generate_trained_iter4_beam3_adaptive.txt"))
    forced, _ = read_golden(os.path.join(DATA, "generate_trained_iter4_beam3_force.txt"))
    assert sum(adaptive[i][1] != forced[i][1] for i in adaptive) >= 10
    assert sum("<unk>" in text for _, text in adaptive.values()) >= 30
    for name in ("trained", "prenorm"):
        found, _ = read_golden(os.path.join(DATA, f"generate_{name}_iter4_beam3_adaptive.txt"))
        assert len({text for _, text in found.values()}) >= 0.9 * len(found)
        assert len({word for _, text in found.values() for word in text.split()}) >= 25


def test_batching_does_not_change_outputs(converted: dict[str, str]) -> None:
    model, tokenizer = load_pretrained(converted["trained"]), load_tokenizer(converted["trained"])
    src, lengths = source_batch(tokenizer)
    together = fairseq_decoding.mask_predict(model, src[:8], lengths[:8], 4, 3)
    for index in range(8):
        alone = fairseq_decoding.mask_predict(
            model, src[index : index + 1, : lengths[index]], lengths[index : index + 1], 4, 3
        )
        assert alone[0].tokens == together[index].tokens
        assert alone[0].score == pytest.approx(together[index].score, abs=1e-5)


def test_cli_translate_matches_fairseq_generate(converted: dict[str, str], tmp_path, capsys) -> None:
    """End to end: convert with the CLI, translate the text file with --compat fairseq."""
    model_dir = str(tmp_path / "model")
    assert (
        cli_main(
            [
                "convert",
                "--fairseq",
                os.path.join(DATA, "trained.pt"),
                "--dict",
                os.path.join(DATA, "dict.txt"),
                "--output",
                model_dir,
            ]
        )
        == 0
    )
    out = tmp_path / "out.txt"
    args = [
        "translate",
        "--model",
        model_dir,
        "--compat",
        "fairseq",
        "--mode",
        "nar",
        "--iterations",
        "9",
        "--length-beam",
        "5",
        "--force-max-iter",
        "-i",
        os.path.join(DATA, "test.de"),
        "-o",
        str(out),
        "--no-progress",
    ]
    assert cli_main(args) == 0
    hypotheses, _ = read_golden(os.path.join(DATA, "generate_trained_iter9_beam5_force.txt"))
    assert out.read_text(encoding="utf-8").splitlines() == [hypotheses[i][1] for i in range(len(hypotheses))]

    # the same through token ids
    tokenizer = load_tokenizer(model_dir)
    ids_in = tmp_path / "ids.txt"
    with open(os.path.join(DATA, "test.de"), encoding="utf-8") as handle:
        ids_in.write_text("".join(" ".join(map(str, tokenizer.encode(line))) + "\n" for line in handle))
    ids_out = tmp_path / "ids_out.txt"
    assert cli_main(args[:-5] + ["--token-ids", "-i", str(ids_in), "-o", str(ids_out), "--no-progress"]) == 0
    decoded = [tokenizer.symbols_of([int(i) for i in line.split()]) for line in ids_out.read_text().splitlines()]
    assert decoded == [hypotheses[i][1] for i in range(len(hypotheses))]


# ------------------------------------------------------- fairseq-generate's defaults and flag names
def golden_lines(golden: str) -> list[str]:
    """fairseq-generate's hypotheses in ``golden``, in sentence order."""
    hypotheses, _ = read_golden(os.path.join(DATA, golden))
    return [hypotheses[index][1] for index in range(len(hypotheses))]


def fixture_sentences(count: int | None = None) -> list[str]:
    """The first ``count`` (default all) fixture test sentences, as text."""
    with open(os.path.join(DATA, "test.de"), encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle][:count]


def test_compat_defaults_are_each_tools_own() -> None:
    """Options left None take their compat's defaults: this project's (iterations 10, length beam 3,
    beam 1, unchanged) or fairseq-generate 0.12.2's (``--iter-decode-max-iter 10``,
    ``--iter-decode-with-beam 1``, ``--beam 5``, its ``GenerationConfig``); a value given wins. The
    counts a mode does not use stay None (they resolve when the options are given with that mode)."""
    from janus_fast.decoding.options import DecodeOptions
    from janus_fast.model import JanusConfig

    def resolve_compat_defaults(compat, mode="nar", **given):  # noqa: ANN001, ANN003, ANN202
        options = DecodeOptions(mode=mode, compat=compat, **given)
        resolved = options.resolve(JanusConfig(vocab_size=32))
        return resolved.iterations, resolved.length_beam, resolved.beam

    assert resolve_compat_defaults("janus") == (10, 3, None)
    assert resolve_compat_defaults("janus", "ar") == (None, None, 1)
    assert resolve_compat_defaults("fairseq") == (10, 1, None)
    assert resolve_compat_defaults("fairseq", "ar") == (None, None, 5)
    assert resolve_compat_defaults("fairseq", iterations=4, length_beam=3) == (4, 3, None)
    assert resolve_compat_defaults("fairseq", iterations=0) == (0, 1, None)
    assert resolve_compat_defaults("fairseq", "ar", beam=2) == (None, None, 2)
    assert resolve_compat_defaults("janus", iterations=2) == (2, 3, None)
    with pytest.raises(ValueError, match="does not apply to mode='ar'"):  # a count the mode does not use
        resolve_compat_defaults("fairseq", "ar", iterations=4)
    with pytest.raises(ValueError, match="unknown compat"):
        resolve_compat_defaults("marian")


def test_fairseq_nar_takes_fairseq_generates_length_beam(converted: dict[str, str]) -> None:
    """Issue 34: ``compat="fairseq"`` given only the iterations decodes as fairseq-generate given
    only ``--iter-decode-max-iter``, whose ``--iter-decode-with-beam`` defaults to 1 (this project's
    length beam 3 was used: other outputs). An explicit length beam still wins. Through
    ``Translator.translate`` / ``translate_ids`` and ``generate``."""
    from janus_fast.translator import Translator

    translator = Translator.from_pretrained(converted["trained"])
    lines = fixture_sentences()
    expected = golden_lines("generate_trained_iter2_beam1_adaptive.txt")
    found = translator.translate(lines, mode="nar", iterations=2, compat="fairseq")
    assert found == expected
    assert translator.translate(lines, mode="nar", iterations=2, length_beam=1, compat="fairseq") == expected
    three = translator.translate(lines, mode="nar", iterations=2, length_beam=3, compat="fairseq")
    assert sum(a != b for a, b in zip(three, expected)) >= 10  # the length beam shows in the outputs
    explicit = translator.translate(lines, mode="nar", iterations=4, length_beam=3, compat="fairseq")
    assert explicit == golden_lines("generate_trained_iter4_beam3_adaptive.txt")

    tokenizer = translator.tokenizer
    sources = [tokenizer.encode(line) for line in lines]
    ids = translator.translate_ids(sources, mode="nar", iterations=2, compat="fairseq")
    assert [tokenizer.symbols_of(tokens) for tokens in ids.tokens] == expected
    src, lengths = source_batch(tokenizer)
    tokens = generate(translator.model, src, lengths, mode="nar", iterations=2, compat="fairseq")
    assert [tokenizer.symbols_of(sentence) for sentence in tokens] == expected


def test_fairseq_defaults_reach_every_setting(converted: dict[str, str]) -> None:
    """The other defaults under ``compat="fairseq"``: iterations unset is fairseq-generate's
    ``--iter-decode-max-iter 10`` (the paper's setting on the JANUS plugin's model, forced), and AR
    unset is its ``--beam 5``; ``beam=1`` asked for is greedy."""
    model, tokenizer = load_pretrained(converted["janus"]), load_tokenizer(converted["janus"])
    expected = golden_lines("generate_janus_iter10_beam3_force.txt")
    src, lengths = source_batch(tokenizer, len(expected))
    found = generate(model, src, lengths, mode="nar", length_beam=3, compat="fairseq", force_max_iter=True)
    assert [tokenizer.symbols_of(tokens) for tokens in found] == expected
    beam5 = generate(model, src, lengths, mode="ar", compat="fairseq")
    assert [tokenizer.symbols_of(tokens) for tokens in beam5] == golden_lines("ar_janus_beam5.txt")
    greedy = generate(model, src, lengths, mode="ar", beam=1, compat="fairseq")
    assert [tokenizer.symbols_of(tokens) for tokens in greedy] == golden_lines("ar_janus_greedy.txt")

    from janus_fast.translator import Translator

    translator = Translator.from_pretrained(converted["transformer"])
    expected = golden_lines("ar_transformer_beam5.txt")
    assert translator.translate(fixture_sentences(len(expected)), mode="ar", compat="fairseq") == expected


@pytest.mark.parametrize(
    "flags, golden",
    [
        (["--iterations", "2"], "generate_trained_iter2_beam1_adaptive.txt"),
        (["--iter-decode-max-iter", "2"], "generate_trained_iter2_beam1_adaptive.txt"),
        (["--iterations", "4", "--length-beam", "3"], "generate_trained_iter4_beam3_adaptive.txt"),
        (["--iter-decode-max-iter", "4", "--iter-decode-with-beam", "3"], "generate_trained_iter4_beam3_adaptive.txt"),
        (
            ["--iter-decode-max-iter", "9", "--iter-decode-with-beam", "5", "--iter-decode-force-max-iter"],
            "generate_trained_iter9_beam5_force.txt",
        ),
    ],
    ids=["iterations", "iter-decode-max-iter", "explicit-length-beam-3", "fairseq-names", "fairseq-names-forced"],
)
def test_cli_compat_fairseq_takes_fairseq_generates_defaults_and_flags(
    flags: list[str], golden: str, converted: dict[str, str], tmp_path
) -> None:
    """``translate --compat fairseq --mode nar`` with fairseq-generate's flags, or this project's,
    and the length beam left unset: fairseq-generate's output for the same flags, line for line
    (issue 34: 0 of 60 equal with the length beam 3 of this project)."""
    out = tmp_path / "out.txt"
    args = ["translate", "--model", converted["trained"], "--compat", "fairseq", "--mode", "nar", *flags]
    assert cli_main(args + ["-i", os.path.join(DATA, "test.de"), "-o", str(out), "--no-progress"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == golden_lines(golden)


def test_cli_fairseq_flag_names_are_aliases() -> None:
    """fairseq's ``--iter-decode-max-iter``, ``--iter-decode-with-beam`` and
    ``--iter-decode-force-max-iter`` parse as ``--iterations``, ``--length-beam`` and
    ``--force-max-iter`` (translate, evaluate, distill); unset options resolve per compat, set ones
    stay as given."""
    from janus_fast.cli import _decode_options, build_parser
    from janus_fast.model import JanusConfig

    def _decode_kwargs(args):  # noqa: ANN001, ANN202
        return dataclasses.asdict(_decode_options(args).resolve(JanusConfig(vocab_size=32)))

    parser = build_parser()
    extra = {"translate": [], "evaluate": ["--src", "s", "--ref", "r"], "distill": ["--src", "s", "--output", "o"]}
    for command, required in extra.items():
        fairseq = ["--iter-decode-max-iter", "7", "--iter-decode-with-beam", "4", "--iter-decode-force-max-iter"]
        ours = ["--iterations", "7", "--length-beam", "4", "--force-max-iter"]
        common = [command, *required, "--compat", "fairseq", "--mode", "nar"]
        aliased, plain = parser.parse_args(common + fairseq), parser.parse_args(common + ours)
        assert vars(aliased) == vars(plain)
        assert (aliased.iterations, aliased.length_beam, aliased.force_max_iter) == (7, 4, True)
    kwargs = _decode_kwargs(parser.parse_args(["translate", "--compat", "fairseq", "--mode", "nar"]))
    assert (kwargs["iterations"], kwargs["length_beam"], kwargs["beam"], kwargs["force_max_iter"]) == (
        10,
        1,
        None,
        False,
    )
    kwargs = _decode_kwargs(parser.parse_args(["translate"]))
    assert (kwargs["mode"], kwargs["iterations"], kwargs["length_beam"], kwargs["beam"]) == ("ar", None, None, 1)
    explicit = ["translate", "--compat", "fairseq", "--mode", "nar", "--length-beam", "3"]
    assert _decode_kwargs(parser.parse_args(explicit))["length_beam"] == 3
    assert _decode_kwargs(parser.parse_args(["translate", "--compat", "fairseq", "--beam", "1"]))["beam"] == 1
    kwargs = _decode_kwargs(parser.parse_args(["distill", "--src", "s", "--output", "o", "--compat", "fairseq"]))
    assert (kwargs["mode"], kwargs["beam"]) == ("ar", 4)  # distill's own default beam stays
    kwargs = _decode_kwargs(parser.parse_args(["distill", "--src", "s", "--output", "o", "--mode", "nar"]))
    assert (kwargs["mode"], kwargs["beam"]) == ("nar", None)  # ... in mode ar only (NAR has no beam)


# --------------------------------------------------------------------------- restricted unpickler
class _OpensAFile:
    """Unpickling this calls ``open(path, "w")``: it would create the file if code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def test_restricted_unpickler_refuses_code(tmp_path) -> None:
    marker = tmp_path / "code-ran"
    checkpoint = load_fairseq_checkpoint(os.path.join(DATA, "trained.pt"))
    checkpoint["extra_state"] = {"payload": _OpensAFile(str(marker))}
    path = tmp_path / "evil.pt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="not allowed.*nothing was executed"):
        load_fairseq_checkpoint(str(path))
    with pytest.raises(CheckpointError):
        convert_fairseq(str(path), os.path.join(DATA, "dict.txt"), str(tmp_path / "out"))
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # the same with a raw pickle (not torch's zip format)
    import pickle

    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"model": {}, "payload": _OpensAFile(str(marker))}))
    with pytest.raises(CheckpointError), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on the pickle protocol
        load_fairseq_checkpoint(str(raw))
    assert not marker.exists()


def test_restricted_unpickler_reads_the_arguments_namespace() -> None:
    checkpoint = load_fairseq_checkpoint(os.path.join(DATA, "trained.pt"))
    assert isinstance(checkpoint["cfg"]["model"], argparse.Namespace)
    assert checkpoint["cfg"]["model"].arch == "cmlm_transformer"


# --------------------------------------------------------------------------- converter refusals
def _modified(tmp_path, **changes) -> str:
    checkpoint = load_fairseq_checkpoint(os.path.join(DATA, "trained.pt"))
    for name, value in changes.items():
        setattr(checkpoint["cfg"]["model"], name, value)
    path = str(tmp_path / "modified.pt")
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arch": "lstm"}, "architecture 'lstm' is not supported"),
        ({"arch": "transformer_lm"}, "architecture 'transformer_lm' is not supported"),
        ({"arch": "transformer"}, "a transformer trained with task 'translation_lev'"),
        ({"share_all_embeddings": False}, "separate source/target embeddings"),
        ({"encoder_normalize_before": True}, "encoder_normalize_before=True differs"),
        ({"activation_fn": "tanh"}, "activation_fn 'tanh'"),
        ({"layernorm_embedding": True}, "layer norm on the embeddings"),
        ({"dropout": None}, "argument dropout is None, expected a number"),
        ({"encoder_layers": None}, "argument encoder_layers is None, expected an integer"),
        ({"decoder_layers": 2.7}, "argument decoder_layers is 2.7, expected an integer"),
        ({"max_source_positions": "256"}, "argument max_source_positions is '256', expected an integer"),
        # named by the checkpoint's arguments, not by train's flags (before: --num-heads 3, --max-source-positions)
        (
            {"encoder_attention_heads": 3, "decoder_attention_heads": 3},
            "encoder_embed_dim 64 is not divisible by encoder_attention_heads 3",
        ),
        ({"encoder_attention_heads": 0, "decoder_attention_heads": 0}, "encoder_attention_heads is 0, expected >= 1"),
        ({"max_source_positions": 0}, "argument max_source_positions is 0, expected >= 1"),
        ({"dropout": 1.5}, "the arguments make no valid model: dropout"),
    ],
)
def test_converter_refuses_what_it_cannot_map(tmp_path, changes: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(message)):
        convert_fairseq(_modified(tmp_path, **changes), os.path.join(DATA, "dict.txt"), str(tmp_path / "out"))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
@pytest.mark.parametrize("name", ["decoder.layers.0.fc1.weight", "encoder.embed_positions.weight"])
def test_converter_refuses_weights_that_are_not_floating_point(tmp_path, dtype, name) -> None:
    checkpoint = load_fairseq_checkpoint(os.path.join(DATA, "trained.pt"))
    checkpoint["model"][name] = checkpoint["model"][name].to(dtype)
    torch.save(checkpoint, tmp_path / "typed.pt")
    with pytest.raises(CheckpointError, match=re.escape(f"weight {name} holds {dtype} values")):
        convert_fairseq(str(tmp_path / "typed.pt"), os.path.join(DATA, "dict.txt"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_converter_refuses_a_wrong_dictionary_and_extra_weights(tmp_path) -> None:
    short = tmp_path / "dict.txt"
    short.write_text("".join(f"w{i} 1\n" for i in range(10)))
    with pytest.raises(CheckpointError, match="not this model's dictionary"):
        convert_fairseq(os.path.join(DATA, "trained.pt"), str(short), str(tmp_path / "a"))
    checkpoint = load_fairseq_checkpoint(os.path.join(DATA, "trained.pt"))
    checkpoint["model"]["decoder.extra_head.weight"] = torch.zeros(2, 2)
    torch.save(checkpoint, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="decoder.extra_head.weight"):
        convert_fairseq(str(tmp_path / "extra.pt"), os.path.join(DATA, "dict.txt"), str(tmp_path / "b"))


def test_cli_convert_errors_are_one_line(tmp_path, capsys) -> None:
    code = cli_main(
        [
            "convert",
            "--fairseq",
            str(tmp_path / "missing.pt"),
            "--dict",
            os.path.join(DATA, "dict.txt"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "missing.pt: no such file" in capsys.readouterr().err
    # a folder that exists is said to be one (before: "no such file")
    for fairseq, dictionary, option in (
        (str(tmp_path), os.path.join(DATA, "dict.txt"), "--fairseq"),
        (os.path.join(DATA, "trained.pt"), str(tmp_path), "--dict"),
    ):
        arguments = ["convert", "--fairseq", fairseq, "--dict", dictionary, "--output", str(tmp_path / "out")]
        assert cli_main(arguments) == 2
        assert f"{option} {tmp_path}: a folder, not a file" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="a folder, not a file"):
        load_fairseq_checkpoint(str(tmp_path))
    # a device is said to be one (before: "no such file" for /dev/null)
    arguments = ["convert", "--fairseq", os.path.join(DATA, "trained.pt"), "--dict", os.devnull]
    assert cli_main([*arguments, "--output", str(tmp_path / "out")]) == 2
    assert f"--dict {os.devnull}: not a regular file" in capsys.readouterr().err


def test_converter_names_a_nan_in_shared_embeddings_as_non_finite(tmp_path) -> None:
    """The tied embeddings share storage, so a NaN stands in both; NaN != NaN made the sharing check
    fail with "embeddings not shared", which sent the user after --share-all-embeddings."""
    checkpoint = load_fairseq_checkpoint(os.path.join(DATA, "trained.pt"))
    checkpoint["model"]["encoder.embed_tokens.weight"][5, 3] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"embed_tokens.weight holds non-finite values \(nan or inf\)"):
        convert_fairseq(str(tmp_path / "nan.pt"), os.path.join(DATA, "dict.txt"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _crafted(tmp_path, edit) -> str:
    """The fixture's checkpoint with ``edit(checkpoint)`` applied, saved under ``tmp_path``."""
    checkpoint = load_fairseq_checkpoint(os.path.join(DATA, "trained.pt"))
    edit(checkpoint)
    path = str(tmp_path / "crafted.pt")
    torch.save(checkpoint, path)
    return path


def _set_weight(name: str, value):  # noqa: ANN202 - an edit for _crafted
    return lambda checkpoint: checkpoint["model"].__setitem__(name, value)


def _set_argument(name: str, value):  # noqa: ANN202 - an edit for _crafted
    return lambda checkpoint: setattr(checkpoint["cfg"]["model"], name, value)


K_PROJ = "encoder.layers.0.self_attn.k_proj.weight"


@pytest.mark.parametrize(
    "edit, message",
    [
        # each of these was a raw traceback (torch.cat's RuntimeError, AttributeError, IndexError, ...)
        (_set_weight(K_PROJ, torch.zeros(64, 32)), "k_proj.weight (64, 32) and encoder.layers.0.self_attn.v_proj"),
        (_set_weight("encoder.embed_tokens.weight", [1, 2, 3]), "weight encoder.embed_tokens.weight is a list"),
        (_set_weight("encoder.embed_tokens.weight", torch.tensor(1.0)), "has shape (), expected (vocabulary, d)"),
        (_set_weight("decoder.layers.0.fc1.bias", torch.zeros(4).to_sparse()), "is a torch.sparse_coo tensor"),
        (_set_weight(7, torch.zeros(2)), "a weight is named 7 (int)"),
        (_set_argument("encoder_embed_dim", torch.tensor([1, 1])), "argument encoder_embed_dim holds a Tensor"),
        (_set_argument("pad", torch.tensor([1, 1])), "argument pad holds a Tensor"),
        (_set_argument("activation_fn", ["relu"]), "argument activation_fn holds a list"),
        (_set_argument("decoder_learned_pos", torch.tensor([1, 1])), "holds a Tensor"),
    ],
)
def test_converter_refuses_crafted_contents_with_one_message(tmp_path, edit, message: str) -> None:
    path = _crafted(tmp_path, edit)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        convert_fairseq(path, os.path.join(DATA, "dict.txt"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_converter_refuses_expanded_views_before_allocating_them(tmp_path, dtype) -> None:
    """A weight saved as an expanded view stores one row for a tensor of any size: the conversion's
    torch.cat / .float() then allocated all of it (5.2 GB from a 1.8 MB file) before the shape check
    refused it. A small expansion stands for a large one here; the check is on the stored bytes."""
    huge = torch.zeros(1, 64, dtype=dtype).expand(4096, 64)
    with pytest.raises(CheckpointError, match=r"k_proj.weight \(4096, 64\) is a view that repeats its"):
        convert_fairseq(
            _crafted(tmp_path, _set_weight(K_PROJ, huge)), os.path.join(DATA, "dict.txt"), str(tmp_path / "o")
        )

    # a view that shares a storage without repeating elements (a transposed copy) converts as before
    def transposed(checkpoint: dict) -> None:
        weight = checkpoint["model"][K_PROJ]
        checkpoint["model"][K_PROJ] = weight.t().contiguous().t()

    model = convert_fairseq(_crafted(tmp_path, transposed), os.path.join(DATA, "dict.txt"), str(tmp_path / "ok"))
    original = load_fairseq_checkpoint(os.path.join(DATA, "trained.pt"))["model"][K_PROJ]
    assert torch.equal(model.encoder_layers[0].self_attn.kv_proj.weight[:64], original.float())


def test_converter_checks_shapes_before_building_a_model_the_arguments_inflate(tmp_path) -> None:
    """Arguments edited to a huge width with the real 64-wide weights: refused by the shape check
    (before: the whole model was built first, 1.9 GB at d 4096). Measured by the peak RSS of a
    fresh process, which a model of that size would raise by gigabytes."""
    import subprocess
    import sys

    def inflate(checkpoint: dict) -> None:
        for name in ("encoder_embed_dim", "decoder_embed_dim", "decoder_output_dim"):
            setattr(checkpoint["cfg"]["model"], name, 8192)

    path = _crafted(tmp_path, inflate)
    script = (
        "import resource, sys\n"
        "from janus_fast.checkpoint import CheckpointError\n"
        "from janus_fast.fairseq.convert import convert_fairseq\n"
        "try:\n"
        f"    convert_fairseq({path!r}, {os.path.join(DATA, 'dict.txt')!r}, {str(tmp_path / 'out')!r})\n"
        "except CheckpointError as error:\n"
        "    print('refused:', error)\n"
        "print('peak_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert "refused:" in result.stdout and "shape mismatches" in result.stdout, result.stdout + result.stderr
    peak = int(result.stdout.rsplit("peak_mb", 1)[1])
    assert peak < 1500, f"{peak} MB: the inflated model was allocated"  # a d-8192 model: > 5 GB
    assert not (tmp_path / "out").exists()


def test_converter_never_overwrites_and_leaves_nothing_when_a_write_fails(tmp_path, monkeypatch, capsys) -> None:
    """Before: the Python API wrote into an existing checkpoint folder (its weights lost, the folder
    unusable), and a failed write (a full disk) left a half checkpoint that blocked the rerun."""
    from janus_fast.fairseq import convert as convert_module

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="exists and is not an empty folder"):
        convert_fairseq(os.path.join(DATA, "trained.pt"), os.path.join(DATA, "dict.txt"), str(existing))
    assert os.listdir(existing) == ["config.json"]
    with pytest.raises(CheckpointError, match="name is empty"):
        convert_fairseq(os.path.join(DATA, "trained.pt"), os.path.join(DATA, "dict.txt"), "")

    for output, message in ((str(existing), "exists and is not an empty folder"), ("", "name is empty")):
        # the command line refuses the same outputs with the same reason, naming --output, before any work
        status = cli_main(["convert", "--fairseq", os.path.join(DATA, "trained.pt"), "--dict",
                           os.path.join(DATA, "dict.txt"), "--output", output])  # fmt: skip
        error = capsys.readouterr().err
        assert status == 2 and "--output: " in error and message in error, error
    assert os.listdir(existing) == ["config.json"]

    def full_disk(tokenizer, directory: str) -> None:  # noqa: ANN001
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_module, "save_tokenizer", full_disk)
    with pytest.raises(OSError, match="No space left"):
        convert_fairseq(os.path.join(DATA, "trained.pt"), os.path.join(DATA, "dict.txt"), str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["existing"]  # no half checkpoint, no staging folder
    monkeypatch.undo()
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_fairseq(os.path.join(DATA, "trained.pt"), os.path.join(DATA, "dict.txt"), str(empty))
    assert {"config.json", "model.safetensors", "dict.txt"} <= set(os.listdir(empty))


def test_converter_warns_of_a_byte_order_mark_in_the_dictionary(tmp_path) -> None:
    with open(os.path.join(DATA, "dict.txt"), encoding="utf-8") as handle:
        text = handle.read()
    marked = tmp_path / "dict.txt"
    marked.write_text("\ufeff" + text, encoding="utf-8")
    with pytest.warns(UserWarning, match="opens with a byte-order mark"):
        convert_fairseq(os.path.join(DATA, "trained.pt"), str(marked), str(tmp_path / "out"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_fairseq(os.path.join(DATA, "trained.pt"), os.path.join(DATA, "dict.txt"), str(tmp_path / "plain"))


# --------------------------------------------------------------------------- config and tokenizer
def test_old_configs_load_with_todays_defaults() -> None:
    old = {"vocab_size": 100, "d_model": 16, "num_heads": 2, "ffn_dim": 32}
    config = JanusConfig.from_dict(old)
    assert (config.normalize_before, config.final_norms, config.activation, config.scale_embedding) == (
        True,
        True,
        "gelu",
        True,
    )
    assert (config.source_bos, config.source_eos) == (False, False)


def test_config_allows_mask_equal_to_unk_only() -> None:
    JanusConfig(vocab_size=100, pad_id=1, unk_id=3, bos_id=0, eos_id=2, mask_id=3)
    with pytest.raises(ValueError, match="distinct"):
        JanusConfig(vocab_size=100, pad_id=1, unk_id=3, bos_id=0, eos_id=2, mask_id=1)
    with pytest.raises(ValueError, match="activation"):
        JanusConfig(activation="tanh")


def test_post_norm_models_decode_the_same_with_either_decoder() -> None:
    """Post-norm ReLU layers without final norms: the engine's passes (native here) == the reference."""
    torch.manual_seed(0)
    sizes = dict(d_model=16, num_heads=2, ffn_dim=32, encoder_layers=1, max_target_positions=32, num_length_classes=32)
    post_norm_relu = dict(normalize_before=False, final_norms=False, activation="relu")
    # dropout and max_source_positions: JanusConfig's defaults, not tiny_config's
    config = tiny_config(**sizes, **post_norm_relu, dropout=0.1, max_source_positions=128)
    model = JanusModel(config).eval()
    src, lengths = pad_sequences([[5, 6, 7, 8], [9, 10]], config.pad_id)
    engine = generate(model, src, lengths, mode="nar", iterations=3, decoder="engine", return_scores=True)
    reference = generate(model, src, lengths, mode="nar", iterations=3, decoder="reference", return_scores=True)
    assert engine.tokens == reference.tokens
    assert engine.scores == pytest.approx(reference.scores, abs=1e-5)  # the engine's vector log-sum-exp


def test_dictionary_tokenizer(tmp_path) -> None:
    symbols = read_dictionary(os.path.join(DATA, "dict.txt"))
    assert symbols[:5] == ["<s>", "<pad>", "</s>", "<unk>", "."]
    tokenizer = FairseqTokenizer(symbols)
    ids = tokenizer.encode("ein mann qqqunknown .")
    assert ids[2] == 3 and tokenizer.decode([0, *ids, 2, 1]) == "ein mann <unk> ."
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1\na 2\n")
    with pytest.raises(ValueError, match="duplicate symbol"):
        read_dictionary(str(bad))


def test_a_dictionary_with_overwritten_symbols_saves_as_it_was_read(tmp_path) -> None:
    """fairseq's ``#fairseq:overwrite`` appends a symbol again (the later id wins): saved and read
    back, the dictionary is the same (the flag kept), and encodes as fairseq would."""
    source = tmp_path / "dict.txt"
    source.write_text("a 5\nb 4\na 3 #fairseq:overwrite\n<unk> 1 #fairseq:overwrite\n")
    tokenizer = FairseqTokenizer.from_files(str(source))
    assert tokenizer.symbols == ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "a", "<unk>"]
    assert tokenizer.encode("a b") == [6, 5]
    saved = tmp_path / "saved"
    saved.mkdir()
    tokenizer.save(str(saved))
    again = FairseqTokenizer.load(str(saved))
    assert again.symbols == tokenizer.symbols and again.digest() == tokenizer.digest()


def test_sentencepiece_bpe_round_trip() -> None:
    """--bpe sentencepiece: text is cut into the model's pieces, output pieces are joined back."""
    spm_path = os.path.join(os.path.dirname(__file__), "..", "janus_fast", "pretrained", "multi30k-de-en", "spm.model")
    with open(spm_path, "rb") as handle:
        data = handle.read()
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=data)
    pieces = [processor.id_to_piece(i) for i in range(5, processor.get_piece_size())]
    tokenizer = FairseqTokenizer(["<s>", "<pad>", "</s>", "<unk>", *pieces], "sentencepiece", data)
    ids = tokenizer.encode("Zwei Hunde spielen im Schnee.")
    assert 3 not in ids and len(ids) >= 5
    assert tokenizer.decode(ids) == "Zwei Hunde spielen im Schnee."


def test_subword_nmt_bpe_cuts_as_its_command_line_tool_does(tmp_path, corpus_dir) -> None:
    """--bpe subword-nmt: codes learnt by subword-nmt itself on the test corpus; the tokenizer (also
    as saved with a converted model and loaded back) cuts text exactly as `subword-nmt apply-bpe`
    does (what a fairseq user ran before fairseq-preprocess), and output joins the "@@ " pieces."""
    pytest.importorskip("subword_nmt", reason="subword-nmt is installed by the dev extra")
    import shutil
    import subprocess
    import sys

    # beside this Python first: an unactivated venv (`.venv/bin/python -m pytest`) is not on PATH
    beside = os.path.join(os.path.dirname(sys.executable), "subword-nmt")
    tool = beside if os.access(beside, os.X_OK) else shutil.which("subword-nmt")
    tool = tool or pytest.fail("subword-nmt's command-line tool is missing")
    lines = open(os.path.join(corpus_dir, "train.de"), encoding="utf-8").read().splitlines()
    codes = tmp_path / "bpe.codes"
    learnt = subprocess.run([tool, "learn-bpe", "-s", "200"], input="\n".join(lines), capture_output=True, text=True)
    assert learnt.returncode == 0, learnt.stderr
    codes.write_text(learnt.stdout, encoding="utf-8")
    sample = lines[:50] + ["Ein völlig unbekanntesWort mit Ümläuten , und Satzzeichen ."]
    cut = subprocess.run(
        [tool, "apply-bpe", "-c", str(codes)], input="\n".join(sample) + "\n", capture_output=True, text=True
    )
    assert cut.returncode == 0, cut.stderr
    expected = cut.stdout.splitlines()
    assert sum(line.count("@@ ") for line in expected) > 50  # the codes do cut words
    symbols = sorted({piece for line in expected for piece in line.split()})
    tokenizer = FairseqTokenizer(["<s>", "<pad>", "</s>", "<unk>", *symbols], "subword-nmt", codes.read_bytes())
    tokenizer.save(str(tmp_path / "converted"))
    for loaded in (tokenizer, FairseqTokenizer.load(str(tmp_path / "converted"))):
        for text, pieces in zip(sample, expected):
            ids = loaded.encode(text)
            assert loaded.symbols_of(ids) == pieces and 3 not in ids
            assert loaded.decode(ids) == " ".join(text.split())


def test_janus_plugin_checkpoint_converts_with_its_query_position(converted: dict[str, str]) -> None:
    config = load_pretrained(converted["janus"]).config
    assert config.extra["fairseq_arch"] == "janus_transformer"
    assert config.query_position_offset == 0 and load_pretrained(converted["trained"]).config.query_position_offset == 1
    assert (config.normalize_before, config.final_norms, config.activation) == (False, False, "relu")


def golden_targets(converted: dict[str, str], name: str, golden: str) -> tuple:
    """The converted model ``name``, the fixture sources as its task reads them, fairseq's
    hypotheses from ``golden`` as teacher-forcing targets (the model's AR start token, the
    hypothesis, ``</s>``), the golden H- lines and P- lines."""
    model, tokenizer = load_pretrained(converted[name]), load_tokenizer(converted[name])
    hypotheses, positional = read_golden(os.path.join(DATA, golden))
    sources = source_batch if name == "janus" else transformer_sources
    src, lengths = sources(tokenizer, len(hypotheses))
    start, eos = model.config.ar_start_id, model.config.eos_id
    targets = [[start, *tokenizer.encode(hypotheses[i][1]), eos] for i in range(len(hypotheses))]
    return model, src, lengths, targets, hypotheses, positional


@pytest.mark.parametrize("native", [True, False], ids=["native_ar_step", "model_ar_hidden"])
def test_janus_plugin_ar_scores_match_its_generator(native: bool, converted: dict[str, str]) -> None:
    """The plugin's AR (query stream at the last content token's position, ``<unk>`` as query
    token, content keys/values up to it): its greedy hypotheses fed back through our AR pass give
    its positional scores (P- lines, base 2, incl. ``</s>``). The reference is the plugin's
    generator with its AR cache storing each content key once (README.md of the fixtures)."""
    model, src, lengths, targets, hypotheses, positional = golden_targets(converted, "janus", "ar_janus_greedy.txt")
    tgt, tgt_lengths = pad_sequences(targets, 1)
    with torch.inference_mode():
        if native:
            if unsupported_reason(model) is not None:
                pytest.skip(unsupported_reason(model))
            decoder = NativeDecoder.for_model(model)
            encoder_out = decoder.encode(src, lengths)
            memory = NativeDecoder.memory(encoder_out)
            caches = model.new_caches(len(targets), tgt.shape[1], encoder_out.states)
            steps = [decoder.ar_step(tgt[:, step], step, memory, caches) for step in range(tgt.shape[1] - 1)]
            logits = torch.stack(steps, 1)
        else:
            logits = model.output_logits(model.ar_hidden(tgt, tgt_lengths, model.encode(src, lengths)))
        log_probs = F.log_softmax(logits.float(), -1).gather(2, tgt[:, 1:, None]).squeeze(2) / math.log(2)
    for index, target in enumerate(targets):
        ours = log_probs[index, : len(target) - 1].tolist()
        assert ours == pytest.approx(positional[index], abs=2e-4), f"sentence {index}"
        assert sum(ours) / len(ours) == pytest.approx(hypotheses[index][0], abs=1e-4)


# fairseq-generate's AR beam search outputs: (converted model, golden file, --beam)
AR_GOLDEN = [
    ("janus", "ar_janus_greedy.txt", 1),
    ("janus", "ar_janus_beam5.txt", 5),
    ("transformer", "ar_transformer_greedy.txt", 1),
    ("transformer", "ar_transformer_beam5.txt", 5),
]


@pytest.mark.parametrize("name, golden, beam", AR_GOLDEN)
@pytest.mark.parametrize("decoder", ["engine", "reference"])
def test_ar_search_matches_fairseq_generate(
    decoder: str, name: str, golden: str, beam: int, converted: dict[str, str]
) -> None:
    """``generate(compat="fairseq", mode="ar", beam=N)`` == ``fairseq-generate --beam N`` on the
    JANUS plugin's model (``--inference-mode ar``, its cache storing each content key once) and on
    a plain transformer (``--task translation``: sources ``x </s>``, targets from ``</s>``, the
    native step running the content stream alone): tokens, ``<unk>`` included, and scores."""
    model, tokenizer = load_pretrained(converted[name]), load_tokenizer(converted[name])
    if decoder == "engine" and unsupported_reason(model) is not None:
        pytest.skip(unsupported_reason(model))
    hypotheses, positional = read_golden(os.path.join(DATA, golden))
    sources = source_batch if name == "janus" else transformer_sources
    src, lengths = sources(tokenizer, len(hypotheses))
    found = fairseq_decoding.ar_beam_search(model, src, lengths, beam, native=decoder == "engine")
    api = generate(model, src, lengths, mode="ar", beam=beam, compat="fairseq", decoder=decoder, return_scores=True)
    for index, hypothesis in enumerate(found):
        score, text = hypotheses[index]
        assert tokenizer.symbols_of(hypothesis.tokens) == text, f"sentence {index}"
        assert [value / math.log(2) for value in hypothesis.positional_scores] == pytest.approx(
            positional[index], abs=2e-4
        )
        assert hypothesis.score / math.log(2) == pytest.approx(score, abs=1e-4)
        assert tokenizer.symbols_of(api.tokens[index]) == text
    assert sum("<unk>" in text for _, text in hypotheses.values()) >= 5


def test_fairseq_ar_length_limit(converted: dict[str, str]) -> None:
    """``max_len_b`` reaches fairseq's search (its ``--max-len-b``; unset it is fairseq's 200): greedy
    limited to L tokens is fairseq-generate's greedy output cut after L tokens, then ``</s>``."""
    model, tokenizer = load_pretrained(converted["janus"]), load_tokenizer(converted["janus"])
    hypotheses, _ = read_golden(os.path.join(DATA, "ar_janus_greedy.txt"))
    src, lengths = source_batch(tokenizer, len(hypotheses))
    limit = 4
    found = generate(model, src, lengths, mode="ar", beam=1, compat="fairseq", max_len_a=0, max_len_b=limit)
    unlimited = generate(model, src, lengths, mode="ar", beam=1, compat="fairseq")
    cut = 0
    for index, tokens in enumerate(found):
        golden = hypotheses[index][1].split()
        assert tokenizer.symbols_of(tokens).split() == golden[:limit], f"sentence {index}"
        assert tokenizer.symbols_of(unlimited[index]).split() == golden
        cut += len(golden) > limit
    assert cut >= 10
    with pytest.raises(ValueError, match="max_len"):
        generate(model, src, lengths, mode="ar", compat="fairseq", max_len_a=0, max_len_b=0)
    with pytest.raises(ValueError, match="max_len_a"):
        generate(model, src, lengths, mode="ar", compat="fairseq", max_len_a=-1.0)


def test_fairseq_ar_beam_is_checked(converted: dict[str, str]) -> None:
    model, tokenizer = load_pretrained(converted["janus"]), load_tokenizer(converted["janus"])
    src, lengths = source_batch(tokenizer, 2)
    for wrong in (0, 129, 2.0):
        with pytest.raises((TypeError, ValueError), match="beam"):
            generate(model, src, lengths, mode="ar", beam=wrong, compat="fairseq")


def test_fairseq_beam_search_differs_from_greedy_on_the_fixture() -> None:
    """The beam 5 fixture is a real test of the search: fairseq's beam 5 and greedy outputs differ
    on most of the 20 sentences."""
    greedy, _ = read_golden(os.path.join(DATA, "ar_janus_greedy.txt"))
    beam5, _ = read_golden(os.path.join(DATA, "ar_janus_beam5.txt"))
    assert sum(greedy[index][1] != beam5[index][1] for index in greedy) >= 10


# ------------------------------------------------------------------- fairseq's plain transformer
def test_plain_transformer_converts_as_an_ar_only_model(converted: dict[str, str]) -> None:
    config = load_pretrained(converted["transformer"]).config
    assert config.extra["fairseq_arch"] == "transformer"
    assert (config.ar_stream, config.ar_start, config.has_nar) == ("content", "eos", False)
    assert (config.source_bos, config.source_eos) == (False, True)
    assert (config.normalize_before, config.final_norms, config.activation) == (False, False, "relu")


def test_plain_transformer_teacher_forced_scores_match_fairseq(converted: dict[str, str]) -> None:
    """The model's full-sequence AR pass (``ar_hidden``, causal content stream) on fairseq's beam-5
    hypotheses (``</s> y``) gives fairseq's positional scores: an independent check of the
    incremental step the golden test above runs."""
    model, src, lengths, targets, _, positional = golden_targets(converted, "transformer", "ar_transformer_beam5.txt")
    tgt, tgt_lengths = pad_sequences(targets, 1)
    with torch.inference_mode():
        logits = model.output_logits(model.ar_hidden(tgt, tgt_lengths, model.encode(src, lengths)))
        log_probs = F.log_softmax(logits.float(), -1).gather(2, tgt[:, 1:, None]).squeeze(2) / math.log(2)
    for index, target in enumerate(targets):
        assert log_probs[index, : len(target) - 1].tolist() == pytest.approx(positional[index], abs=2e-4)


def test_plain_transformer_refuses_what_it_cannot_do(converted: dict[str, str], tmp_path) -> None:
    model, tokenizer = load_pretrained(converted["transformer"]), load_tokenizer(converted["transformer"])
    src, lengths = transformer_sources(tokenizer, 2)
    with pytest.raises(ValueError, match="no NAR side"):
        generate(model, src, lengths, mode="nar", compat="fairseq")
    with pytest.raises(ValueError, match="compat='fairseq'"):
        generate(model, src, lengths, mode="ar")
    from janus_fast.translator import Translator

    translator = Translator.from_pretrained(converted["transformer"])
    with pytest.raises(ValueError, match="no NAR side"):
        translator.translate(["ein mann ."], mode="nar")
    assert translator.translate(["ein mann ."], mode="ar", beam=2, compat="fairseq")[0]


@pytest.mark.parametrize("beam", [["--beam", "5"], []], ids=["beam5", "fairseq_default_beam"])
def test_cli_translates_a_plain_transformer_as_fairseq_generate(beam: list[str], tmp_path) -> None:
    """End to end through the CLI: convert the fairseq transformer, translate with --compat fairseq
    --mode ar --beam 5, or no --beam (fairseq-generate's default, 5): fairseq-generate's
    hypotheses, line for line."""
    model_dir = str(tmp_path / "model")
    checkpoint, dictionary = os.path.join(DATA, "transformer.pt"), os.path.join(DATA, "dict.txt")
    assert cli_main(["convert", "--fairseq", checkpoint, "--dict", dictionary, "--output", model_dir]) == 0
    hypotheses, _ = read_golden(os.path.join(DATA, "ar_transformer_beam5.txt"))
    source = tmp_path / "in.txt"
    with open(os.path.join(DATA, "test.de"), encoding="utf-8") as handle:
        source.write_text("".join([line for line in handle][: len(hypotheses)]), encoding="utf-8")
    out = tmp_path / "out.txt"
    args = ["translate", "--model", model_dir, "--compat", "fairseq", "--mode", "ar", *beam]
    assert cli_main(args + ["-i", str(source), "-o", str(out), "--no-progress"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == [hypotheses[i][1] for i in range(len(hypotheses))]


def test_cli_print_scores_prints_fairseq_generates_lines(converted: dict[str, str], tmp_path) -> None:
    """``translate --print-scores --compat fairseq`` prints fairseq-generate's H- and P- lines: the
    same hypotheses, scores and per-token scores (base 2) for every sentence of a golden file."""
    hypotheses, positional = read_golden(os.path.join(DATA, "generate_trained_iter4_beam3_adaptive.txt"))
    source = tmp_path / "in.txt"
    with open(os.path.join(DATA, "test.de"), encoding="utf-8") as handle:
        source.write_text("".join([line for line in handle][: len(hypotheses)]), encoding="utf-8")
    out = tmp_path / "out.txt"
    args = ["translate", "--model", converted["trained"], "--compat", "fairseq", "--mode", "nar", "--iterations", "4"]
    args += ["--length-beam", "3", "--print-scores", "-i", str(source), "-o", str(out), "--no-progress"]
    assert cli_main(args) == 0
    ours_hypotheses, ours_positional = read_golden(str(out))
    assert sorted(ours_hypotheses) == sorted(hypotheses) == sorted(ours_positional)
    for index, (score, text) in hypotheses.items():
        assert ours_hypotheses[index][1] == text, index
        assert ours_hypotheses[index][0] == pytest.approx(score, abs=1e-4), index
        assert ours_positional[index] == pytest.approx(positional[index], abs=2e-4), index


def test_bench_times_a_plain_transformer_in_compat_mode(converted: dict[str, str], tmp_path) -> None:
    """``janus-fast bench --compat fairseq`` on a converted transformer times its AR search rows."""
    from janus_fast.benchmarks.decoding import run_bench

    with open(os.path.join(DATA, "test.de"), encoding="utf-8") as handle:
        lines = [line for line in handle][:6]
    (tmp_path / "test_2016_flickr.de").write_text("".join(lines), encoding="utf-8")
    (tmp_path / "test_2016_flickr.en").write_text("".join(lines), encoding="utf-8")
    report = run_bench(converted["transformer"], str(tmp_path), limit=6, batch1_sentences=2, compat="fairseq")
    names = [row["setting"] for row in report["rows"]]
    assert names == [
        "reference fairseq-compat AR greedy",
        "reference fairseq-compat AR beam 5",
        "engine fairseq-compat AR greedy",
        "engine fairseq-compat AR beam 5",
    ]
    assert all(row["batch_ms_per_sentence"] > 0 and row["gflop_per_sentence"] > 0 for row in report["rows"])


# ------------------------------------------------------------- decode precision (bf16, int8)
def native_first_pass(
    model: JanusModel, src: torch.Tensor, lengths: torch.Tensor, weights: str
) -> tuple[list[list[int]], list[float]]:
    """fairseq's one-pass mask-predict (``--iter-decode-max-iter 0``, length beam 1) computed here
    from the native decoder's own calls with ``weights``: the length head's argmax on the native
    encoder's states, ``<bos> <mask>* <eos>``, one fill of every mask; each sentence's tokens
    (no bos/eos) and score (the mean over bos .. eos, those two counting 0)."""
    config = model.config
    with torch.inference_mode():
        decoder = NativeDecoder.for_model(model, weights)
        encoder_out = decoder.encode(src, lengths)
        target_lengths = fairseq_decoding.length_beam_lengths(model, encoder_out, 1).reshape(-1)
        target_lengths = target_lengths.clamp(max=config.max_target_positions)
        width = int(target_lengths.max())
        positions = torch.arange(width).expand(len(target_lengths), width)
        real = positions < target_lengths[:, None]
        padded = torch.full(positions.shape, config.mask_id)
        padded[:, 0] = config.bos_id
        padded[positions == target_lengths[:, None] - 1] = config.eos_id
        packed_tokens, packed_positions = padded[real], positions[real]  # the rows one after another
        offsets = F.pad(target_lengths.cumsum(0), (1, 0))
        masked = (packed_tokens == config.mask_id).nonzero().squeeze(1)
        memory = NativeDecoder.memory(encoder_out)
        filled, scores = decoder.nar_fill(packed_tokens, packed_positions, offsets, memory, masked, exclude_id=-1)
    tokens, means, start = [], [], 0
    for length in target_lengths.tolist():  # length - 2 masks per row
        tokens.append(filled[start : start + length - 2].tolist())
        means.append(float(scores[start : start + length - 2].sum()) / length)
        start += length - 2
    return tokens, means


def native_teacher_forced_scores(
    model: JanusModel, src: torch.Tensor, lengths: torch.Tensor, outputs: list[list[int]], weights: str
) -> list[float]:
    """Each output (no start token, no ``</s>``) fed back through the native AR step with
    ``weights`` from the model's AR start token: its mean log-probability over the tokens and
    ``</s>`` (fairseq's AR score)."""
    config = model.config
    targets = [[config.ar_start_id, *tokens, config.eos_id] for tokens in outputs]
    tgt, _ = pad_sequences(targets, config.pad_id)
    with torch.inference_mode():
        decoder = NativeDecoder.for_model(model, weights)
        encoder_out = decoder.encode(src, lengths)
        memory = NativeDecoder.memory(encoder_out)
        caches = model.new_caches(len(targets), tgt.shape[1], encoder_out.states)
        logits = torch.stack(
            [decoder.ar_step(tgt[:, step], step, memory, caches) for step in range(tgt.shape[1] - 1)], 1
        )
        log_probs = F.log_softmax(logits.float(), -1).gather(2, tgt[:, 1:, None]).squeeze(2)
    return [float(log_probs[index, : len(target) - 1].mean()) for index, target in enumerate(targets)]


def without_specials(model: JanusModel, outputs: list[list[int]]) -> list[list[int]]:
    """The outputs as ``generate`` returns them: without bos, eos and pad (``<unk>`` kept)."""
    drop = {model.config.bos_id, model.config.eos_id, model.config.pad_id}
    return [[token for token in tokens if token not in drop] for tokens in outputs]


def max_difference(first: list[float], second: list[float]) -> float:
    return max(abs(a - b) for a, b in zip(first, second))


@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("name", ["trained", "janus"])
def test_fairseq_mask_predict_decodes_at_the_decode_precision(
    name: str, weights: str, converted: dict[str, str]
) -> None:
    """``generate(compat="fairseq", precision=w)`` runs fairseq's mask-predict on the native
    passes with ``w`` weights (issue 30: it ran fp32 weights whatever the precision): one pass gives
    exactly what the native decoder's own calls with those weights give, scores that differ from
    fp32's; several passes the same as ``fairseq_decoding.mask_predict`` at that precision."""
    model, tokenizer = load_pretrained(converted[name]), load_tokenizer(converted[name])
    if unsupported_reason(model) is not None:
        pytest.skip(unsupported_reason(model))
    src, lengths = source_batch(tokenizer, 20)
    options = dict(mode="nar", compat="fairseq", return_scores=True)
    found = generate(model, src, lengths, iterations=0, length_beam=1, precision=weights, **options)
    fp32 = generate(model, src, lengths, iterations=0, length_beam=1, **options)
    tokens, scores = native_first_pass(model, src, lengths, weights)
    assert found.tokens == without_specials(model, tokens)
    assert found.scores == pytest.approx(scores, abs=1e-6)
    assert max_difference(found.scores, fp32.scores) > 1e-4  # the precision shows in the scores

    several = generate(model, src, lengths, iterations=4, length_beam=3, precision=weights, **options)
    fp32 = generate(model, src, lengths, iterations=4, length_beam=3, **options)
    direct = fairseq_decoding.mask_predict(model, src, lengths, 4, 3, precision=weights)
    assert several.scores == pytest.approx([hypothesis.score for hypothesis in direct], abs=1e-6)
    assert max_difference(several.scores, fp32.scores) > 1e-4


@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("name, beam", [("janus", 1), ("janus", 5), ("transformer", 1), ("transformer", 5)])
def test_fairseq_ar_search_decodes_at_the_decode_precision(
    name: str, beam: int, weights: str, converted: dict[str, str]
) -> None:
    """``generate(compat="fairseq", mode="ar", precision=w)`` runs fairseq's beam search on
    native steps with ``w`` weights: each hypothesis' score is its teacher-forced score through the
    native step with those weights, and the scores differ from fp32's."""
    model, tokenizer = load_pretrained(converted[name]), load_tokenizer(converted[name])
    if unsupported_reason(model) is not None:
        pytest.skip(unsupported_reason(model))
    src, lengths = (source_batch if name == "janus" else transformer_sources)(tokenizer, 20)
    options = dict(mode="ar", beam=beam, compat="fairseq", return_scores=True)
    found = generate(model, src, lengths, precision=weights, **options)
    fp32 = generate(model, src, lengths, **options)
    assert found.scores == pytest.approx(
        native_teacher_forced_scores(model, src, lengths, found.tokens, weights), abs=1e-5
    )
    assert max_difference(found.scores, fp32.scores) > 1e-4


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_translator_precision_reaches_fairseq_decoding(weights: str, converted: dict[str, str]) -> None:
    """``Translator(precision=w).translate_ids(compat="fairseq")`` (what ``janus-fast translate
    --precision w --compat fairseq`` runs) decodes with ``w`` weights."""
    from janus_fast.translator import Translator

    translator = Translator.from_pretrained(converted["trained"], precision=weights)
    if not translator.choice.passes().native:
        pytest.skip(f"precision {weights!r} runs PyTorch's int8 layers here, not the native decoder")
    tokenizer = translator.tokenizer
    with open(os.path.join(DATA, "test.de"), encoding="utf-8") as handle:
        sources = [tokenizer.encode(line.rstrip("\n")) for line in handle][:12]
    found = translator.translate_ids(sources, mode="nar", iterations=0, length_beam=1, compat="fairseq")
    src, lengths = source_batch(tokenizer, 12)
    tokens, scores = native_first_pass(translator.model, src, lengths, weights)
    assert found.tokens == without_specials(translator.model, tokens)
    assert found.scores == pytest.approx(scores, abs=1e-6)


def test_fairseq_decoding_refuses_a_precision_it_cannot_run(converted: dict[str, str]) -> None:
    """bf16 needs the native decoder and int8 float32 weights: where they cannot run (here a float64
    model, or for bf16 the PyTorch passes asked for), fairseq decoding raises instead of decoding
    with fp32 weights; int8 on the PyTorch passes runs PyTorch's dynamic int8 layers (its scores
    are not fp32's)."""
    model, tokenizer = load_pretrained(converted["janus"]), load_tokenizer(converted["janus"])
    src, lengths = source_batch(tokenizer, 2)
    wide = load_pretrained(converted["janus"]).double()
    for weights in ("bf16", "int8"):
        with pytest.raises(ValueError, match="needs"):
            generate(wide, src, lengths, mode="nar", compat="fairseq", precision=weights)
        with pytest.raises(ValueError, match="needs"):
            generate(wide, src, lengths, mode="ar", compat="fairseq", precision=weights)
    with pytest.raises(ValueError, match="needs the engine's native CPU decoder"):
        fairseq_decoding.mask_predict(model, src, lengths, native=False, precision="bf16")
    with pytest.raises(ValueError, match="needs the engine's native CPU decoder"):
        fairseq_decoding.ar_beam_search(model, src, lengths, native=False, precision="bf16")
    int8 = fairseq_decoding.mask_predict(model, src, lengths, native=False, precision="int8")
    fp32 = fairseq_decoding.mask_predict(model, src, lengths, native=False)
    assert max(abs(a.score - b.score) for a, b in zip(int8, fp32)) > 1e-4
    with pytest.raises(ValueError, match="precision"):
        fairseq_decoding.mask_predict(model, src, lengths, precision="fp16")


@pytest.mark.parametrize("decoder", ["engine", "reference"])
def test_fairseq_ar_search_reaches_the_last_position_of_a_janus_model(decoder) -> None:
    """compat fairseq's AR length cap on a model whose query stream reads one position ahead: a
    sentence that never ends stops at the cap instead of failing on a position past the table."""
    from conftest import random_model

    model = random_model(12, vocab_size=40)
    with torch.no_grad():
        model.embed_tokens.weight[model.config.eos_id] = 0.0  # eos never chosen before the cap
    src = torch.randint(5, 40, (2, 6))
    found = generate(model, src, torch.tensor([6, 4]), mode="ar", compat="fairseq", beam=2, decoder=decoder)
    assert [len(tokens) for tokens in found] == [model.config.max_target_positions - 2] * 2


def test_an_edited_dictionary_of_a_converted_model_is_refused(converted, tmp_path) -> None:
    """convert records the digest of the dictionary (and BPE) in config.json: two symbols swapped by
    hand would make every translation print the wrong words, so loading refuses; export keeps it."""
    import shutil

    from test_cli import run_cli

    name = next(iter(converted))
    model_dir = tmp_path / "model"
    shutil.copytree(converted[name], model_dir)
    assert FAIRSEQ_TOKENIZER_DIGEST in read_config(str(model_dir))
    lines = (model_dir / "dict.txt").read_text(encoding="utf-8").splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (model_dir / "dict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not the dictionary .* this checkpoint was saved with"):
        load_tokenizer(str(model_dir))
    exported = tmp_path / "exported"
    assert run_cli("export", "--model", converted[name], "--output", str(exported)).returncode == 0
    digest = read_config(converted[name])[FAIRSEQ_TOKENIZER_DIGEST]
    assert read_config(str(exported))[FAIRSEQ_TOKENIZER_DIGEST] == digest
    assert load_tokenizer(str(exported)).symbols == load_tokenizer(converted[name]).symbols


def test_a_converted_cmlm_decodes_only_with_its_nar_side(converted: dict[str, str]) -> None:
    """fairseq's CMLM trains no AR side: its conversion records objective cmlm, and AR or speculative
    decoding of it is refused (they decode noise); the JANUS plugin's model keeps both."""
    cmlm = load_pretrained(converted["trained"])
    assert cmlm.config.extra["trained_objectives"] == ["cmlm"]
    src, lengths = source_batch(load_tokenizer(converted["trained"]), 2)
    for mode in ("ar", "spec"):
        with pytest.raises(ValueError, match="AR side was never trained"):
            generate(cmlm, src, lengths, mode=mode, compat="fairseq" if mode == "ar" else "janus")
    with pytest.raises(ValueError, match="AR side was never trained.*ar_rescore"):  # ranks with the AR side
        generate(cmlm, src, lengths, mode="nar", ar_rescore=True)
    assert len(generate(cmlm, src, lengths, mode="nar")) == 2
    assert load_pretrained(converted["janus"]).config.extra["trained_objectives"] == ["janus"]
    # fairseq-generate's mask-predict flags without the mode: the model's kind is named first, with the
    # mode that works (not "iterations does not apply to mode 'ar'")
    with pytest.raises(ValueError, match="AR side was never trained.*use mode='nar'"):
        generate(cmlm, src, lengths, mode="ar", compat="fairseq", iterations=4, length_beam=3)


def test_train_refuses_to_warm_start_from_a_converted_fairseq_model(converted, corpus_dir, tmp_path) -> None:
    """Its tokenizer is a fairseq dictionary (no SentencePiece model to encode the data with): a clear
    CheckpointError (the CLI's error line), not an AttributeError from inside the run."""
    from conftest import tiny_train_config

    from janus_fast.checkpoint import CheckpointError
    from janus_fast.training.train import train

    config = tiny_train_config(corpus_dir, str(tmp_path / "run"), max_updates=1, init_from=converted["trained"])
    with pytest.raises(CheckpointError, match="a converted fairseq model"):
        train(config)


def test_control_symbols_written_in_text_are_unknown_words(converted: dict[str, str]) -> None:
    """``</s>``, ``<s>``, ``<pad>`` and ``<mask>`` in a source text are words (``<unk>``), never the
    control ids mid-sentence; ``translate`` and ``--print-scores`` then read the line alike."""
    from janus_fast.fairseq.dictionary import FairseqTokenizer

    tokenizer = FairseqTokenizer(["<s>", "<pad>", "</s>", "<unk>", "ein", "hund", "<mask>"])
    assert tokenizer.encode("ein </s> hund <s> <pad> <mask> <unk> ein") == [4, 3, 5, 3, 3, 3, 3, 4]
    from test_cli import run_cli

    for extra in ((), ("--print-scores",)):
        result = run_cli(
            "translate", "--model", converted["trained"], "--mode", "nar", *extra, stdin=b"ein hund </s> .\n"
        )
        assert result.returncode == 0, result.stderr


def test_export_refuses_a_nar_setting_for_a_plain_transformer(converted: dict[str, str], tmp_path) -> None:
    """``export --length-bonus`` on an AR-only model would store a default that translate refuses."""
    from test_cli import run_cli

    result = run_cli(
        "export", "--model", converted["transformer"], "--output", str(tmp_path / "copy"), "--length-bonus", "0.1"
    )
    assert result.returncode == 2 and b"--length-bonus is a NAR setting" in result.stderr
    assert not (tmp_path / "copy").exists()
