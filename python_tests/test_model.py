"""The two-stream decoder: what each distribution may and may not see, and the NAR layout."""

from __future__ import annotations

import torch

from janus_fast.model import nar_layout


def make_batch(vocab: int = 60, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(5, vocab, (3, 7), generator=generator)
    src_lengths = torch.tensor([7, 5, 3])
    tgt_lengths = torch.tensor([9, 6, 4])
    tgt = torch.randint(5, vocab, (3, 9), generator=generator)
    for row, length in enumerate(tgt_lengths.tolist()):
        tgt[row, 0] = 2
        tgt[row, length - 1] = 3
        tgt[row, length:] = 0
    masked = torch.zeros(3, 9, dtype=torch.bool)
    masked[0, [2, 3, 5]] = True
    masked[1, [1, 4]] = True
    masked[2, [2]] = True
    return src, src_lengths, tgt, tgt_lengths, masked


def test_nar_layout_matches_per_sentence_construction():
    _, _, tgt, tgt_lengths, masked = make_batch()
    layout = nar_layout(tgt, tgt_lengths, masked, mask_id=4)
    for row, length in enumerate(tgt_lengths.tolist()):
        masked_positions = [p for p in range(length) if masked[row, p]]
        observed = [p for p in range(length) if not masked[row, p]]
        positions = observed + masked_positions + masked_positions
        tokens = (
            [int(tgt[row, p]) for p in observed]
            + [4] * len(masked_positions)
            + [int(tgt[row, p]) for p in masked_positions]
        )
        a = len(positions)
        assert int(layout.content_lengths[row]) == a
        assert int(layout.num_masked[row]) == len(masked_positions)
        assert layout.content_positions[row, :a].tolist() == positions
        assert layout.content_tokens[row, :a].tolist() == tokens
        b = len(masked_positions)
        assert layout.masked_positions[row, :b].tolist() == masked_positions
        assert layout.slot_index[row, :b].tolist() == list(range(length - b, length))


def test_query_stream_never_sees_its_own_token(model):
    """Perturbing the true token of masked position k leaves P_AUX at k unchanged (and P_NAR at
    every position), while a later query row, which sees that token, changes."""
    src, src_lengths, tgt, tgt_lengths, masked = make_batch()
    base = model(src, src_lengths, tgt, tgt_lengths, masked, "janus")
    perturbed_tgt = tgt.clone()
    perturbed_tgt[0, 2] = (tgt[0, 2] + 7) % 50 + 5  # masked position k = 0 of sentence 0
    changed = model(src, src_lengths, perturbed_tgt, tgt_lengths, masked, "janus")
    torch.testing.assert_close(changed["aux_logits"][0, 0], base["aux_logits"][0, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(changed["nar_logits"][0], base["nar_logits"][0], rtol=0, atol=1e-5)
    assert not torch.allclose(changed["aux_logits"][0, 1], base["aux_logits"][0, 1], atol=1e-3)
    # other sentences are untouched
    torch.testing.assert_close(changed["aux_logits"][1:], base["aux_logits"][1:], rtol=0, atol=1e-5)


def test_ar_stream_sees_only_the_prefix(model):
    src, src_lengths, tgt, tgt_lengths, masked = make_batch()
    base = model(src, src_lengths, tgt, tgt_lengths, masked, "ar")["ar_logits"]
    perturbed = tgt.clone()
    perturbed[0, 4] = (tgt[0, 4] + 3) % 50 + 5
    changed = model(src, src_lengths, perturbed, tgt_lengths, masked, "ar")["ar_logits"]
    # rows 0..3 predict y1..y4 having seen y0..y3: unchanged; row 4 sees y4: changed
    torch.testing.assert_close(changed[0, :4], base[0, :4], rtol=0, atol=1e-5)
    assert not torch.allclose(changed[0, 4], base[0, 4], atol=1e-3)


def test_janus_layout_p_nar_equals_plain_cmlm_forward(model):
    """P_NAR read at the mask slots of the two-stream layout is exactly CMLM on the masked input."""
    src, src_lengths, tgt, tgt_lengths, masked = make_batch()
    janus = model(src, src_lengths, tgt, tgt_lengths, masked, "janus")
    cmlm = model(src, src_lengths, tgt, tgt_lengths, masked, "cmlm")
    valid = janus["masked_valid"]
    torch.testing.assert_close(janus["nar_logits"][valid], cmlm["nar_logits"][valid], rtol=1e-4, atol=1e-4)


def test_unknown_objective_is_rejected(model):
    src, src_lengths, tgt, tgt_lengths, masked = make_batch()
    try:
        model(src, src_lengths, tgt, tgt_lengths, masked, "mlm")
    except ValueError as error:
        assert "objective" in str(error)
    else:
        raise AssertionError("expected ValueError")


def test_length_classes_round_trip_with_and_without_offset():
    from conftest import random_model

    for offset in (False, True):
        model = random_model(length_offset=offset)
        src_lengths = torch.tensor([1, 5, 30, 60])
        tgt_lengths = torch.tensor([3, 9, 25, 64])
        classes = model.length_targets(tgt_lengths, src_lengths)
        assert (classes >= 0).all() and (classes < model.config.num_length_classes).all()
        from janus_fast.length import class_lengths

        recovered = class_lengths(model.config.num_length_classes, src_lengths, offset).gather(1, classes[:, None])[
            :, 0
        ]
        assert torch.equal(recovered, tgt_lengths)
