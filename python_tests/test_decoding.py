"""Reference decoding: AR with/without cache, mask-predict invariants, input checks."""

from __future__ import annotations

import pytest
import torch

from janus_fast.decoding.beam import BeamChoice, BeamRules, finished_beam_search
from janus_fast.decoding.reference import ar_search, mask_predict
from janus_fast.generation import generate


def sources(vocab: int = 60):
    generator = torch.Generator().manual_seed(1)
    src = torch.randint(5, vocab, (4, 6), generator=generator)
    lengths = torch.tensor([6, 4, 2, 1])
    for row, length in enumerate(lengths.tolist()):
        src[row, length:] = 0
    return src, lengths


@pytest.mark.parametrize("beam", [1, 4])
def test_ar_with_cache_equals_without_cache(model, beam):
    src, lengths = sources()
    cached = ar_search(model, src, lengths, beam=beam, use_cache=True)
    uncached = ar_search(model, src, lengths, beam=beam, use_cache=False)
    assert cached.tokens == uncached.tokens
    assert cached.scores == pytest.approx(uncached.scores, abs=1e-4)
    assert any(len(t) > 1 for t in cached.tokens)  # not a degenerate all-empty output


def _exhaustive_best(table: torch.Tensor, rules: BeamRules, limit: int) -> tuple[list[int], list[float]]:
    """The sequence ``y .. eos`` of at most ``limit`` tokens with the highest mean log-probability,
    found by enumerating every sequence; ``table`` (steps, V, V): logits of the next token given
    the step and the previous token."""
    log_probs = torch.log_softmax(table.double(), -1)
    vocab = table.shape[-1]
    allowed = [t for t in range(vocab) if t not in rules.blocked_ids and t != rules.eos_id]
    best: tuple[float, list[int], list[float]] = (float("-inf"), [], [])
    prefixes: list[tuple[list[int], list[float]]] = [([], [])]
    for step in range(limit):
        extended = []
        for tokens, scores in prefixes:
            previous = tokens[-1] if tokens else rules.bos_id
            row = log_probs[step, previous]
            if step >= rules.min_length:
                finished = scores + [float(row[rules.eos_id])]
                if sum(finished) / len(finished) > best[0]:
                    best = (sum(finished) / len(finished), tokens + [rules.eos_id], finished)
            extended += [(tokens + [t], scores + [float(row[t])]) for t in allowed]
        prefixes = extended
    return best[1], best[2]


@pytest.mark.parametrize("decoder,beam", [("reference", 1), ("reference", 3), ("engine", 1), ("engine", 3)])
def test_caches_grow_past_their_first_room(model, decoder, beam):
    """A key/value cache starts with room for CACHE_START_POSITIONS steps and grows as the steps
    need: outputs longer than that equal the reference's without any cache."""
    from conftest import engine_decode

    from janus_fast.model import CACHE_START_POSITIONS
    from janus_fast.native.decoder import native_decoder_available

    if decoder == "engine" and beam > 1 and not native_decoder_available():
        pytest.skip(
            "native decoder not available (janus_fast._C not built, or JANUS_FAST_FORCE_REFERENCE): the engine's "
            "beam search would be the reference's own, compared with itself"
        )
    src, lengths = sources()
    max_len = (0.0, CACHE_START_POSITIONS + 20)
    uncached = ar_search(model, src, lengths, beam=beam, use_cache=False, max_len=max_len)
    if decoder == "engine":
        got = engine_decode(model, src, lengths, beam=beam, max_len_a=max_len[0], max_len_b=max_len[1])
    else:
        got = ar_search(model, src, lengths, beam=beam, max_len=max_len)
    assert got.tokens == uncached.tokens
    assert got.scores == pytest.approx(uncached.scores, abs=1e-4)
    assert max(len(t) for t in got.tokens) > CACHE_START_POSITIONS


@pytest.mark.parametrize("decoder", ["reference", "engine"])
def test_nar_decoding_on_the_cpu_needs_no_kernels_package(model, decoder, monkeypatch):
    """A plain checkout (not installed) has no ``janus_fast.kernels``: CPU decoding must not import it."""
    import sys

    import janus_fast
    from janus_fast.decoding.candidates import use_length_kernel

    monkeypatch.delenv("JANUS_FAST_LENGTH_BACKEND", raising=False)
    monkeypatch.delattr(janus_fast, "kernels", raising=False)  # `from janus_fast import kernels` reads it first
    monkeypatch.setitem(sys.modules, "janus_fast.kernels", None)  # then any import of it raises ImportError
    with pytest.raises(ImportError):
        from janus_fast import kernels  # noqa: F401
    src, lengths = sources()
    assert use_length_kernel(torch.zeros(4, 6, 32), 3, 256) is False
    tokens = generate(model, src, lengths, mode="nar", iterations=2, length_beam=3, decoder=decoder)
    assert len(tokens) == len(src) and all(tokens)


def test_layer_cache_keeps_its_positions_when_it_grows():
    from janus_fast.model import CACHE_START_POSITIONS, LayerCache

    cache = LayerCache(3, 2, 100, 4, torch.zeros(1))
    assert cache.keys.shape == (3, 2, CACHE_START_POSITIONS, 4)
    keys, values = torch.randn(3, 2, 40, 4), torch.randn(3, 2, 40, 4)
    for start in range(0, 40, 8):
        got_keys, got_values = cache.append(keys[:, :, start : start + 8], values[:, :, start : start + 8])
    assert cache.keys.shape[2] >= 40 and cache.length == 40
    assert torch.equal(got_keys, keys) and torch.equal(got_values, values)
    cache.reorder(torch.tensor([2, 0]))  # rows of finished sentences dropped
    assert torch.equal(cache.keys[:, :, :40], keys[[2, 0]]) and torch.equal(cache.values[:, :, :40], values[[2, 0]])
    with pytest.raises(ValueError, match="at most 100 positions"):
        cache.reserve(101)


@pytest.mark.parametrize("min_length", [0, 1])
def test_beam_search_wider_than_every_hypothesis_is_exhaustive(min_length):
    """With more live slots than there are hypotheses, ``finished_beam_search`` must return the
    sequence of highest mean log-probability; checked against enumerating all of them, for
    sentences of different length limits in one batch."""
    vocab, beam = 6, 64  # ids 0 bos, 1 eos, 2 pad, 3 blocked; 4 and 5 free
    rules = BeamRules(bos_id=0, eos_id=1, pad_id=2, blocked_ids=(2, 3), min_length=min_length)
    limits = [4, 2, 5, 1 + min_length]
    generator = torch.Generator().manual_seed(3)
    tables = torch.randn(len(limits), max(limits), vocab, vocab, generator=generator) * 2
    tables[..., 1] += 1.0  # eos competitive: both short and long hypotheses win somewhere
    row_limits = torch.tensor(limits).repeat_interleave(beam)
    sentence_of_row = torch.arange(len(limits)).repeat_interleave(beam)  # the decoder's per-row state

    def step_candidates(history: torch.Tensor, step: int, choice: BeamChoice) -> tuple[torch.Tensor, torch.Tensor]:
        return choice.choose(tables[sentence_of_row, step, history[:, step]])

    def reorder(origin: torch.Tensor) -> None:
        nonlocal sentence_of_row
        sentence_of_row = sentence_of_row[origin]

    found = finished_beam_search(step_candidates, reorder, rules, beam, row_limits)
    lengths = set()
    for index, limit in enumerate(limits):
        tokens, scores = _exhaustive_best(tables[index], rules, limit)
        assert found.tokens[index] == tokens, f"sentence {index}"
        assert found.positional_scores[index] == pytest.approx(scores, abs=1e-5)
        assert found.scores[index] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
        lengths.add(len(tokens))
    assert len(lengths) >= 2


def test_beam_search_of_one_is_greedy():
    """Beam 1 takes the most probable token at each step until eos."""
    vocab, limit = 7, 6
    rules = BeamRules(bos_id=0, eos_id=1, pad_id=2, blocked_ids=(2,), min_length=1)
    generator = torch.Generator().manual_seed(5)
    tables = torch.randn(3, limit, vocab, vocab, generator=generator) * 3

    sentence_of_row = torch.arange(3)  # the decoder's per-row state

    def step_candidates(history: torch.Tensor, step: int, choice: BeamChoice) -> tuple[torch.Tensor, torch.Tensor]:
        return choice.choose(tables[sentence_of_row, step, history[:, step]])

    def reorder(origin: torch.Tensor) -> None:
        nonlocal sentence_of_row
        sentence_of_row = sentence_of_row[origin]

    found = finished_beam_search(step_candidates, reorder, rules, 1, torch.full((3,), limit))
    for index in range(3):
        tokens, previous = [], 0
        for step in range(limit):
            row = torch.log_softmax(tables[index, step, previous], -1)
            row[2] = float("-inf")
            if step < 1:
                row[1] = float("-inf")
            if step == limit - 1:
                row[[t for t in range(vocab) if t != 1]] = float("-inf")
            previous = int(row.argmax())
            tokens.append(previous)
            if previous == 1:
                break
        assert found.tokens[index] == tokens


def test_mask_predict_costs_exactly_t_decoder_calls_and_leaves_no_mask(model, monkeypatch):
    src, lengths = sources()
    calls = []
    original = model.nar_logits

    def counting(tokens, token_lengths, encoder_out):
        calls.append(tokens.clone())
        return original(tokens, token_lengths, encoder_out)

    monkeypatch.setattr(model, "nar_logits", counting)
    for iterations in (1, 2, 4, 10):
        calls.clear()
        result = mask_predict(model, src, lengths, num_iterations=iterations, length_beam=3)
        assert len(calls) == iterations
        for tokens in result.tokens:
            assert model.config.mask_id not in tokens
        first = calls[0]
        assert (first[:, 0] == model.config.bos_id).all()
        # every iteration keeps bos, eos and padding in place
        for tokens in calls:
            assert torch.equal(tokens[:, 0], first[:, 0])
            assert torch.equal(tokens == model.config.pad_id, first == model.config.pad_id)
        eos_positions = (first == model.config.eos_id).float().argmax(1)
        for tokens in calls:
            assert torch.equal(
                tokens.gather(1, eos_positions[:, None].long()).flatten(),
                torch.full((len(tokens),), model.config.eos_id),
            )


def test_mask_predict_remask_schedule(model, monkeypatch):
    """Iteration t sees exactly floor((L-2)(T-t)/T) masks (all at t=0)."""
    src, lengths = sources()
    seen = []
    original = model.nar_logits

    def recording(tokens, token_lengths, encoder_out):
        seen.append((tokens.clone(), token_lengths.clone()))
        return original(tokens, token_lengths, encoder_out)

    monkeypatch.setattr(model, "nar_logits", recording)
    iterations = 4
    mask_predict(model, src, lengths, num_iterations=iterations, length_beam=2)
    for step, (tokens, token_lengths) in enumerate(seen):
        expected = (token_lengths - 2) * (iterations - step) // iterations
        assert torch.equal((tokens == model.config.mask_id).sum(1), expected)


def test_generate_validates_input(model):
    src, lengths = sources()
    with pytest.raises(ValueError, match="mode"):
        generate(model, src, lengths, mode="xyz")
    with pytest.raises(TypeError):
        generate(model, src.float(), lengths)
    with pytest.raises(ValueError, match="src_lengths"):
        generate(model, src, torch.tensor([7, 1, 1, 1]))
    with pytest.raises(ValueError, match="token ids"):
        generate(model, src + 1000, lengths)
    with pytest.raises(ValueError):
        generate(model, src, lengths, mode="nar", iterations=0)
    assert generate(model, src[:0], lengths[:0], mode="nar") == []


@pytest.mark.parametrize(("mode", "beam"), [("nar", 1), ("ar", 4)])
def test_reference_translation_does_not_depend_on_batch(model, mode, beam):
    """The reference decoders (the engine's batch invariance is tested in test_engine.py)."""
    src, lengths = sources()
    options = {"mode": mode, "beam": beam, "decoder": "reference", **({"iterations": 3} if mode == "nar" else {})}
    batched = generate(model, src, lengths, **options)
    for row in range(len(src)):
        alone = generate(model, src[row : row + 1, : int(lengths[row])], lengths[row : row + 1], **options)
        assert alone[0] == batched[row]


def test_generate_and_translate_return_scores(model, trained_dir):
    from janus_fast.translator import Translator

    src, lengths = sources()
    for mode in ("nar", "ar"):
        counts = {"iterations": 2} if mode == "nar" else {}
        tokens = generate(model, src, lengths, mode=mode, **counts)
        scored = generate(model, src, lengths, mode=mode, **counts, return_scores=True)
        assert scored.tokens == tokens and len(scored.scores) == len(tokens)
        assert all(score <= 0.0 for score in scored.scores)  # log-probabilities
    reference = ar_search(model, src, lengths, beam=1)
    assert generate(model, src, lengths, mode="ar", return_scores=True).scores == pytest.approx(reference.scores)
    translator = Translator.from_pretrained(trained_dir)
    sentences = ["Ein Mann.", "", "Zwei Frauen."]
    pairs = translator.translate(sentences, mode="nar", iterations=2, return_scores=True)
    assert [text for text, _ in pairs] == translator.translate(sentences, mode="nar", iterations=2)
    assert pairs[1] == ("", 0.0) and all(score <= 0.0 for _, score in pairs)


def test_collapse_repeats_keeps_each_run_once():
    from janus_fast.decoding.hypotheses import collapse_repeats

    assert collapse_repeats([5, 5, 6, 5, 5, 5, 7]) == [5, 6, 5, 7]
    assert collapse_repeats([9]) == [9] and collapse_repeats([]) == []


@pytest.mark.parametrize("decoder", ["engine", "reference"])
def test_nar_collapses_repeated_neighbours_by_default(decoder):
    """A random model repeats tokens a lot: the default output is the kept-repeats output with each
    run collapsed, the scores are the candidates' either way; AR and fairseq semantics keep repeats."""
    from conftest import random_model

    from janus_fast.decoding.hypotheses import collapse_repeats

    model = random_model(3)
    src, lengths = sources()
    kept = generate(
        model, src, lengths, mode="nar", iterations=3, decoder=decoder, collapse_repeats=False, return_scores=True
    )
    default = generate(model, src, lengths, mode="nar", iterations=3, decoder=decoder, return_scores=True)
    assert any(collapse_repeats(tokens) != tokens for tokens in kept.tokens)  # the case is exercised
    assert default.tokens == [collapse_repeats(tokens) for tokens in kept.tokens]
    assert default.scores == kept.scores
    assert generate(model, src, lengths, mode="ar", decoder=decoder) == generate(
        model, src, lengths, mode="ar", decoder=decoder, collapse_repeats=False
    )
    with pytest.raises(ValueError, match="collapse_repeats applies"):
        generate(model, src, lengths, mode="ar", collapse_repeats=True)
    with pytest.raises(TypeError, match="collapse_repeats"):
        generate(model, src, lengths, mode="nar", collapse_repeats="yes")


def incremental_ar_score(model, src, src_length, row: list[int]) -> float:
    """Mean P_AR log-probability of row[1:] (``<bos> y <eos>``) given its prefix, step by step through
    the model's cached AR steps: the independent check of ``JanusModel.ar_scores``."""
    encoder_out = model.encode(src[None, :src_length], torch.tensor([src_length]))
    caches = model.new_caches(1, len(row), encoder_out.states)
    total = 0.0
    with torch.no_grad():
        for step in range(len(row) - 1):
            logits = model.ar_step(torch.tensor([row[step]]), step, encoder_out, caches)
            total += float(torch.log_softmax(logits.double(), -1)[0, row[step + 1]])
    return total / (len(row) - 1)


def test_ar_candidate_scores_equal_the_cached_ar_steps(model):
    src, src_lengths = sources()
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([7, 3, 5, 2])
    tokens = torch.randint(0, model.config.vocab_size, (4, 7), generator=generator)  # garbage past each length
    tokens[:, 0] = model.config.bos_id
    tokens[torch.arange(4), lengths - 1] = model.config.eos_id
    with torch.no_grad():
        scores = model.ar_scores(tokens, lengths, model.encode(src, src_lengths))
    for row in range(4):
        expected = incremental_ar_score(model, src[row], int(src_lengths[row]), tokens[row, : lengths[row]].tolist())
        assert float(scores[row]) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("decoder", ["engine", "reference"])
def test_ar_rescore_picks_the_candidate_the_ar_side_scores_best(decoder, monkeypatch):
    """The finished candidates (observed where the decoder picks among them) are scored again, step
    by step, through the cached AR steps: the output is the best of them, with that score."""
    from conftest import random_model

    from janus_fast.decoding import mask_predict
    from janus_fast.decoding import reference as reference_decoding
    from janus_fast.decoding.candidates import best_length_candidates
    from janus_fast.decoding.hypotheses import strip_special
    from janus_fast.decoding.options import PLAIN_RANKING

    model = random_model(3)
    src, lengths = sources()
    seen = []

    def observing(model_, tokens, scores, row_lengths, beam, ar_scores=None, rule=PLAIN_RANKING):
        seen.append((tokens.clone(), row_lengths.clone(), beam))
        return best_length_candidates(model_, tokens, scores, row_lengths, beam, ar_scores, rule)

    monkeypatch.setattr(
        mask_predict if decoder == "engine" else reference_decoding, "best_length_candidates", observing
    )
    options = {"mode": "nar", "iterations": 3, "length_beam": 3, "collapse_repeats": False, "return_scores": True}
    rescored = generate(model, src, lengths, decoder=decoder, ar_rescore=True, **options)
    plain = generate(model, src, lengths, decoder=decoder, **options)
    (tokens, row_lengths, beam), _ = seen
    config = model.config
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    for sentence in range(len(src)):
        rows = range(sentence * beam, (sentence + 1) * beam)
        candidates = [tokens[r, : row_lengths[r]].tolist() for r in rows]
        ar_scores = [incremental_ar_score(model, src[sentence], int(lengths[sentence]), c) for c in candidates]
        best = max(range(beam), key=lambda i: (ar_scores[i], -i))
        assert rescored.tokens[sentence] == strip_special(candidates[best], config.eos_id, specials)
        assert rescored.scores[sentence] == pytest.approx(ar_scores[best], abs=1e-4)
    assert rescored.tokens != plain.tokens  # the AR side disagrees with the NAR scores somewhere


def test_ar_rescore_engine_equals_reference_and_checks_its_use():
    from conftest import random_model

    model = random_model(3)
    src, lengths = sources()
    options = {"mode": "nar", "iterations": 4, "ar_rescore": True, "return_scores": True}
    fast = generate(model, src, lengths, decoder="engine", **options)
    reference = generate(model, src, lengths, decoder="reference", **options)
    assert fast.tokens == reference.tokens
    assert fast.scores == pytest.approx(reference.scores, abs=1e-5)
    with pytest.raises(ValueError, match="ar_rescore applies"):
        generate(model, src, lengths, mode="ar", ar_rescore=True)
    with pytest.raises(ValueError, match="ar_rescore applies"):
        generate(model, src, lengths, mode="nar", compat="fairseq", iterations=2, ar_rescore=True)
    with pytest.raises(TypeError, match="ar_rescore"):
        generate(model, src, lengths, mode="nar", ar_rescore="yes")


@pytest.mark.parametrize("decoder", ["engine", "reference"])
def test_length_bonus_ranks_candidates_by_score_plus_bonus_per_token(decoder, monkeypatch):
    """The finished candidates (observed where the decoder picks among them) are ranked by their
    mean NAR log-probability + bonus x their length: a large bonus picks the longest candidate, a
    large negative one the shortest; the score returned stays the candidate's own mean."""
    from conftest import random_model

    from janus_fast.decoding import mask_predict
    from janus_fast.decoding import reference as reference_decoding
    from janus_fast.decoding.candidates import best_length_candidates
    from janus_fast.decoding.hypotheses import strip_special
    from janus_fast.decoding.options import PLAIN_RANKING

    model = random_model(3)
    src, lengths = sources()
    seen = []

    def observing(model_, tokens, scores, row_lengths, beam, ar_scores=None, rule=PLAIN_RANKING):
        seen.append((tokens.clone(), scores.clone(), row_lengths.clone(), beam))
        return best_length_candidates(model_, tokens, scores, row_lengths, beam, ar_scores, rule)

    monkeypatch.setattr(
        mask_predict if decoder == "engine" else reference_decoding, "best_length_candidates", observing
    )
    options = {"mode": "nar", "iterations": 3, "length_beam": 3, "collapse_repeats": False, "return_scores": True}
    config = model.config
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    outputs = {}
    for bonus in (-100.0, 0.0, 0.3, 100.0):
        seen.clear()
        outputs[bonus] = found = generate(model, src, lengths, decoder=decoder, length_bonus=bonus, **options)
        ((tokens, scores, row_lengths, beam),) = seen
        for sentence in range(len(src)):
            rows = list(range(sentence * beam, (sentence + 1) * beam))
            means = [float(scores[r, 1 : row_lengths[r] - 1].double().mean()) for r in rows]
            sizes = [int(row_lengths[r]) - 2 for r in rows]
            best = max(range(beam), key=lambda i: (means[i] + bonus * sizes[i], -i))
            assert found.tokens[sentence] == strip_special(tokens[rows[best]].tolist(), config.eos_id, specials)
            assert found.scores[sentence] == pytest.approx(means[best], abs=1e-5)
            if bonus == 100.0:
                assert sizes[best] == max(sizes)
            if bonus == -100.0:
                assert sizes[best] == min(sizes)
    assert outputs[100.0].tokens != outputs[-100.0].tokens  # the candidates' lengths differ somewhere


def test_length_bonus_defaults_to_the_models_own_and_checks_its_use():
    import dataclasses

    from conftest import random_model

    model = random_model(3)
    src, lengths = sources()
    options = {"mode": "nar", "iterations": 3, "return_scores": True}
    explicit = generate(model, src, lengths, length_bonus=100.0, **options)
    plain = generate(model, src, lengths, **options)
    assert explicit.tokens != plain.tokens
    model.config = dataclasses.replace(model.config, length_bonus=100.0)
    assert generate(model, src, lengths, **options) == explicit  # None: the model's default
    assert generate(model, src, lengths, decoder="reference", **options).tokens == explicit.tokens
    assert generate(model, src, lengths, length_bonus=0.0, **options).tokens == plain.tokens
    # AR and fairseq's ranking do not use it: the model's default is ignored, 0.0 accepted
    assert generate(model, src, lengths, mode="ar") == generate(model, src, lengths, mode="ar", length_bonus=0.0)
    with pytest.raises(ValueError, match="length_bonus applies"):
        generate(model, src, lengths, mode="ar", length_bonus=0.5)
    with pytest.raises(ValueError, match="length_bonus applies"):
        generate(model, src, lengths, mode="nar", compat="fairseq", iterations=2, length_bonus=0.5)
    with pytest.raises(ValueError, match="finite"):
        generate(model, src, lengths, mode="nar", length_bonus=float("inf"))
    with pytest.raises(TypeError, match="length_bonus"):
        generate(model, src, lengths, mode="nar", length_bonus=True)
    with pytest.raises(ValueError, match="finite"):
        dataclasses.replace(model.config, length_bonus=float("nan"))
