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
