"""The native encoder and decoder passes (csrc/cpu/decoder_*.cpp, encoder_cpu.cpp) against the PyTorch model
they replace.

The reference is ``JanusModel`` itself (``ar_step``, ``nar_logits``); bf16 and int8 weight storage
are checked against the PyTorch model with its weights rounded the same way (an independent
computation of what those weights should give), every ISA path of the matrix products against the
model in a subprocess per path, and the engine built on them against the reference decoders.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import MULTI30K, engine_decode, random_model

from janus_fast.decoding import ar, passes
from janus_fast.decoding.beam import BeamChoice, janus_rules
from janus_fast.decoding.reference import ar_search, mask_predict
from janus_fast.native.decoder import (
    ISA_NAMES,
    NativeDecoder,
    bf16_computes_in_bf16,
    cpu_isa,
    int8_computes_in_int8,
    native_decoder_available,
    pack_groups,
    pack_panels,
)
from janus_fast.native.weights import flatten, named_tensors

pytestmark = pytest.mark.skipif(not native_decoder_available(), reason="native extension not built")

# "tiny": every matrix narrower than one 64-column panel (the scalar tail path); "medium": full
# panels (the vector kernels) and a partial last panel (vocabulary 203, FFN 320).
SHAPES = {
    "tiny": {},
    "medium": dict(d_model=128, num_heads=2, ffn_dim=320, vocab_size=203),
}


# how the layers are wired: this project's default, and fairseq's (converted checkpoints; the JANUS
# plugin's AR query position)
ARCHITECTURES = {
    "pre_norm_gelu": {},
    "post_norm_relu": dict(
        normalize_before=False, final_norms=False, activation="relu", scale_embedding=False, query_position_offset=0
    ),
    "pre_norm_relu_no_final_norms": dict(final_norms=False, activation="relu"),
}
# the AR step also runs fairseq's plain transformer decoder (content stream only, converted checkpoints)
AR_ARCHITECTURES = {
    **ARCHITECTURES,
    "plain_transformer": dict(
        normalize_before=False, final_norms=False, activation="relu", ar_stream="content", ar_start="eos"
    ),
}


def model_for(shape: str, seed: int = 0, architecture: str = "pre_norm_gelu"):
    model = random_model(seed, **SHAPES[shape], **AR_ARCHITECTURES[architecture])
    with torch.no_grad():  # keep activations in a sane range for the wider model
        for layer in model.decoder_layers:
            for linear in (layer.ffn.fc1, layer.ffn.fc2, layer.self_attn.out_proj, layer.cross_attn.out_proj):
                linear.weight.mul_(0.3)
    return model


def assert_float32_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 summation order: 1e-4 of the tensor's scale (values grow without the
    final layer norm, and so does the rounding of their sums)."""
    scale = max(1.0, float(expected.detach().abs().amax())) if expected.numel() else 1.0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)


def sources(seed: int, batch: int, vocab: int):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 13, (batch,), generator=generator)
    lengths[0] = 12
    src = torch.randint(5, vocab, (batch, 12), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        src[row, length:] = 0
    return src, lengths


def ar_start(model, src: torch.Tensor, lengths: torch.Tensor, steps: int):
    """What an AR decoding of ``src`` starts from: the encoder output, its memory for the native
    decoder, two empty caches for ``steps`` steps (the model's, then the native decoder's) and the
    first tokens (<bos>)."""
    batch = src.shape[0]
    encoder_out = model.encode(src, lengths)
    memory = NativeDecoder.memory(encoder_out)
    expected_caches = model.new_caches(batch, steps, encoder_out.states)
    caches = model.new_caches(batch, steps, encoder_out.states)
    return encoder_out, memory, expected_caches, caches, torch.full((batch,), model.config.bos_id)


def packed(tokens: torch.Tensor, lengths: torch.Tensor):
    width = tokens.shape[1]
    real = torch.arange(width)[None, :] < lengths[:, None]
    index = real.reshape(-1).nonzero().squeeze(1)
    positions = torch.arange(width).expand_as(tokens).reshape(-1)[index]
    offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    return index, tokens.reshape(-1)[index], positions, offsets


def rounded_model(model, weight_type: str):
    """A copy of ``model`` whose decoder matrices hold exactly what the native decoder stores."""
    copy = random_model(0, **{k: getattr(model.config, k) for k in ("d_model", "num_heads", "ffn_dim", "vocab_size")})
    copy.load_state_dict(model.state_dict())
    # the tied embedding stays fp32 for lookups; only its use as the vocabulary projection is rounded
    copy.output_projection = torch.nn.Linear(copy.config.d_model, copy.config.vocab_size, bias=False)
    copy.output_projection.weight.data.copy_(copy.embed_tokens.weight.data)
    matrices = [copy.output_projection]
    for layer in copy.encoder_layers:
        matrices += [layer.self_attn.q_proj, layer.self_attn.kv_proj, layer.self_attn.out_proj]
        matrices += [layer.ffn.fc1, layer.ffn.fc2]
    for layer in copy.decoder_layers:
        matrices.append(layer.cross_attn.kv_proj)
        matrices += [layer.self_attn.q_proj, layer.self_attn.kv_proj, layer.self_attn.out_proj]
        matrices += [layer.cross_attn.q_proj, layer.cross_attn.out_proj, layer.ffn.fc1, layer.ffn.fc2]
    with torch.no_grad():
        for module in matrices:
            w = module.weight
            if weight_type == "bf16":
                w.copy_(w.to(torch.bfloat16).float())
                if bf16_computes_in_bf16():  # the dot products see bf16 activations too
                    module.forward = lambda x, m=module: F.linear(x.bfloat16().float(), m.weight, m.bias)
            else:
                scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
                w.copy_(torch.round(w / scale[:, None]).clamp(-127, 127) * scale[:, None])
                if int8_computes_in_int8():  # the int8 products see uint8 activations too
                    module.forward = lambda x, m=module: F.linear(uint8_rows(x), m.weight, m.bias)
    return copy


def uint8_rows(x: torch.Tensor) -> torch.Tensor:
    """x (..., K) as the int8 products see it: each row quantized to 256 levels between its min and
    max (round half to even), then dequantized."""
    low, high = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    spread = high - low
    inverse = torch.where(spread > 0, 255.0 / spread, torch.zeros_like(spread))
    levels = torch.round((x - low) * inverse).clamp(0, 255)
    return low + torch.where(spread > 0, spread / 255.0, torch.zeros_like(spread)) * levels


def test_pack_panels_layout():
    weight = torch.arange(70 * 3, dtype=torch.float32).view(70, 3)  # (out 70, in 3)
    panels = pack_panels(weight)
    assert panels.shape == (2, 3, 64)
    for n in range(70):
        for k in range(3):
            assert panels[n // 64, k, n % 64] == weight[n, k]
    assert panels[1, :, 6:].abs().sum() == 0


def test_pack_groups_layout_bf16_pairs():
    weight = torch.arange(70 * 3, dtype=torch.float32).view(70, 3).to(torch.bfloat16)  # (out 70, in 3)
    pairs = pack_groups(weight, 2)
    assert pairs.shape == (2, 2, 64, 2) and pairs.dtype == torch.bfloat16
    for n in range(70):
        for k in range(3):
            assert pairs[n // 64, k // 2, n % 64, k % 2] == weight[n, k]
    assert pairs[:, 1, :, 1].abs().sum() == 0  # the padded row k = 3


def test_pack_groups_layout_int8_quads():
    weight = (torch.arange(70 * 5).view(70, 5) % 251 - 125).to(torch.int8)  # (out 70, in 5)
    quads = pack_groups(weight, 4)
    assert quads.shape == (2, 2, 64, 4) and quads.dtype == torch.int8
    for n in range(70):
        for k in range(5):
            assert quads[n // 64, k // 4, n % 64, k % 4] == weight[n, k]
    assert quads[:, 1, :, 1:].abs().sum() == 0 and quads[1, :, 6:].abs().sum() == 0  # padding


@pytest.mark.parametrize("architecture", list(AR_ARCHITECTURES))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("batch", [1, 3])
def test_ar_step_logits_match_model(shape, batch, architecture):
    model = model_for(shape, architecture=architecture)
    src, lengths = sources(1, batch, model.config.vocab_size)
    native = NativeDecoder.for_model(model)
    with torch.inference_mode():
        encoder_out, memory, expected_caches, caches, tokens = ar_start(model, src, lengths, 9)
        for step in range(8):
            expected = model.ar_step(tokens, step, encoder_out, expected_caches)
            got = native.ar_step(tokens, step, memory, caches)
            assert_float32_close(got, expected)
            for ours, theirs in zip(caches, expected_caches):
                torch.testing.assert_close(ours.keys[:, :, : step + 1], theirs.keys[:, :, : step + 1])
            tokens = expected.argmax(-1)


@pytest.mark.parametrize("architecture", list(AR_ARCHITECTURES))
@pytest.mark.parametrize("threads", [1, 2])
def test_ar_greedy_step_is_argmax_and_log_softmax_of_model_logits(threads, architecture):
    """The greedy choice without logits == argmax over the non-excluded ids of the model's step
    logits (the forced id where forced) and that token's log-softmax over the whole vocabulary."""
    model = model_for("medium", seed=6, architecture=architecture)
    batch = 6
    src, lengths = sources(6, batch, model.config.vocab_size)
    native = NativeDecoder.for_model(model)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            encoder_out, memory, expected_caches, caches, tokens = ar_start(model, src, lengths, 7)
            for step in range(6):
                logits = model.ar_step(tokens, step, encoder_out, expected_caches)
                log_probs = F.log_softmax(logits, -1)
                # exclude the specials and the first sentence's own favourite, so exclusion decides something
                excluded = torch.tensor([model.config.mask_id, model.config.pad_id, int(log_probs[0].argmax())])
                forced = torch.arange(batch) % 3 == step % 3
                expected_tokens = log_probs.index_fill(1, excluded, float("-inf")).argmax(-1)
                expected_tokens[forced] = model.config.eos_id
                got_tokens, got_scores = native.ar_greedy_step(
                    tokens, step, memory, caches, excluded, forced, model.config.eos_id
                )
                assert torch.equal(got_tokens, expected_tokens)
                assert not set(got_tokens[~forced].tolist()) & set(excluded.tolist())
                expected_scores = log_probs.gather(1, expected_tokens[:, None]).squeeze(1)
                scale = max(1.0, float(logits.abs().amax()))  # rounding grows with the logits (no final norm)
                torch.testing.assert_close(got_scores, expected_scores, rtol=1e-4, atol=1e-4 * scale)
                tokens = expected_tokens
            with pytest.raises(ValueError, match="excluded id"):
                native.ar_greedy_step(tokens, 6, memory, caches, torch.tensor([-1]), forced, model.config.eos_id)
            with pytest.raises(ValueError, match="forced must be bool"):
                native.ar_greedy_step(tokens, 6, memory, caches, excluded, forced[:2], model.config.eos_id)
    finally:
        torch.set_num_threads(threads_before)


@pytest.mark.parametrize("architecture", list(AR_ARCHITECTURES))
@pytest.mark.parametrize("threads", [1, 2])
def test_ar_topk_step_is_the_top_k_of_the_model_log_softmax(threads, architecture):
    """A beam step's candidates without logits == BeamChoice.choose of the model's step logits (an
    independent torch log_softmax + topk): the same ids in the same order (no ties in random
    logits), log-probabilities to float32 rounding; forced rows hold the forced id alone, then
    -inf; excluded ids never appear; k above the vocabulary gives the whole vocabulary."""
    model = model_for("medium", seed=8, architecture=architecture)
    batch, vocab = 6, model.config.vocab_size
    src, lengths = sources(7, batch, vocab)
    native = NativeDecoder.for_model(model)
    eos = model.config.eos_id
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            encoder_out, memory, expected_caches, caches, tokens = ar_start(model, src, lengths, 7)
            for step, k in enumerate([1, 2, 8, 8, vocab + 3]):
                logits = model.ar_step(tokens, step, encoder_out, expected_caches)
                # the specials and the first row's favourite excluded, so exclusion decides something
                excluded = torch.tensor([model.config.mask_id, model.config.pad_id, int(logits[0].argmax())])
                forced = torch.arange(batch) % 3 == step % 3
                choice = BeamChoice(excluded, forced, eos, k)
                expected_ids, expected_scores = choice.choose(logits)
                got_ids, got_scores = native.ar_topk_step(tokens, step, memory, caches, excluded, forced, eos, k, False)
                assert got_ids.shape == expected_ids.shape == (batch, min(k, vocab))
                possible = expected_scores > float("-inf")
                assert torch.equal(got_ids[possible], expected_ids[possible])
                assert torch.equal(got_scores > float("-inf"), possible)
                scale = max(1.0, float(logits.abs().amax()))  # rounding grows with the logits (no final norm)
                torch.testing.assert_close(
                    got_scores[possible], expected_scores[possible], rtol=1e-4, atol=1e-4 * scale
                )
                assert (got_ids[forced, 0] == eos).all() and possible[forced].sum() == forced.sum()
                assert not set(got_ids[~forced][possible[~forced]].tolist()) & set(excluded.tolist())
                for row in got_ids.tolist():  # every id at most once, within the vocabulary
                    assert len(set(row)) == len(row) and 0 <= min(row) and max(row) < vocab
                tokens = expected_ids[:, 0]
            with pytest.raises(ValueError, match="k must be >= 1"):
                native.ar_topk_step(tokens, 5, memory, caches, excluded, forced, eos, 0, False)
    finally:
        torch.set_num_threads(threads_before)


def test_ar_topk_step_follows_torch_on_rows_with_nan():
    """Rows whose logits hold NaN take torch's rules (BeamChoice.choose). Token 9's embedding is NaN
    (tied to the output projection): a row fed 9 is NaN throughout, every other row has NaN at id 9
    only. With nan_as_impossible the NaN log-probabilities count as -inf (a row with any NaN has
    no possible candidate, a forced one included); without, a row with any NaN has
    NaN log-probabilities only (torch's log_softmax), and NaN ranks first, as in torch.topk."""
    model = model_for("tiny", seed=3)
    vocab, eos = model.config.vocab_size, model.config.eos_id
    with torch.no_grad():
        model.embed_tokens.weight[9].fill_(float("nan"))
    native = NativeDecoder.for_model(model)
    src, lengths = sources(2, 3, vocab)
    tokens = torch.tensor([9, 5, 9])
    forced = torch.tensor([False, False, True])
    excluded = torch.tensor([model.config.pad_id])
    with torch.inference_mode():
        for nan_as_impossible in (True, False):
            encoder_out, memory, expected_caches, caches, _ = ar_start(model, src, lengths, 3)
            logits = model.ar_step(tokens, 0, encoder_out, expected_caches)
            assert logits[0].isnan().all() and logits[1].isnan().sum() == 1
            choice = BeamChoice(excluded, forced, eos, 4, nan_as_impossible)
            expected_ids, expected_scores = choice.choose(logits)
            got_ids, got_scores = native.ar_topk_step(
                tokens, 0, memory, caches, excluded, forced, eos, 4, nan_as_impossible
            )
            torch.testing.assert_close(got_scores, expected_scores, equal_nan=True, rtol=1e-5, atol=1e-5)
            if nan_as_impossible:
                assert (got_scores == float("-inf")).all()
            else:
                assert got_scores[:2].isnan().all() and int(got_ids[2, 0]) == eos


def _beam_reorders(rows: int, beam: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Reorders a beam search makes: each sentence's rows from its own beams (any of them, repeats),
    then with sentences leaving (the kept sentences' rows, compacted), and indices of no beam search
    (a row read after an earlier row replaced it; rows past the kept ones read)."""
    groups = rows // beam
    within = torch.randint(0, beam, (groups, beam), generator=generator) + torch.arange(groups)[:, None] * beam
    kept_groups = torch.tensor([g for g in range(groups) if g % 3 != 1])
    leaving = torch.randint(0, beam, (len(kept_groups), beam), generator=generator) + kept_groups[:, None] * beam
    return [
        within.view(-1),
        leaving.view(-1),
        torch.arange(rows),
        torch.randint(0, rows, (rows,), generator=generator),
        torch.randint(0, rows, (rows // 2,), generator=generator),
        torch.arange(rows).flip(0),
        torch.empty(0, dtype=torch.long),
    ]


def greedy_search_both_ways(model, weight_type: str, src, lengths, limits) -> list[tuple]:
    """AR greedy search of ``src`` under ``limits`` (B,) int64 on fresh native passes: in one call
    (``ar_greedy_search``), then one step at a time (``ar.greedy_steps``); each as (tokens (B, T),
    summed log-probabilities (B,), lengths (B,))."""
    banned = torch.tensor(janus_rules(model).blocked_ids)
    found = []
    for stepwise in (False, True):
        decoder_passes = passes.PassChoice(model, weight_type).passes()
        with torch.inference_mode():
            decoder_passes.bind(decoder_passes.encode(src, lengths))
            if stepwise:
                found.append(ar.greedy_steps(model, decoder_passes, limits, banned))
            else:
                found.append(decoder_passes.ar_greedy_search(limits, banned))
    return found


@pytest.mark.parametrize("weight_type", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("architecture", list(AR_ARCHITECTURES))
def test_greedy_search_in_one_call_equals_the_stepwise_loop(architecture, weight_type):
    """decoder_ar_greedy_search runs AR greedy search to its end in one native call, each sentence
    leaving the pass when it finishes; ar.greedy_steps runs the same native steps one call at a time
    (rows leaving once a quarter finished, their caches reordered). The same tokens, and bitwise the
    same summed log-probabilities and lengths. The limits differ per sentence (eos forced there), so
    sentences leave the one-call search at different steps, three of them before its caches grow
    past their first 32 positions (dropping those sentences' rows) and the longest up to the
    model's last position (63 tokens with the query stream one position ahead)."""
    model = model_for("medium", seed=6, architecture=architecture)
    config = model.config
    src, lengths = sources(6, 6, config.vocab_size)
    limits = torch.tensor([1, 2, 5, 33, 40, 63])
    found = greedy_search_both_ways(model, weight_type, src, lengths, limits)
    (tokens, log_probs, counts), (expected_tokens, expected_log_probs, expected_counts) = found
    assert tokens.shape == (6, 63) and tokens.dtype == torch.long
    assert torch.equal(tokens, expected_tokens) and torch.equal(counts, expected_counts)
    assert torch.equal(log_probs, expected_log_probs)
    assert (counts <= limits).all() and counts.unique().numel() > 1
    ends = tokens[torch.arange(6), counts - 1]
    assert (ends == config.eos_id).all()  # each sentence's last token is its eos, pad after it
    after = torch.arange(63)[None, :] >= counts[:, None]
    assert (tokens[after] == config.pad_id).all() and not (tokens[~after] == config.pad_id).any()
    assert ((tokens == config.eos_id).sum(1) == 1).all()  # one eos per sentence: none before its end


def test_greedy_search_with_shared_memory_entries_equals_their_copies():
    """``memory_rows``: rows that share a sentence's encoder memory entry decode as rows with their own copy."""
    model = model_for("medium", seed=4)
    native = NativeDecoder.for_model(model, "int8")
    src, lengths = sources(4, 2, model.config.vocab_size)
    config, banned = model.config, torch.tensor(janus_rules(model).blocked_ids)
    rows, limits = torch.tensor([1, 0, 1]), torch.tensor([7, 12, 3])
    ids = (config.bos_id, config.eos_id, config.pad_id)
    with torch.inference_mode():
        memory = NativeDecoder.memory(native.encode(src, lengths))
        shared = native.ar_greedy_search(memory, limits, banned, *ids, memory_rows=rows)
        copied = native.ar_greedy_search(NativeDecoder.select_memory(memory, rows), limits, banned, *ids)
    for got, expected in zip(shared, copied):
        assert torch.equal(got, expected)


def test_greedy_search_with_nan_gives_the_stepwise_loops_nan():
    """A model whose decoding meets NaN: the one-call search gives the step-by-step loop's tokens,
    lengths and finite sums, and NaN where it has NaN (NaN's bits are not kept: probe 28 saw
    0xffffffff against 0x7fc00000, and the loop itself writes both, by the steps its rows saw)."""
    model = model_for("tiny", seed=3)
    src, lengths = sources(3, 3, model.config.vocab_size)
    with torch.no_grad():
        model.embed_tokens.weight[int(src[0, 0])] = float("nan")  # (a tied embedding: NaN logits)
    found = greedy_search_both_ways(model, "fp32", src, lengths, torch.tensor([4, 6, 9]))
    (tokens, log_probs, counts), (expected_tokens, expected_log_probs, expected_counts) = found
    assert torch.isnan(log_probs).any()
    torch.testing.assert_close(log_probs, expected_log_probs, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(tokens, expected_tokens) and torch.equal(counts, expected_counts)


def eos_first_model(**overrides):
    """A random model whose every sentence chooses eos at its first step: its final norm outputs eos's
    embedding (tied output projection) whatever its input."""
    model = random_model(0, **overrides)
    with torch.no_grad():
        model.decoder_norm.weight.zero_()
        model.decoder_norm.bias.copy_(model.embed_tokens.weight[model.config.eos_id] * 10)
    return model


def test_greedy_search_memory_follows_what_is_decoded_not_the_length_limit():
    """Probe 28: the one-call search reserved its key/value caches for batch x the longest limit up
    front; with a model of 65,536 positions and a large max_len_b that is terabytes, refused by the
    allocator although every sentence ends at its first step. Its caches grow as decoding goes (as
    the step-by-step loop's LayerCache), so the search runs in a few MB."""
    model = eos_first_model(d_model=32, num_heads=2, ffn_dim=32, max_target_positions=1 << 16)
    batch = 4096
    src = torch.randint(5, model.config.vocab_size, (batch, 4), generator=torch.Generator().manual_seed(0))
    hypotheses = engine_decode(model, src, torch.full((batch,), 4), max_len_a=0.0, max_len_b=60_000)
    assert hypotheses.tokens == [[]] * batch  # eos first: no tokens (the caches would be 2 x 31 GB per layer)


def _interrupted_long_search(tmp_path, setup: str, caught: str, signal_number: int, mode: str = "ar") -> str:
    """Run a greedy (or, ``mode`` "spec", speculative) search of many minutes in a subprocess
    (``setup``: its signal set-up, lines of Python), send it ``signal_number`` a second into the
    search, and return what it printed: ``caught`` where the search raised that exception,
    ``finished`` where it returned."""
    import time

    script = tmp_path / "long_search.py"
    decode = "mode='spec', speculative=SpeculativeOptions(speculate_up_to=64)" if mode == "spec" else "mode='ar'"
    script.write_text(
        "import signal, sys, time, torch\n" + setup + f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from conftest import random_model\n"
        "from janus_fast.generation import generate\n"
        "torch.set_num_threads(1)\n"
        "model = random_model(0, d_model=64, num_heads=2, ffn_dim=64, max_target_positions=1 << 14)\n"
        "with torch.no_grad():\n"
        "    model.embed_tokens.weight[model.config.eos_id] = 0.0  # eos never chosen: every step runs\n"
        "src = torch.randint(5, model.config.vocab_size, (64, 4))\n"
        "print('searching', flush=True)\n"
        "try:\n"
        "    from janus_fast.decoding.options import SpeculativeOptions\n"
        f"    generate(model, src, torch.full((64,), 4), max_len_a=0.0, max_len_b=16_000, {decode})\n"
        "    print('finished')\n"
        f"except {caught}:\n"
        f"    print({caught!r}, flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "searching"
    time.sleep(1.0)
    process.send_signal(signal_number)
    out, _ = process.communicate(timeout=600)  # the whole search takes many minutes: never reached
    assert process.returncode == 0
    return out.strip()


@pytest.mark.parametrize("mode", ["ar", "spec"])
def test_ctrl_c_stops_a_long_greedy_search(tmp_path, mode):
    """The one-call searches (AR greedy, speculative) ask Python for pending signals between their
    steps or rounds (past their first 200 ms): SIGINT raises KeyboardInterrupt within about a tenth of
    a second of a step, not after a search of minutes (probe 28: 91 s)."""
    import signal

    # Python's KeyboardInterrupt handler, as in a terminal: a process started from a background job
    # of a non-interactive shell (a CI runner's) inherits SIGINT ignored, and Python then leaves it so
    setup = "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    found = _interrupted_long_search(tmp_path, setup, "KeyboardInterrupt", signal.SIGINT, mode)
    assert found == "KeyboardInterrupt"


@pytest.mark.parametrize("sigint", ["SIG_IGN", "SIG_DFL"])
def test_a_signal_handlers_own_exception_stops_a_long_greedy_search(tmp_path, sigint):
    """A handler's exception raised during the one-call search comes out of the call as itself (a
    deadline's own exception, the CLI's SystemExit for SIGTERM), whatever SIGINT's disposition: it was
    replaced by KeyboardInterrupt, or, with SIGINT ignored (a background job of a script) or left at
    the default, dropped, and the search's partial outputs were returned as translations."""
    import signal

    setup = (
        f"signal.signal(signal.SIGINT, signal.{sigint})\n"
        "class Deadline(Exception):\n"
        "    pass\n"
        "def on_deadline(signum, frame):\n"
        "    raise Deadline()\n"
        "signal.signal(signal.SIGUSR1, on_deadline)\n"
    )
    assert _interrupted_long_search(tmp_path, setup, "Deadline", signal.SIGUSR1) == "Deadline"


def test_shipped_model_greedy_search_in_one_call_equals_the_stepwise_loop(monkeypatch):
    """The shipped model on 100 test sentences (each ending at its own eos), fp32 and int8: the
    one-call greedy search gives the stepwise loop's translations and scores exactly, in batches
    and one sentence at a time."""
    import gzip

    from janus_fast import Translator

    with gzip.open(os.path.join(MULTI30K, "test_2016_flickr.de.gz"), "rt", encoding="utf-8") as handle:
        sentences = [line.strip() for line, _ in zip(handle, range(100))]
    calls = []
    one_call = passes.NativePasses.ar_greedy_search

    def counted(self, limits, banned):
        calls.append(len(limits))
        return one_call(self, limits, banned)

    for precision in ("fp32", "int8"):
        translator = Translator.from_pretrained(precision=precision)
        monkeypatch.setattr(passes.NativePasses, "ar_greedy_search", counted)
        fast = translator.translate(sentences, mode="ar", return_scores=True)
        alone = [translator.translate([s], mode="ar", return_scores=True)[0] for s in sentences[:10]]
        monkeypatch.setattr(passes.NativePasses, "ar_greedy_search", lambda self, limits, banned: None)
        stepwise = translator.translate(sentences, mode="ar", return_scores=True)
        assert fast == stepwise and alone == stepwise[:10], precision
        assert sum(calls) == 110 and len({len(text.split()) for text, _ in fast}) > 5
        calls.clear()


@pytest.mark.parametrize("threads", [1, 2])
def test_native_cache_reorder_equals_the_layer_cache_reorder(threads):
    """``NativeDecoder.reorder_caches`` (in place, changed rows only) keeps the same rows as
    ``LayerCache.reorder`` (index_select and copy back), bit for bit over the filled positions, for a
    beam search's reorders and for arbitrary indices; bad indices are refused before any write."""
    from janus_fast.model import LayerCache

    generator = torch.Generator().manual_seed(9)
    rows, heads, head_dim, capacity, length = 24, 3, 5, 16, 7
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for index in _beam_reorders(rows, 4, generator):
            caches, expected = [], []
            for _ in range(3):
                cache = LayerCache(rows, heads, capacity, head_dim, torch.empty(0))
                cache.append(*(torch.randn(rows, heads, length, head_dim, generator=generator) for _ in range(2)))
                twin = LayerCache(rows, heads, capacity, head_dim, torch.empty(0))
                twin.append(cache.keys[:, :, :length].clone(), cache.values[:, :, :length].clone())
                caches.append(cache)
                expected.append(twin)
            NativeDecoder.reorder_caches(caches, index)
            for cache, twin in zip(caches, expected):
                twin.reorder(index)
                assert cache.keys.shape[0] == len(index) and cache.keys.is_contiguous()
                assert torch.equal(cache.keys[:, :, :length], twin.keys[:, :, :length])
                assert torch.equal(cache.values[:, :, :length], twin.values[:, :, :length])
        cache = LayerCache(4, heads, capacity, head_dim, torch.empty(0))
        cache.append(*(torch.randn(4, heads, 2, head_dim, generator=generator) for _ in range(2)))
        before = cache.keys.clone()
        for bad, message in (
            (torch.tensor([0, 4]), "outside"),
            (torch.tensor([0.0]), "int64"),
            (torch.arange(5), "rows kept"),
        ):
            with pytest.raises(ValueError, match=message):
                NativeDecoder.reorder_caches([cache], bad)
        assert torch.equal(cache.keys, before)
        op = torch.ops.janus_fast.reorder_caches_.default
        storage = torch.randn(5, heads, capacity, head_dim)
        for aliased in ([cache.keys, cache.keys], [storage[0:4], storage[1:5]]):  # would be reordered twice
            with pytest.raises(ValueError, match="share memory"):
                op(aliased, torch.tensor([1, 0, 0, 3]), 2)
        assert torch.equal(cache.keys, before)
        torch.library.opcheck(
            op,
            ([cache.keys, cache.values], torch.tensor([1, 0, 0, 3]), 2),
            test_utils=("test_schema", "test_faketensor"),
        )
    finally:
        torch.set_num_threads(threads_before)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_nar_logits_match_model_at_requested_positions(shape, architecture):
    model = model_for(shape, seed=2, architecture=architecture)
    batch, width = 4, 10
    src, src_lengths = sources(2, batch, model.config.vocab_size)
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([10, 3, 7, 2])
    tokens = torch.randint(5, model.config.vocab_size, (batch, width), generator=generator)
    tokens[torch.rand(batch, width, generator=generator) < 0.5] = model.config.mask_id
    native = NativeDecoder.for_model(model)
    with torch.inference_mode():
        encoder_out = model.encode(src, src_lengths)
        expected = model.nar_logits(tokens, lengths, encoder_out).reshape(batch * width, -1)
        index, flat_tokens, positions, offsets = packed(tokens, lengths)
        memory = NativeDecoder.memory(encoder_out)
        everything = native.nar_logits(flat_tokens, positions, offsets, memory, torch.arange(len(index)))
        assert_float32_close(everything, expected[index])
        chosen = torch.tensor([5, 0, 17, 5, len(index) - 1])  # any order, repeats allowed
        some = native.nar_logits(flat_tokens, positions, offsets, memory, chosen)
        assert_float32_close(some, expected[index[chosen]])
        none = native.nar_logits(flat_tokens, positions, offsets, memory, torch.empty(0, dtype=torch.long))
        assert none.shape == (0, model.config.vocab_size)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_nar_fill_is_argmax_and_log_softmax_of_model_logits(shape, architecture):
    """The fill without logits == argmax over v != mask of the model's logits, and that token's
    log-softmax over the whole vocabulary."""
    model = model_for(shape, seed=4, architecture=architecture)
    batch, width, mask_id = 5, 9, model.config.mask_id
    src, src_lengths = sources(4, batch, model.config.vocab_size)
    generator = torch.Generator().manual_seed(5)
    lengths = torch.tensor([9, 2, 5, 7, 3])
    tokens = torch.randint(5, model.config.vocab_size, (batch, width), generator=generator)
    tokens[torch.rand(batch, width, generator=generator) < 0.6] = mask_id
    native = NativeDecoder.for_model(model)
    with torch.inference_mode():
        encoder_out = model.encode(src, src_lengths)
        index, flat_tokens, positions, offsets = packed(tokens, lengths)
        wanted = (flat_tokens == mask_id).nonzero().squeeze(1)
        log_probs = F.log_softmax(model.nar_logits(tokens, lengths, encoder_out).reshape(batch * width, -1)[index], -1)
        expected_tokens = log_probs[wanted].index_fill(1, torch.tensor([mask_id]), float("-inf")).argmax(-1)
        threads_before = torch.get_num_threads()
        try:
            for threads in (1, 2):  # one tile, or the rows split over threads
                torch.set_num_threads(threads)
                got_tokens, got_scores = native.nar_fill(
                    flat_tokens, positions, offsets, NativeDecoder.memory(encoder_out), wanted, mask_id
                )
                assert torch.equal(got_tokens, expected_tokens)
                expected_scores = log_probs[wanted].gather(1, expected_tokens[:, None]).squeeze(1)
                torch.testing.assert_close(got_scores, expected_scores)
        finally:
            torch.set_num_threads(threads_before)
        empty = native.nar_fill(flat_tokens, positions, offsets, NativeDecoder.memory(encoder_out), wanted[:0], 1)
        assert empty[0].shape == (0,) and empty[1].shape == (0,)
        # -1: over the whole vocabulary (fairseq's fill); the mask token itself is then a candidate
        favourite = log_probs[wanted].argmax(-1)
        got_tokens, _ = native.nar_fill(flat_tokens, positions, offsets, NativeDecoder.memory(encoder_out), wanted, -1)
        assert torch.equal(got_tokens, favourite)
        with pytest.raises(ValueError, match="exclude_id"):
            native.nar_fill(flat_tokens, positions, offsets, NativeDecoder.memory(encoder_out), wanted, -2)


def test_nar_fill_follows_torch_where_logits_are_nan():
    """A row holding NaN leaves the vectorised reduction for torch's rules (its log-softmax is NaN
    everywhere, so the argmax is the first id that is not excluded, with a NaN score); here every
    row, through one NaN vocabulary row of the tied embedding."""
    model = model_for("medium", seed=4, architecture=next(iter(ARCHITECTURES)))
    nan_id, mask_id = 9, model.config.mask_id
    with torch.no_grad():
        model.embed_tokens.weight[nan_id] = float("nan")
    src, src_lengths = sources(4, 3, model.config.vocab_size)
    src[src == nan_id] = nan_id + 1
    lengths = torch.tensor([6, 4, 5])
    tokens = torch.full((3, 6), mask_id)
    native = NativeDecoder.for_model(model)
    with torch.inference_mode():
        encoder_out = model.encode(src, src_lengths)
        index, flat_tokens, positions, offsets = packed(tokens, lengths)
        log_probs = F.log_softmax(model.nar_logits(tokens, lengths, encoder_out).reshape(3 * 6, -1)[index], -1)
        expected_tokens = log_probs.index_fill(1, torch.tensor([mask_id]), float("-inf")).argmax(-1)
        assert torch.isnan(log_probs).all()
        wanted = torch.arange(len(index))
        got_tokens, got_scores = native.nar_fill(
            flat_tokens, positions, offsets, NativeDecoder.memory(encoder_out), wanted, mask_id
        )
    assert torch.equal(got_tokens, expected_tokens)
    assert torch.isnan(got_scores).all()


def ar_score_inputs(model, seed: int):
    """Candidates ``<bos> y <eos>`` of 5 rows (lengths 2..9, any ids in y, garbage past each
    length), their sources, and the packed content tokens / positions / offsets / targets."""
    batch, width = 5, 9
    src, src_lengths = sources(seed, batch, model.config.vocab_size)
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 2, 5, 7, 3])
    tokens = torch.randint(0, model.config.vocab_size, (batch, width), generator=generator)
    tokens[:, 0] = model.config.bos_id
    tokens[torch.arange(batch), lengths - 1] = model.config.eos_id
    index, contexts, positions, offsets = packed(tokens, lengths - 1)
    return src, src_lengths, tokens, lengths, (contexts, positions, offsets, tokens.reshape(-1)[index + 1])


def model_ar_log_probs(model, tokens, lengths, encoder_out):
    """(P,) the model's teacher-forced P_AR log-probability of each next token, row by row."""
    rows = torch.where(torch.arange(tokens.shape[1])[None, :] < lengths[:, None], tokens, model.config.pad_id)
    log_probs = F.log_softmax(model.output_logits(model.ar_hidden(rows, lengths, encoder_out)), -1)
    predicted = log_probs.gather(2, rows[:, 1:, None]).squeeze(2)
    return predicted[torch.arange(tokens.shape[1] - 1)[None, :] < (lengths - 1)[:, None]]


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_ar_scores_are_the_model_teacher_forced_log_probs(shape, architecture):
    """decoder_ar_score == JanusModel.ar_hidden -> vocabulary -> log-softmax at each next token,
    for one tile or rows split over threads."""
    model = model_for(shape, seed=9, architecture=architecture)
    src, src_lengths, tokens, lengths, (contexts, positions, offsets, targets) = ar_score_inputs(model, 9)
    native = NativeDecoder.for_model(model)
    threads_before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            encoder_out = model.encode(src, src_lengths)
            expected = model_ar_log_probs(model, tokens, lengths, encoder_out)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                got = native.ar_scores(contexts, positions, offsets, NativeDecoder.memory(encoder_out), targets)
                assert_float32_close(got, expected)
            memory = NativeDecoder.memory(encoder_out)
            with pytest.raises(ValueError, match="target id"):
                native.ar_scores(contexts, positions, offsets, memory, targets.clone().fill_(10_000))
            with pytest.raises(ValueError, match="targets must be"):
                native.ar_scores(contexts, positions, offsets, memory, targets[:-1])
            with pytest.raises(ValueError, match="row_offsets"):
                native.ar_scores(contexts, positions, offsets.flip(0), memory, targets)
            with pytest.raises(ValueError, match="position"):
                native.ar_scores(contexts, positions + 10_000, offsets, memory, targets)
    finally:
        torch.set_num_threads(threads_before)


@pytest.mark.parametrize("weight_type", ["bf16", "int8"])
def test_ar_scores_with_low_precision_weights_equal_the_rounded_model(weight_type):
    model = model_for("medium", seed=10)
    rounded = rounded_model(model, weight_type)
    loose = bf16_computes_in_bf16() if weight_type == "bf16" else int8_computes_in_int8()
    tolerance = dict(rtol=2e-2, atol=2e-2) if loose else dict(rtol=1e-4, atol=2e-4)
    src, src_lengths, tokens, lengths, (contexts, positions, offsets, targets) = ar_score_inputs(model, 10)
    with torch.inference_mode():
        encoder_out = rounded.encode(src, src_lengths)
        expected = model_ar_log_probs(rounded, tokens, lengths, encoder_out)
        full = model_ar_log_probs(model, tokens, lengths, encoder_out)
        native = NativeDecoder.for_model(model, weight_type)
        got = native.ar_scores(contexts, positions, offsets, NativeDecoder.memory(encoder_out), targets)
    torch.testing.assert_close(got, expected, **tolerance)
    assert (got - expected).abs().mean() < 0.2 * (full - expected).abs().mean()  # the rounding is visible


FEED_FORWARD_ROWS = 256  # csrc/cpu/decoder_passes.h kFeedForwardRows: the FFN runs in blocks of this many rows


@pytest.mark.parametrize("weight_type", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("architecture", ["pre_norm_gelu", "post_norm_relu"])
def test_passes_longer_than_one_feed_forward_block(architecture, weight_type):
    """Encoder and NAR passes of 2-3 FFN blocks of rows: the model's values (fp32), and each row's
    logits bit for bit those of the same row decoded in a pass of its own (a row's sums do not depend
    on the block it falls in)."""
    model = model_for("tiny", seed=11, architecture=architecture)
    vocab, batch, width = model.config.vocab_size, 70, 12
    generator = torch.Generator().manual_seed(11)
    src_lengths = torch.randint(8, width + 1, (batch,), generator=generator)
    src = torch.randint(5, vocab, (batch, width), generator=generator)
    src[torch.arange(width)[None, :] >= src_lengths[:, None]] = 0
    lengths = torch.randint(6, width + 1, (batch,), generator=generator)
    tokens = torch.randint(5, vocab, (batch, width), generator=generator)
    tokens[torch.rand(batch, width, generator=generator) < 0.5] = model.config.mask_id
    assert int(src_lengths.sum()) > 2 * FEED_FORWARD_ROWS and int(lengths.sum()) > 2 * FEED_FORWARD_ROWS
    native = NativeDecoder.for_model(model, weight_type)
    with torch.inference_mode():
        encoder_out = native.encode(src, src_lengths)
        index, flat_tokens, positions, offsets = packed(tokens, lengths)
        memory = NativeDecoder.memory(encoder_out)
        everything = native.nar_logits(flat_tokens, positions, offsets, memory, torch.arange(len(index)))
        if weight_type == "fp32":
            reference = model.encode(src, src_lengths)
            real = torch.arange(width)[None, :] < src_lengths[:, None]
            assert_float32_close(encoder_out.states[real], reference.states[real])
            expected = model.nar_logits(tokens, lengths, reference).reshape(batch * width, -1)
            assert_float32_close(everything, expected[index])
        for row in (0, 29, batch - 1):
            alone = native.encode(src[row : row + 1], src_lengths[row : row + 1])
            assert torch.equal(alone.states[0, : src_lengths[row]], encoder_out.states[row, : src_lengths[row]])
            first, last = int(offsets[row]), int(offsets[row + 1])
            row_logits = native.nar_logits(
                flat_tokens[first:last],
                positions[first:last],
                torch.tensor([0, last - first]),
                NativeDecoder.memory(alone),
                torch.arange(last - first),
            )
            assert torch.equal(row_logits, everything[first:last])


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_encoder_matches_model_at_real_positions(shape, architecture):
    model = model_for(shape, seed=8, architecture=architecture)
    src, lengths = sources(8, 4, model.config.vocab_size)
    with torch.inference_mode():
        expected = model.encode(src, lengths)
        got = NativeDecoder.for_model(model).encode(src, lengths)
    real = torch.arange(src.shape[1])[None, :] < lengths[:, None]
    assert_float32_close(got.states[real], expected.states[real])
    for (keys, values), (ref_keys, ref_values) in zip(got.memory_kv, expected.memory_kv):
        assert_float32_close(keys.transpose(1, 2)[real], ref_keys.transpose(1, 2)[real])
        assert_float32_close(values.transpose(1, 2)[real], ref_values.transpose(1, 2)[real])
    assert_float32_close(model.length_logits(got), model.length_logits(expected))


@pytest.mark.parametrize("weight_type", ["bf16", "int8"])
def test_low_precision_weights_equal_model_with_rounded_weights(weight_type):
    """bf16 / int8 storage == the PyTorch model with its matrices rounded the same way. Where bf16
    runs bf16 dot products (int8: int8 ones), the emulation also rounds (quantizes) activations; a
    few of them then round the other way (fp32 sums in another order), so that case gets a looser
    bound and must still be far closer to the emulation than to the fp32 model."""
    model = model_for("medium", seed=4)
    rounded = rounded_model(model, weight_type)
    loose = bf16_computes_in_bf16() if weight_type == "bf16" else int8_computes_in_int8()
    tolerance = dict(rtol=2e-2, atol=2e-2) if loose else dict(rtol=1e-4, atol=2e-4)
    src, lengths = sources(4, 2, model.config.vocab_size)
    native = NativeDecoder.for_model(model, weight_type)
    real = torch.arange(src.shape[1])[None, :] < lengths[:, None]
    with torch.inference_mode():
        encoder_out = rounded.encode(src, lengths)
        torch.testing.assert_close(native.encode(src, lengths).states[real], encoder_out.states[real], **tolerance)
        memory = NativeDecoder.memory(encoder_out)
        caches = model.new_caches(2, 4, encoder_out.states)
        expected_caches = rounded.new_caches(2, 4, encoder_out.states)
        full_caches = model.new_caches(2, 4, encoder_out.states)
        tokens = torch.full((2,), model.config.bos_id)
        for step in range(3):
            expected = rounded.ar_step(tokens, step, encoder_out, expected_caches)
            got = native.ar_step(tokens, step, memory, caches)
            full = model.ar_step(tokens, step, encoder_out, full_caches)
            torch.testing.assert_close(got, expected, **tolerance)
            assert (got - expected).abs().mean() < 0.2 * (full - expected).abs().mean()  # the rounding is visible
            tokens = expected.argmax(-1)


def test_weights_reconverted_after_a_parameter_update():
    model = model_for("tiny")
    first = NativeDecoder.for_model(model)
    assert NativeDecoder.for_model(model) is first
    with torch.no_grad():
        model.decoder_layers[0].ffn.fc1.weight.add_(0.1)
    assert NativeDecoder.for_model(model) is not first


def test_weight_lists_have_the_layout_the_ops_expect():
    """The flattened dataclasses (janus_fast/native/weights.py) have the lengths the C++ layout
    (csrc/cpu/decoder_weights.h) names in its errors: 7 + 27 per decoder layer, 4 + 19 per encoder
    layer + 3 per decoder layer; the op arguments are those flat lists."""
    model = model_for("tiny")
    native = NativeDecoder.for_model(model)
    decoder, encoder = native.weights, native.encoder_weights
    assert native.tensors == flatten(decoder) and native.encoder_tensors == flatten(encoder)
    layer_tensors = {len(flatten(layer)) for layer in decoder.layers}
    encoder_layer_tensors = {len(flatten(layer)) for layer in encoder.layers}
    decoder_global = len(native.tensors) - len(flatten(decoder.layers))
    encoder_global = len(native.encoder_tensors) - len(flatten(encoder.layers)) - len(flatten(encoder.cross_kv))
    assert (decoder_global, layer_tensors, encoder_global, encoder_layer_tensors) == (7, {27}, 4, {19})
    assert {len(flatten(matrix)) for matrix in encoder.cross_kv} == {3}
    assert len(decoder.layers) == len(encoder.cross_kv) == len(model.decoder_layers)
    src, lengths = sources(7, 2, model.config.vocab_size)
    with torch.inference_mode():
        memory = NativeDecoder.memory(native.encode(src, lengths))
        one = (torch.tensor([1]), torch.tensor([0]), torch.tensor([0, 1]))
        with pytest.raises(ValueError, match=rf"expected {decoder_global} \+ 27 \* layers tensors, got 60"):
            torch.ops.janus_fast.decoder_nar_pass(
                native.tensors[:-1], *native._decoder_arguments()[1:], *one, *memory, torch.tensor([0])
            )
        message = rf"expected {encoder_global} \+ 19 \* encoder layers \+ 3 \* decoder layers tensors"
        with pytest.raises(ValueError, match=message):
            encoder_forward(native, native.encoder_tensors[:-1], src, lengths)


def encoder_forward(native: NativeDecoder, tensors: list[torch.Tensor], src: torch.Tensor, lengths: torch.Tensor):
    """The native encoder op on the weight list ``tensors`` with ``native``'s other arguments."""
    options = (native.num_encoder_layers, native.num_heads, native.embed_scale, native.post_norm, native.relu)
    return torch.ops.janus_fast.encoder_forward(tensors, *options, src, lengths)


def broken(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor the native parsers reject in the place of ``tensor``: float64 (an empty one: one value)."""
    return tensor.double() if tensor.numel() else torch.ones(1, dtype=torch.float64)


@pytest.mark.parametrize("weight_type", ["fp32", "int8"])
def test_every_weight_is_read_under_its_python_name(weight_type):
    """The C++ parsers read each tensor of the flat lists as the field the dataclasses put there: with
    any one tensor broken, the op's error names that tensor's field path (``layers.1.ffn.fc1.bias``)."""
    model = model_for("tiny")
    native = NativeDecoder(model, weight_type)
    src, lengths = sources(7, 2, model.config.vocab_size)
    with torch.inference_mode():
        memory = NativeDecoder.memory(native.encode(src, lengths))
    one = (torch.tensor([1]), torch.tensor([0]), torch.tensor([0, 1]))
    arguments = native._decoder_arguments()[1:]
    named = named_tensors(native.weights)
    assert len(named) == len(native.tensors) and len({name for name, _ in named}) == len(named)
    for index, (name, tensor) in enumerate(named):
        weights = list(native.tensors)
        weights[index] = broken(tensor)
        with pytest.raises((ValueError, TypeError), match=rf"^decoder weights: {re.escape(name)} "):
            torch.ops.janus_fast.decoder_nar_pass(weights, *arguments, *one, *memory, torch.tensor([0]))
    named = named_tensors(native.encoder_weights)
    assert [name for name, _ in named][-3:] == [
        f"cross_kv.{len(model.decoder_layers) - 1}.{part}" for part in ("weight", "scale", "bias")
    ]
    for index, (name, tensor) in enumerate(named):
        weights = list(native.encoder_tensors)
        weights[index] = broken(tensor)
        with pytest.raises((ValueError, TypeError), match=rf"^encoder weights: {re.escape(name)} "):
            encoder_forward(native, weights, src, lengths)


def meta(value):
    """``value`` with every tensor (in lists too) moved to the meta device."""
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, (list, tuple)):
        return type(value)(meta(item) for item in value)
    return value


def as_list(value) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


@pytest.mark.parametrize("architecture", ["pre_norm_gelu", "plain_transformer"])
def test_meta_kernels_give_the_shapes_of_the_cpu_ops(architecture):
    """Every decoder op taking tensors has a Meta (shape-only) kernel: with meta tensors it returns empty
    meta tensors of the shapes and dtypes the CPU op returns for the same arguments (and passes
    torch.library.opcheck's schema and FakeTensor tests)."""
    model = model_for("tiny", architecture=architecture)
    native = NativeDecoder.for_model(model)
    batch = 3
    src, lengths = sources(7, batch, model.config.vocab_size)
    with torch.inference_mode():
        memory = NativeDecoder.memory(native.encode(src, lengths))
    caches = model.new_caches(batch, 8, memory[0][0])
    excluded, eos = torch.tensor([model.config.pad_id]), model.config.eos_id
    tokens = torch.tensor([5, 6, 7])
    packed_tokens, positions, offsets = (
        torch.tensor([5, 6, 7, 8, 9]),
        torch.tensor([0, 1, 0, 1, 2]),
        torch.tensor([0, 2, 3, 5]),
    )
    decoder = native._decoder_arguments()
    ar_arguments = (*decoder, native.mask_id, native.query_position_offset, native.query_stream)
    cache_lists = ([cache.keys for cache in caches], [cache.values for cache in caches])
    forced = torch.tensor([False, True, False, False, False])
    calls = {
        "encoder_forward": (
            native.encoder_tensors,
            native.num_encoder_layers,
            *decoder[1:],
            src,
            lengths,
        ),
        "decoder_ar_step": (*ar_arguments, tokens, 0, *memory, *cache_lists),
        "decoder_ar_greedy": (*ar_arguments, tokens, 1, *memory, *cache_lists, excluded, forced[:3], eos),
        "decoder_ar_greedy_search": (*ar_arguments, *memory, torch.tensor([3, 1, 5]), 6, excluded, 1, eos, 0),
        "decoder_ar_topk": (*ar_arguments, tokens, 1, *memory, *cache_lists, excluded, forced[:3], eos, 4, False),
        "decoder_ar_extend": (
            *ar_arguments,
            packed_tokens,
            offsets,
            torch.tensor([2, 2, 2]),
            *memory,
            *cache_lists,
            excluded,
            forced,
            eos,
            torch.tensor([4, -1, 6, 7, 8]),
        ),
        "decoder_nar_pass": (*decoder, packed_tokens, positions, offsets, *memory, torch.tensor([4, 0])),
        "decoder_nar_fill": (*decoder, packed_tokens, positions, offsets, *memory, torch.tensor([4, 0]), -1),
    }
    if native.query_stream:
        calls["decoder_speculative_search"] = (
            *decoder, native.mask_id, native.query_position_offset, *memory, torch.tensor([3, 1, 5]),
            torch.tensor([2, 2, 6]), 6, excluded, 1, eos, 0, 4, 2,
        )  # fmt: skip
        calls["decoder_ar_score"] = (
            *decoder,
            native.mask_id,
            native.query_position_offset,
            packed_tokens,
            positions,
            offsets,
            *memory,
            torch.tensor([1, 2, 3, 4, 5]),
        )
    ops = torch.ops.janus_fast
    names = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("janus_fast::")}
    passes = {name for name in names if name.startswith(("decoder_", "encoder_")) and name != "decoder_isa"}
    assert passes == set(calls) | {"decoder_ar_score", "decoder_speculative_search"}
    for name in passes:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"janus_fast::{name}", "Meta"), name
    no_candidates = (*calls["decoder_ar_extend"][:-1], torch.empty(0, dtype=torch.long))
    for name, arguments in [*calls.items(), ("decoder_ar_extend", no_candidates)]:
        with torch.inference_mode():
            expected = as_list(getattr(ops, name)(*arguments))
        got = as_list(getattr(ops, name)(*meta(arguments)))
        assert [(t.shape, t.dtype, t.device.type) for t in got] == [(t.shape, t.dtype, "meta") for t in expected], name
        # a call mixing meta and CPU tensors (the memory alone on meta) gets meta tensors back, never
        # CPU tensors of uninitialised memory (probe 28)
        mixed = [meta(argument) if argument is memory[0] else argument for argument in arguments]
        if any(argument is memory[0] for argument in arguments):
            assert {t.device.type for t in as_list(getattr(ops, name)(*mixed))} == {"meta"}, name
        # the schema's aliasing (only the caches are written) and the Meta kernel under FakeTensor
        torch.library.opcheck(getattr(ops, name).default, arguments, test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(ValueError, match="one memory tensor per layer"):
        ops.decoder_nar_pass(*meta(calls["decoder_nar_pass"][:8]), [], [], *meta(calls["decoder_nar_pass"][10:]))


ISA_SCRIPT = r"""
import torch, sys
sys.path.insert(0, sys.argv[1])
from test_native_decoder import model_for, sources
from janus_fast.native.decoder import NativeDecoder, cpu_isa
print(cpu_isa())
model = model_for("medium", seed=5)
src, lengths = sources(5, 3, model.config.vocab_size)
with torch.inference_mode():
    enc = model.encode(src, lengths)
    caches = model.new_caches(3, 3, enc.states)
    expected = model.ar_step(torch.tensor([1, 7, 9]), 0, enc, caches)
    got = NativeDecoder.for_model(model).ar_step(torch.tensor([1, 7, 9]), 0, NativeDecoder.memory(enc),
                                                 model.new_caches(3, 3, enc.states))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
"""


@pytest.mark.parametrize("architecture", ["pre_norm_gelu", "plain_transformer"])
def test_rows_sharing_a_memory_entry_equal_rows_with_their_own_copy(architecture):
    """``memory_rows``: every decoder op reading the encoder memory gives, bit for bit, what it gives
    with the memory copied out per row (a sentence's length candidates or beams share its entry; any
    order, repeats, entries no row reads); bad maps are refused with the op's name."""
    model = model_for("tiny", seed=4, architecture=architecture)
    native = NativeDecoder.for_model(model)
    src, lengths = sources(4, 3, model.config.vocab_size)
    memory_rows = torch.tensor([2, 0, 2, 2])  # sentence 1 read by no row
    with torch.inference_mode():
        shared = NativeDecoder.memory(native.encode(src, lengths))
        copied = NativeDecoder.select_memory(shared, memory_rows)
        caches, copied_caches = (model.new_caches(4, 8, shared[0][0]) for _ in range(2))
        tokens = torch.tensor([5, 6, 7, 8])
        assert torch.equal(
            native.ar_step(tokens, 0, shared, caches, memory_rows), native.ar_step(tokens, 0, copied, copied_caches)
        )
        for ours, theirs in zip(caches, copied_caches):
            assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
        rule = (torch.tensor([model.config.pad_id]), torch.tensor([False, True, False, False]), model.config.eos_id)
        got = native.ar_greedy_step(tokens, 1, shared, caches, *rule, memory_rows)
        assert all(map(torch.equal, got, native.ar_greedy_step(tokens, 1, copied, copied_caches, *rule)))
        packed_tokens, positions, offsets = (
            torch.tensor([5, 6, 7, 8, 9, 10]),
            torch.tensor([0, 1, 0, 0, 1, 2]),
            (torch.tensor([0, 2, 3, 4, 6])),
        )
        outputs = torch.arange(6)
        assert torch.equal(
            native.nar_logits(packed_tokens, positions, offsets, shared, outputs, memory_rows),
            native.nar_logits(packed_tokens, positions, offsets, copied, outputs),
        )
        got = native.nar_fill(packed_tokens, positions, offsets, shared, outputs, -1, memory_rows)
        assert all(map(torch.equal, got, native.nar_fill(packed_tokens, positions, offsets, copied, outputs, -1)))
        extend = (packed_tokens, offsets, torch.tensor([2, 2, 2, 2]))
        forced = torch.zeros(6, dtype=torch.bool)
        got = native.ar_extend(*extend, shared, caches, rule[0], forced, rule[2], None, memory_rows)
        expected = native.ar_extend(*extend, copied, copied_caches, rule[0], forced, rule[2])
        assert all(map(torch.equal, got, expected))
        if native.query_stream:
            targets = torch.tensor([6, 7, 8, 9, 10, 11])
            assert torch.equal(
                native.ar_scores(packed_tokens, positions, offsets, shared, targets, memory_rows),
                native.ar_scores(packed_tokens, positions, offsets, copied, targets),
            )
        for bad, message in [
            (torch.tensor([0, 1, 3, 0]), "memory row 3 outside"),
            (torch.tensor([0, 1, 2]), "memory_rows must be int64 \\(4,\\)"),
            (torch.tensor([0.0, 1.0, 2.0, 0.0]), "memory_rows must be int64"),
            (torch.tensor([-1, 0, 0, 0]), "memory row -1 outside"),
        ]:
            with pytest.raises(ValueError, match=f"decoder_nar_pass: {message}"):
                native.nar_logits(packed_tokens, positions, offsets, shared, outputs, bad)
            with pytest.raises(ValueError, match=f"decoder_ar_step: {message}"):
                native.ar_step(tokens, 2, shared, caches, bad)
    torch.library.opcheck(
        torch.ops.janus_fast.decoder_nar_pass.default,
        (*native._decoder_arguments(), packed_tokens, positions, offsets, *shared, outputs),
        {"memory_rows": memory_rows},
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("isa", ISA_NAMES)
def test_every_isa_path_matches_model(isa):
    order = list(ISA_NAMES)
    if order.index(isa) > order.index(cpu_isa()):
        pytest.skip(f"this CPU runs {cpu_isa()}, not {isa}")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JANUS_FAST_ISA=isa)
    result = subprocess.run([sys.executable, "-c", ISA_SCRIPT, here], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == isa


# a pre-norm model without final norms (no real configuration: fairseq's pre-norm CMLM has them) has
# logits so large that its outputs tie within float32 rounding: the logit tests cover it
@pytest.mark.parametrize("architecture", ["pre_norm_gelu", "post_norm_relu"])
@pytest.mark.parametrize("native", [True, False])
def test_engine_equals_reference_with_and_without_native_passes(native, architecture, monkeypatch):
    if not native:
        monkeypatch.setattr(passes, "unsupported_reason", lambda model: "disabled by the test")
    model = model_for("medium", seed=6, architecture=architecture)
    src, lengths = sources(6, 5, model.config.vocab_size)
    nar = engine_decode(model, src, lengths, mode="nar", iterations=4, length_beam=3)
    assert nar.tokens == mask_predict(model, src, lengths, 4, 3).tokens
    assert engine_decode(model, src, lengths, beam=1).tokens == ar_search(model, src, lengths, beam=1).tokens


def test_bad_inputs_raise_clear_errors():
    model = model_for("tiny")
    native = NativeDecoder.for_model(model)
    src, lengths = sources(7, 2, model.config.vocab_size)
    with torch.inference_mode():
        memory = NativeDecoder.memory(model.encode(src, lengths))
        caches = model.new_caches(2, 4, memory[0][0])
        with pytest.raises(ValueError, match="token id"):
            native.ar_step(torch.tensor([1, 10_000]), 0, memory, caches)
        with pytest.raises(ValueError, match="caches"):
            native.ar_step(torch.tensor([1, 2]), 4, memory, caches)
        with pytest.raises(ValueError, match="output position"):
            native.nar_logits(
                torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([0, 1, 2]), memory, torch.tensor([2])
            )
        with pytest.raises(ValueError, match="row_offsets"):
            native.nar_logits(
                torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([0, 2, 2]), memory, torch.tensor([0])
            )
        with pytest.raises(ValueError, match="memory length"):
            bad = (memory[0], memory[1], torch.tensor([1, 99]))
            native.ar_step(torch.tensor([1, 2]), 0, bad, caches)
        # the one-call greedy search checks its limits, ids and length before it allocates anything
        ids = (model.config.bos_id, model.config.eos_id, model.config.pad_id)
        banned = torch.tensor([model.config.pad_id])
        for limits, max_steps, excluded, special, message in [
            (torch.tensor([0, 2]), 2, banned, ids, r"limit 0 outside \[1, max_steps = 2\]"),
            (torch.tensor([3, 2]), 2, banned, ids, r"limit 3 outside \[1, max_steps = 2\]"),
            (torch.tensor([1.0, 2.0]), 2, banned, ids, "limits must be int64"),
            (torch.tensor([1, 2]), 10**6, banned, ids, r"max_steps 1000000 \(the longest limit\) exceeds the 63 "),
            (torch.tensor([1, 64]), 64, banned, ids, r"max_steps 64 \(the longest limit\) exceeds the 63 tokens"),
            (torch.tensor([1, 2]), -1, banned, ids, "max_steps must be >= 0"),
            (torch.tensor([1, 2]), 2, torch.tensor([10_000]), ids, "excluded id 10000 outside"),
            (torch.tensor([1, 2]), 2, banned, (10_000, *ids[1:]), "bos_id 10000 outside"),
            (torch.tensor([1, 2]), 2, banned, (*ids[:2], -1), "pad_id -1 outside"),
            (torch.tensor([1, 2, 3]), 3, banned, ids, "memory keys/values must be"),
        ]:
            with pytest.raises(ValueError, match=message):
                torch.ops.janus_fast.decoder_ar_greedy_search(
                    *native._decoder_arguments(), native.mask_id, native.query_position_offset,
                    native.query_stream, *memory, limits, max_steps, excluded, *special,
                )  # fmt: skip
        # every op that reads the encoder memory checks it the same way
        keys, values, memory_lengths = memory
        assert len(keys) >= 2
        shorter = [k[:, :, :-1].contiguous() for k in keys[:1]] + list(keys[1:])
        shorter_values = [v[:, :, :-1].contiguous() for v in values[:1]] + list(values[1:])
        ops = {
            "decoder_ar_step": lambda m: native.ar_step(torch.tensor([1, 2]), 0, m, caches),
            "decoder_nar_pass": lambda m: native.nar_logits(
                torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([0, 1, 2]), m, torch.tensor([0])
            ),
            "decoder_ar_score": lambda m: native.ar_scores(
                torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([0, 1, 2]), m, torch.tensor([3, 4])
            ),
        }
        for name, run in ops.items():
            with pytest.raises(ValueError, match=f"{name}: one memory tensor per layer"):
                run((keys[:-1], values[:-1], memory_lengths))
            with pytest.raises(ValueError, match=f"{name}: memory lengths differ between layers"):
                run((shorter, shorter_values, memory_lengths))
            with pytest.raises(ValueError, match="memory keys/values must be"):
                run((keys, [v[:1] for v in values], memory_lengths))
    with pytest.raises(ValueError, match="weight_type"):
        NativeDecoder(model, "fp8")


@pytest.mark.parametrize("vnni", [False, True])
def test_int8_runs_the_native_passes_at_every_batch_size_and_each_sentence_alone(trained_dir, monkeypatch, vnni):
    """int8 with AVX-512 VNNI (int8 products, each row quantized alone) and without (int8 weights
    widened to fp32): every batch runs the native passes, no PyTorch dynamic int8 copy is made (its
    one activation range per batch made a sentence's tokens depend on its batch-mates), and every
    mode gives each sentence the tokens it gets alone."""
    from janus_fast.decoding import passes as passes_module
    from janus_fast.native import decoder as decoder_module
    from janus_fast.translator import Translator

    natives = []
    real_passes = passes_module.PassChoice.passes

    def recording_passes(choice):
        chosen = real_passes(choice)
        natives.append(chosen.native)
        return chosen

    monkeypatch.setattr(passes_module.PassChoice, "passes", recording_passes)
    monkeypatch.setattr(decoder_module, "int8_computes_in_int8", lambda: vnni)
    translator = Translator.from_pretrained(trained_dir, precision="int8")
    assert not translator.choice.dynamic_int8
    sentences = ["ein hund", "ein mann fährt fahrrad auf der straße", "zwei kinder spielen im park", "eine frau"]
    sentences = [*sentences, *[f"{s} und ein hund" for s in sentences]] * 3
    for options in ({"mode": "ar"}, {"mode": "ar", "beam": 4}, {"mode": "nar", "iterations": 2}, {"mode": "spec"}):
        together = translator.translate(sentences, **options, return_scores=True)
        alone = [translator.translate([sentence], **options, return_scores=True)[0] for sentence in sentences[:8]]
        assert [text for text, _ in together[:8]] == [text for text, _ in alone], options
        assert [score for _, score in together[:8]] == pytest.approx([score for _, score in alone], abs=1e-5)
    assert all(natives) and translator.choice._int8_model is None
    stored = NativeDecoder.for_model(translator.model, "int8").weights.layers[0].ffn.fc1.weight
    assert stored.dtype == torch.int8 and stored.dim() == (4 if vnni else 3)  # quads for vpdpbusd, else panels


def test_the_native_report_says_what_decoding_will_run():
    """``python -m janus_fast.native`` names the native passes' instruction set, says when
    JANUS_FAST_FORCE_REFERENCE makes decoding run the reference ops instead, fails on a
    JANUS_FAST_ISA that decoding would refuse, and refuses arguments it does not take."""
    import subprocess
    import sys

    def report(*args: str, **env: str) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if k not in ("JANUS_FAST_ISA", "JANUS_FAST_FORCE_REFERENCE")}
        command = [sys.executable, "-m", "janus_fast.native", *args]
        return subprocess.run(command, capture_output=True, text=True, env={**clean, **env}, timeout=300)

    plain = report()
    assert plain.returncode == 0 and "native CPU passes: " in plain.stdout, plain.stderr
    capped = report(JANUS_FAST_ISA="scalar")
    assert capped.returncode == 0 and "native CPU passes: scalar instructions" in capped.stdout
    forced = report(JANUS_FAST_FORCE_REFERENCE="1")
    assert forced.returncode == 0 and "runs the PyTorch reference ops" in forced.stdout
    wrong = report(JANUS_FAST_ISA="bogus")
    assert wrong.returncode == 1 and "JANUS_FAST_ISA='bogus'" in wrong.stderr
    assert report("--no-such-option").returncode == 2
