"""Whatever a user passes through the API, the CLI or the files they point at: a result or a clear
error naming the problem, never a wrong answer, a traceback or unbounded memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, random_model, tiny_train_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import run_cli

from janus_fast.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    config_digest,
    load_pretrained,
    save_pretrained,
)
from janus_fast.decoding.candidates import length_candidates
from janus_fast.generation import generate
from janus_fast.training.train import TRAIN_STATE_NAME, train
from janus_fast.translator import Translator

SENTENCES = ["Ein Mann fährt Fahrrad.", "", "Zwei Hunde spielen im Schnee."]
ANY_VALUE = st.one_of(
    st.integers(-3, 300),
    st.integers(2**62, 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def translator(trained_dir) -> Translator:
    return Translator.from_pretrained(trained_dir)


@SETTINGS
@given(option=st.sampled_from(["iterations", "length_beam", "beam", "batch_size", "max_batch_tokens"]), value=ANY_VALUE)
def test_translate_options_give_a_result_or_a_clear_error(translator, option, value):
    config = translator.model.config
    upper = {"iterations": config.max_target_positions, "length_beam": config.num_length_classes, "beam": 128}
    upper = upper.get(option)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    valid = value is None or (  # None: the option's default (for these: the compat's own)
        is_int and value >= 1 and (upper is None or value <= upper)
    )
    mode = "ar" if option == "beam" else "nar"
    base = {"mode": mode, **({"iterations": 2} if mode == "nar" else {})}
    try:
        outputs = translator.translate(SENTENCES, **{**base, option: value})
    except (TypeError, ValueError) as error:
        assert option in str(error) and not valid, (option, value, error)
        return
    assert valid, (option, value)
    assert len(outputs) == 3 and outputs[1] == "" and outputs[0] and outputs[2]


@pytest.mark.parametrize("length_offset", [False, True])
def test_length_beam_is_capped_by_the_possible_lengths(length_offset):
    model = random_model(num_length_classes=16, length_offset=length_offset, max_target_positions=40)
    src = torch.randint(5, 60, (3, 6))
    lengths = torch.tensor([6, 2, 1])
    encoder_out = model.encode(src, lengths)
    candidates, log_probs = length_candidates(model, encoder_out, 16)
    assert candidates.shape == (3, 16 - 3)
    assert bool((candidates >= 3).all())
    huge = generate(model, src, lengths, mode="nar", iterations=2, length_beam=16, decoder="reference")
    capped = generate(model, src, lengths, mode="nar", iterations=2, length_beam=13, decoder="reference")
    assert huge == capped  # 16 candidates asked, the 13 possible lengths used
    assert generate(model, src, lengths, mode="nar", iterations=2, length_beam=16) == huge


@pytest.mark.slow
def test_huge_length_beam_through_the_cli(trained_dir):
    for beam in ("253", "254", "256"):
        result = run_cli("translate", "--model", trained_dir, "--mode", "nar", "--length-beam", beam, "--iterations",
                         "2", stdin=b"Ein Hund.\n")  # fmt: skip
        assert result.returncode == 0 and result.stdout.strip(), (beam, result.stderr)
    result = run_cli("translate", "--model", trained_dir, "--mode", "nar", "--length-beam", "257", stdin=b"Ein Hund.\n")
    assert result.returncode == 2 and b"--length-beam must be in [1, 256]" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["translate", "--device", "cuda"], b"CUDA is not available"),
        (["translate", "--device", "tpu9"], b"device"),
        (["translate", "--mode", "nar", "--iterations", "9223372036854775808"], b"iterations must be in"),
        (["translate", "--output", "/proc/version/out.txt"], b"--output /proc/version/out.txt: cannot write"),
        (["evaluate", "--src", "x", "--ref", "y", "--output", "/proc/version/o"], b"--output"),
        (["export", "--output", "/proc/version/dir"], b"--output"),
    ],
)
def test_cli_errors_name_the_option(trained_dir, args, message):
    if "export" in args or "evaluate" in args or args[0] == "translate":
        args = [args[0], "--model", trained_dir, *args[1:]]
    result = run_cli(*args, stdin=b"Ein Hund.\n")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(b"janus-fast: error:") and message in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["profile", "--vocab", "0"], ["profile", "--repeats", "0"]])
def test_profile_rejects_non_positive_sizes(args):
    result = run_cli(*args)
    assert result.returncode == 2 and b"must be >= 1" in result.stderr


def test_train_output_dir_must_be_writable(corpus_dir):
    result = run_cli("train", "--data-dir", corpus_dir, "--output-dir", "/proc/version/run", "--max-updates", "1")
    assert result.returncode == 2 and b"--output-dir /proc/version/run" in result.stderr


CONFIG_VALUES = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=4), st.booleans(), st.none()
)


@SETTINGS
@given(key=st.sampled_from(sorted(random_model().config.__dict__)), value=CONFIG_VALUES, resign=st.booleans())
def test_edited_config_is_refused_or_valid(tmp_path_factory, key, value, resign):
    directory = tmp_path_factory.mktemp("ckpt")
    save_pretrained(random_model(), str(directory))
    path = directory / CONFIG_NAME
    config = json.loads(path.read_text())
    if config["model"][key] == value and type(config["model"][key]) is type(value):
        return
    config["model"][key] = value
    if resign:  # an edit that also updates the digest: the model config itself is validated
        config["model_sha256"] = config_digest(config["model"])
    path.write_text(json.dumps(config))
    try:
        model = load_pretrained(str(directory))
    except CheckpointError as error:
        assert CONFIG_NAME in str(error) or WEIGHTS_NAME in str(error)
        return
    assert resign and getattr(model.config, key) == value  # loaded: only a consistent, valid edit


def test_edited_mask_id_is_detected(tmp_path):
    save_pretrained(random_model(), str(tmp_path))
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["model"]["mask_id"] = 7
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_sha256"):
        load_pretrained(str(tmp_path))


@SETTINGS
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_damaged_train_state_is_a_checkpoint_error(resumable_run, tmp_path_factory, cut, flip):
    import shutil

    run = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(resumable_run, run)
    path = run / "last" / TRAIN_STATE_NAME
    data = bytearray(path.read_bytes())
    if flip < len(data):
        data[flip] ^= 0x5A
    path.write_bytes(bytes(data[: len(data) - cut]))
    config = tiny_train_config(os.path.dirname(resumable_run.corpus), str(run), max_updates=4)
    config.data_dir = resumable_run.corpus
    try:
        train(config)
    except CheckpointError as error:
        assert TRAIN_STATE_NAME in str(error)


class RunDir(str):
    corpus: str


@pytest.fixture(scope="module")
def resumable_run(corpus_dir, tmp_path_factory) -> RunDir:
    out = str(tmp_path_factory.mktemp("resumable") / "run")
    train(tiny_train_config(corpus_dir, out, max_updates=3, save_every=3))
    run = RunDir(out)
    run.corpus = corpus_dir
    return run


def test_resume_with_other_options_is_refused(resumable_run, tmp_path):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(resumable_run, run)
    for change in ({"objective": "ar"}, {"lr": 5e-4}, {"d_model": 64}):
        with pytest.raises(ValueError, match="--" + next(iter(change)).replace("_", "-")):
            train(tiny_train_config(resumable_run.corpus, run, max_updates=4, **change))
    # what a restart may change
    train(tiny_train_config(resumable_run.corpus, run, max_updates=4, log_every=2, threads=2))


def test_resumed_run_does_not_repeat_metrics(resumable_run, tmp_path):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(resumable_run, run)
    metrics = os.path.join(run, "metrics.jsonl")
    with open(metrics, "a", encoding="utf-8") as handle:  # logged by a run killed before its save
        handle.write(json.dumps({"type": "train", "update": 4, "loss": 99.0}) + "\n")
    train(tiny_train_config(resumable_run.corpus, run, max_updates=5))
    with open(metrics, encoding="utf-8") as handle:
        updates = [json.loads(line)["update"] for line in handle if json.loads(line)["type"] == "train"]
    assert updates == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_translate_memory_is_bounded_on_4096_one_word_lines(tmp_path):
    """4,096 one-word lines (with the shipped model) stay under 1.5 GB of peak RSS; two iterations
    keep the test short (the (rows, T, V) logits buffer does not depend on them)."""
    lines = "".join(f"Wort{i % 97}\n" for i in range(4096))
    source = tmp_path / "words.txt"
    source.write_text(lines, encoding="utf-8")
    # the peak of the child's own memory: VmHWM (Linux). ru_maxrss would not do: Linux carries the
    # parent's high-water mark into a child started by (v)fork + exec, i.e. this test process's.
    code = (
        "import resource, sys; from janus_fast.cli import main; "
        f"rc = main(['translate', '-i', {str(source)!r}, '-o', {str(tmp_path / 'out.txt')!r}, "
        "'--mode', 'nar', '--iterations', '2']); "
        "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')]; "
        "print(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    peak_mb = int(result.stdout.split()[-1]) / 1024
    assert peak_mb < 1536, peak_mb
    assert len((tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()) == 4096
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


CLI_VALUES = st.one_of(
    st.integers(-5, 300).map(str),
    st.integers(2**31, 2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "x", "1e3", "0x10", " 3", "-0"]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--iterations", "--length-beam", "--beam", "--batch-size", "--max-batch-tokens"]),
       value=CLI_VALUES)  # fmt: skip
def test_cli_options_translate_or_exit_2_with_a_message(trained_dir, tmp_path_factory, capsys, option, value):
    from janus_fast.cli import main

    folder = tmp_path_factory.mktemp("cli")
    source, output = folder / "in.txt", folder / "out.txt"
    source.write_text("Ein Hund.\n\nZwei Katzen.\n", encoding="utf-8")
    mode = ["--mode", "ar"] if option == "--beam" else ["--mode", "nar"]
    mode += ["--iterations", "2"] if option not in ("--beam", "--iterations") else []
    arguments = ["translate", "--model", trained_dir, "-i", str(source), "-o", str(output), *mode, option, value]
    try:
        code = main(arguments)
    except SystemExit as exit_:  # argparse: a usage error names the option
        code = exit_.code
        assert code == 2 and option in capsys.readouterr().err
        return
    if code == 0:
        assert len(output.read_text(encoding="utf-8").splitlines()) == 3
    else:
        assert code == 2 and capsys.readouterr().err.startswith("janus-fast: error:")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-tokens", "0", "error: --max-tokens must be >= 1"),
        ("--masking", "spans", "--masking must be one of"),
        ("--objective", "nat", "--objective must be one of"),
        ("--lr", "-1", "--lr must be a number in (0, 10]"),
        ("--epochs", "0", "error: --epochs must be >= 1"),
        ("--max-updates", "-1", "error: --max-updates must be >= 0, got -1"),
        ("--seed", "-3000000000", "error: --seed must be in [-2147483648, 2147483647]"),
        ("--d-model", "33", "error: --d-model 33 must be divisible by --num-heads 4"),
        ("--dropout", "1", "error: --dropout must be in [0, 1)"),
        ("--max-target-positions", "2", "error: --max-target-positions must be >= 3"),
        ("--device", "meta", "error: --device meta: only cpu and cuda are supported"),
        ("--device", "foo", "error: --device foo: not a device torch knows"),
        pytest.param(
            "--device",
            "cuda",
            "error: --device cuda: CUDA is not available here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_train_options_refused_before_any_work(corpus_dir, tmp_path, option, value, message):
    """Option errors name the flag typed; a wrong --device is one of them (it used to end in a
    traceback after the tokenizer was trained)."""
    out = tmp_path / "run"
    result = run_cli("train", "--data-dir", corpus_dir, "--output-dir", str(out), option, value)
    assert result.returncode == 2 and message.encode() in result.stderr, result.stderr
    assert not out.exists()  # nothing written, no tokenizer trained


def test_a_wrong_device_is_named_as_the_api_or_the_command_line_spells_it(trained_dir, capsys):
    from janus_fast.cli import main
    from janus_fast.translator import Translator

    with pytest.raises(ValueError, match=r"^device='meta': only cpu and cuda are supported"):
        Translator.from_pretrained(trained_dir, device="meta")
    with pytest.raises(ValueError, match=r"^device='cpu:-1': not a device torch knows"):
        Translator.from_pretrained(trained_dir, device="cpu:-1")
    assert main(["translate", "--model", trained_dir, "--device", "meta"]) == 2
    assert capsys.readouterr().err.startswith("janus-fast: error: --device meta: only cpu and cuda are supported")


def test_numbers_of_other_types_get_errors_that_name_the_type_or_the_range():
    """Decimal is not a real number here (TypeError naming it); a Fraction past float's range is a
    ValueError, not a bare OverflowError; options given as a dict are a TypeError."""
    from decimal import Decimal
    from fractions import Fraction

    model = random_model(0).eval()
    src, lengths = torch.tensor([[5, 6, 7]]), torch.tensor([3])
    with pytest.raises(TypeError, match="max_len_a must be a real number .*Decimal"):
        generate(model, src, lengths, max_len_a=Decimal("1.5"))
    with pytest.raises(ValueError, match="max_len_a must be a finite number"):
        generate(model, src, lengths, max_len_a=Fraction(10**400))
    with pytest.raises(ValueError, match="length_bonus must be a finite number"):
        generate(model, src, lengths, mode="nar", length_bonus=Fraction(-(10**400)))
    with pytest.raises(TypeError, match="options must be a DecodeOptions, got dict"):
        generate(model, src, lengths, {"mode": "nar"})
    assert generate(model, src, lengths, max_len_a=Fraction(3, 2)) == generate(model, src, lengths, max_len_a=1.5)


def test_a_wrong_attention_backend_is_refused_on_every_decoding_path(monkeypatch):
    """JANUS_FAST_ATTENTION_BACKEND is read by the PyTorch attention only; the engine's native
    passes never call it, so a typo there would pass unnoticed on the default path."""
    from janus_fast import Translator

    translator = Translator.from_pretrained()
    monkeypatch.setenv("JANUS_FAST_ATTENTION_BACKEND", "Triton")
    for decoder in ("engine", "reference"):
        with pytest.raises(ValueError, match="JANUS_FAST_ATTENTION_BACKEND='Triton'"):
            Translator(translator.model, translator.tokenizer, decoder=decoder).translate(["Ein Hund."])


def test_api_flags_are_type_checked_before_any_work(trained_dir, translator):
    """A truthy string is not a yes: ``release_weights="no"`` is refused before the weights are
    freed, ``return_scores="yes"`` before decoding; a ``progress`` that cannot be called is refused
    before the first batch (it used to fail after decoding it)."""
    with pytest.raises(TypeError, match="release_weights must be true or false"):
        Translator.from_pretrained(trained_dir, release_weights="no")
    assert not any(p.is_meta for p in Translator.from_pretrained(trained_dir).model.parameters())
    with pytest.raises(TypeError, match="return_scores must be true or false"):
        translator.translate(["Ein Hund."], return_scores="yes")
    with pytest.raises(TypeError, match="progress must be a function"):
        translator.translate(["Ein Hund."], progress=5)
    with pytest.raises(TypeError, match="progress must be a function"):
        translator.translate_ids([[5, 6]], progress=5)
    done = []
    assert translator.translate(["Ein Hund."], progress=done.append) and done == [1]
    from janus_fast.generation import generate

    source, lengths = torch.tensor([[9, 10, 11, 2]]), torch.tensor([4])
    for value in ("no", 1, None, np.bool_(True)):  # generate(): refused as Translator refuses them
        with pytest.raises(TypeError, match="return_scores must be true or false"):
            generate(translator.model, source, lengths, return_scores=value)
    assert generate(translator.model, source, lengths, return_scores=True).scores


def test_outputs_that_reach_the_length_limit_are_said():
    """An AR or speculative output that reached its length limit (eos forced there) may be cut: one
    warning with how many, as input truncation is said; an output that ended on its own is not
    (the shipped model)."""
    import warnings

    translator = Translator.from_pretrained()
    sentences = ["Zwei Hunde spielen im Schnee.", "Ein Mann fährt Fahrrad."]
    for mode in ("ar", "spec"):
        with pytest.warns(UserWarning, match="2 translation\\(s\\) reached the AR length limit"):
            short = translator.translate(sentences, mode=mode, max_len_a=0.0, max_len_b=3)
        assert all(len(text.split()) <= 2 for text in short)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            translator.translate(sentences, mode=mode)
        assert not [w for w in caught if "length limit" in str(w.message)]
