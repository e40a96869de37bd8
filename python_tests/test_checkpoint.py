"""Checkpoint round trip and clear errors for truncated, corrupted or mismatched checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import random_model

from janus_fast.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_pretrained, save_pretrained


def test_round_trip_is_exact(tmp_path, model):
    save_pretrained(model, str(tmp_path))
    loaded = load_pretrained(str(tmp_path))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert not any(name.startswith(".tmp-") for name in os.listdir(tmp_path))


def test_truncated_weights_name_the_file(tmp_path, model):
    save_pretrained(model, str(tmp_path))
    path = tmp_path / WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors.*(corrupted|truncated)"):
        load_pretrained(str(tmp_path))


def test_flipped_byte_is_detected(tmp_path, model):
    save_pretrained(model, str(tmp_path))
    path = tmp_path / WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_pretrained(str(tmp_path))


def test_mismatched_config_is_reported(tmp_path, model):
    save_pretrained(model, str(tmp_path))
    other = tmp_path / "other"
    save_pretrained(random_model(d_model=64), str(other))
    (tmp_path / WEIGHTS_NAME).write_bytes((other / WEIGHTS_NAME).read_bytes())
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["weights_sha256"] = json.loads((other / CONFIG_NAME).read_text())["weights_sha256"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match.*shape"):
        load_pretrained(str(tmp_path))


def test_bad_or_missing_config(tmp_path, model):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(str(tmp_path / "nowhere"))
    save_pretrained(model, str(tmp_path))
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*JSON"):
        load_pretrained(str(tmp_path))
    os.remove(tmp_path / CONFIG_NAME)
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_pretrained(str(tmp_path))


def test_bf16_weights_load(tmp_path, model):
    from janus_fast.checkpoint import save_pretrained

    save_pretrained(model, str(tmp_path), dtype=torch.bfloat16)
    loaded = load_pretrained(str(tmp_path))
    weight = model.embed_tokens.weight
    torch.testing.assert_close(loaded.embed_tokens.weight, weight.bfloat16().float())


def test_export_bf16_through_the_cli(trained_dir, tmp_path):
    from test_cli import run_cli

    from janus_fast.checkpoint import load_pretrained

    output = tmp_path / "exported"
    result = run_cli("export", "--model", trained_dir, "--output", str(output), "--dtype", "bf16")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    source_size = os.path.getsize(os.path.join(trained_dir, WEIGHTS_NAME))
    assert os.path.getsize(output / WEIGHTS_NAME) < 0.55 * source_size
    original, exported = load_pretrained(trained_dir), load_pretrained(str(output))
    for (name, a), (_, b) in zip(original.state_dict().items(), exported.state_dict().items()):
        assert b.dtype == a.dtype, name  # loaded back as fp32
        assert torch.equal(b, a.to(torch.bfloat16).to(a.dtype)), name
    same = run_cli("export", "--model", trained_dir, "--output", trained_dir)
    assert same.returncode != 0 and b"must differ" in same.stderr


def test_export_stores_a_length_bonus_that_decoding_then_uses(trained_dir, tmp_path):
    """``export --length-bonus`` keeps the NAR decoding default with the copy: translating with the
    copy equals translating the source with ``--length-bonus``; the source keeps its own (0.0)."""
    from test_cli import run_cli

    from janus_fast.checkpoint import read_config

    output = str(tmp_path / "with-bonus")
    result = run_cli("export", "--model", trained_dir, "--output", output, "--dtype", "fp32", "--length-bonus", "2.5")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert read_config(output)["model"]["length_bonus"] == 2.5
    assert read_config(trained_dir)["model"]["length_bonus"] == 0.0
    options = ("--mode", "nar", "--iterations", "2", "--token-ids", "--keep-repeats")
    ids = "\n".join(" ".join(str(5 + (i * 7 + j) % 40) for j in range(3 + 2 * i)) for i in range(6)).encode() + b"\n"
    exported = run_cli("translate", "--model", output, *options, stdin=ids)
    explicit = run_cli("translate", "--model", trained_dir, *options, "--length-bonus", "2.5", stdin=ids)
    plain = run_cli("translate", "--model", trained_dir, *options, stdin=ids)
    assert exported.returncode == 0 and exported.stdout == explicit.stdout
    assert plain.stdout != exported.stdout  # the bonus picks other (longer) candidates somewhere
    assert len(plain.stdout.split()) < len(exported.stdout.split())
    bad = run_cli("export", "--model", trained_dir, "--output", str(tmp_path / "bad"), "--length-bonus", "nan")
    assert bad.returncode != 0 and b"--length-bonus must be a finite number" in bad.stderr  # named by its flag


def test_average_is_the_mean_of_the_weights(tmp_path):
    from janus_fast.checkpoint import average_checkpoints

    directories = []
    for seed in range(3):
        directory = str(tmp_path / f"ckpt{seed}")
        save_pretrained(random_model(seed), directory, tokenizer_model=b"same tokenizer")
        directories.append(directory)
    averaged = average_checkpoints(directories).state_dict()
    states = [random_model(seed).state_dict() for seed in range(3)]
    assert averaged.keys() == states[0].keys()
    for name, tensor in averaged.items():
        expected = (states[0][name].double() + states[1][name].double() + states[2][name].double()) / 3
        assert torch.equal(tensor, expected.to(tensor.dtype)), name
    assert not torch.equal(averaged["embed_tokens.weight"], states[0]["embed_tokens.weight"])


def test_the_same_weights_saved_twice_are_counted_once_by_average(tmp_path):
    """Saving the same weights twice gives the same file bytes (safetensors wrote several metadata
    entries in a varying order, so a run's ``best/`` and its ``saves/uN`` could differ in bytes and
    be averaged as two checkpoints); and weights whose files differ anyway (saved so by an older
    version) are still recognised, tensor for tensor."""
    import hashlib

    from safetensors.torch import save as save_safetensors

    from janus_fast.checkpoint import average_checkpoints

    model = random_model(0)
    digests = set()
    for index in range(8):
        save_pretrained(model, str(tmp_path / f"save{index}"), tokenizer_model=b"same tokenizer")
        digests.add(hashlib.sha256((tmp_path / f"save{index}" / WEIGHTS_NAME).read_bytes()).hexdigest())
    assert len(digests) == 1
    with pytest.raises(CheckpointError, match="the same weights as"):
        average_checkpoints([str(tmp_path / "save0"), str(tmp_path / "save1")])

    # the same tensors in a file of other bytes, its config's digest matching it (as an older save's)
    other = tmp_path / "save1"
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    data = save_safetensors(state, metadata={"version": "1", "format": "janus_fast"})
    (other / WEIGHTS_NAME).write_bytes(data)
    config = json.loads((other / CONFIG_NAME).read_text())
    config["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (other / CONFIG_NAME).write_text(json.dumps(config))
    assert config["weights_sha256"] not in digests
    save_pretrained(random_model(1), str(tmp_path / "different"), tokenizer_model=b"same tokenizer")
    with pytest.raises(CheckpointError, match=r"save1: the same weights as .*save0 \(tensor for tensor\)"):
        average_checkpoints([str(tmp_path / "save0"), str(tmp_path / "different"), str(other)])


def test_average_refuses_checkpoints_of_different_runs(tmp_path):
    from janus_fast.checkpoint import average_checkpoints

    base, wider, other_tokenizer = (str(tmp_path / name) for name in ("base", "wider", "other"))
    save_pretrained(random_model(0), base, tokenizer_model=b"tokenizer A")
    save_pretrained(random_model(1, ffn_dim=96), wider, tokenizer_model=b"tokenizer A")
    save_pretrained(random_model(2), other_tokenizer, tokenizer_model=b"tokenizer B")
    with pytest.raises(CheckpointError, match="ffn_dim"):
        average_checkpoints([base, wider])
    with pytest.raises(CheckpointError, match="tokenizer differs"):
        average_checkpoints([base, other_tokenizer])
    with pytest.raises(CheckpointError, match="at least 2"):
        average_checkpoints([base])
    with pytest.raises(CheckpointError, match="does not exist"):
        average_checkpoints([base, str(tmp_path / "missing")])


def test_average_refuses_an_export_to_a_narrower_type(tmp_path):
    """A bf16 export loads as float32, so its rounded weights went into the mean without a word
    (in either position); an fp32 export of another checkpoint is still averaged."""
    from janus_fast.checkpoint import average_checkpoints

    first, second, exported = (str(tmp_path / name) for name in ("first", "second", "second_bf16"))
    save_pretrained(random_model(0), first, tokenizer_model=b"same tokenizer")
    save_pretrained(random_model(1), second, tokenizer_model=b"same tokenizer")
    save_pretrained(random_model(1), exported, tokenizer_model=b"same tokenizer", dtype=torch.bfloat16)
    for order in ([first, exported], [exported, first]):
        with pytest.raises(CheckpointError, match=r"second_bf16: its weights are stored as torch.bfloat16"):
            average_checkpoints(order)
    fp32_copy = str(tmp_path / "second_fp32")
    save_pretrained(random_model(1), fp32_copy, tokenizer_model=b"same tokenizer", dtype=torch.float32)
    averaged = average_checkpoints([first, fp32_copy]).state_dict()
    expected = (
        random_model(0).state_dict()["embed_tokens.weight"].double()
        + random_model(1).state_dict()["embed_tokens.weight"].double()
    ) / 2
    assert torch.equal(averaged["embed_tokens.weight"], expected.float())


def test_export_and_average_refuse_an_empty_output_name(trained_dir, tmp_path):
    """``--output ''`` resolved to the current folder, which export then replaced by the checkpoint."""
    from test_cli import run_cli

    (tmp_path / "keep.txt").write_text("kept")
    for command in (["export", "--model", trained_dir], ["average", "--models", trained_dir, trained_dir]):
        result = run_cli(*command, "--output", "", cwd=str(tmp_path))
        assert result.returncode == 2 and b"--output is empty" in result.stderr, result.stderr.decode()[-500:]
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_average_through_the_cli(trained_dir, tmp_path):
    from test_cli import run_cli

    from janus_fast.checkpoint import load_tokenizer, save_tokenizer

    shifted = str(tmp_path / "shifted")
    model = load_pretrained(trained_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)
    save_pretrained(model, shifted)
    save_tokenizer(load_tokenizer(trained_dir), shifted)
    output = str(tmp_path / "averaged")
    result = run_cli("average", "--models", trained_dir, shifted, "--output", output)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    original, averaged = load_pretrained(trained_dir), load_pretrained(output)
    for (name, a), (_, b) in zip(original.state_dict().items(), averaged.state_dict().items()):
        torch.testing.assert_close(b, a + 0.25, rtol=0, atol=1e-6, msg=name)
    assert os.path.exists(os.path.join(output, "spm.model"))
    same = run_cli("average", "--models", trained_dir, shifted, "--output", shifted)
    assert same.returncode == 2 and b"must differ" in same.stderr


def test_a_failed_checkpoint_write_names_the_folder_asked_for(tmp_path):
    """export / average / convert write into a temporary folder beside the output: an error named
    that folder (``/proc/.x.tmp-jb0jrtkf: No such file or directory``, a full disk's
    ``.out.tmp-.../model.safetensors``) instead of the --output the user gave."""
    from janus_fast.checkpoint import replaced_directory

    output = str(tmp_path / "out")
    with pytest.raises(OSError) as raised:
        with replaced_directory(output) as staging:
            raise OSError(28, "No space left on device", os.path.join(staging, WEIGHTS_NAME))
    assert raised.value.filename == os.path.join(output, WEIGHTS_NAME) and raised.value.errno == 28
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError) as raised:  # a folder where no temporary folder can be made
        with replaced_directory("/proc/janus-fast-test"):
            pass
    assert raised.value.filename == "/proc/janus-fast-test"
