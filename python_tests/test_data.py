"""Reading text, masking schemes and batching."""

from __future__ import annotations

import gzip

import pytest
import torch

from janus_fast.data import InputError, ParallelDataset, read_lines, span_mask, uniform_mask


def test_read_plain_gz_and_invalid_utf8(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"eins\nzwei\n\ndrei")
    assert read_lines(str(tmp_path / "a.txt")) == ["eins", "zwei", "", "drei"]
    with gzip.open(tmp_path / "b.gz", "wb") as handle:
        handle.write("ä\nö\n".encode())
    assert read_lines(str(tmp_path / "b.gz")) == ["ä", "ö"]
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfebad\n")
    with pytest.warns(UserWarning, match="invalid UTF-8"):
        assert read_lines(str(tmp_path / "bad.txt")) == ["ok", "\ufffd\ufffdbad"]
    with pytest.raises(InputError, match="missing.txt"):
        read_lines(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("scheme", [span_mask, uniform_mask])
def test_masks_cover_only_real_tokens(scheme):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 30, (500,), generator=generator)
    masked = scheme(lengths, 32, generator)
    positions = torch.arange(32)[None]
    assert not (masked & ((positions == 0) | (positions >= lengths[:, None] - 1))).any()
    counts = masked.sum(1)
    has_real = lengths > 2
    assert (counts[has_real] >= 1).all()
    assert (counts[~has_real] == 0).all()


def test_span_mask_masks_about_55_percent():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.full((2000,), 22)
    ratio = span_mask(lengths, 22, generator).sum() / (2000 * 20)
    assert 0.45 < float(ratio) < 0.65


def test_batches_respect_max_tokens_and_cover_everything():
    generator = torch.Generator().manual_seed(0)
    sources = [[5] * int(n) for n in torch.randint(1, 40, (300,), generator=generator)]
    targets = [[6] * int(n) for n in torch.randint(1, 40, (300,), generator=generator)]
    data = ParallelDataset(sources, targets, max_source=30, max_target=30)
    batches = data.batches(200, torch.Generator().manual_seed(1))
    assert sorted(i for b in batches for i in b) == list(range(300))
    for indices in batches:
        batch = data.collate(indices)
        assert batch.src_tokens.numel() <= 200 or len(indices) == 1
        assert batch.tgt_tokens.numel() <= 200 or len(indices) == 1
        assert (batch.tgt_tokens[:, 0] == 2).all()
