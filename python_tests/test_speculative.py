"""Speculative decoding (janus_fast.decoding.speculative): the accept op against its reference, the native
verification pass against one AR step at a time, and the decoded output against AR greedy."""

from __future__ import annotations

import gzip
import os

import pytest
import torch
from conftest import MULTI30K, engine_decode, random_model

from janus_fast import ops
from janus_fast.decoding import reference as reference_decoding
from janus_fast.decoding.beam import max_ar_lengths
from janus_fast.decoding.options import SpeculativeOptions
from janus_fast.decoding.passes import PassChoice
from janus_fast.decoding.speculative import SpeculativeStats, speculative_greedy
from janus_fast.generation import generate
from janus_fast.native.decoder import NativeDecoder, native_decoder_available
from janus_fast.ops import speculative_accept, speculative_accept_reference

needs_native_ops = pytest.mark.skipif(
    not ops.HAS_NATIVE_OPS, reason=f"janus_fast._C not built: {ops.NATIVE_IMPORT_ERROR}"
)
needs_native_decoder = pytest.mark.skipif(not native_decoder_available(), reason="native decoder ops not built")
EOS = 3


def random_round(generator: torch.Generator, rows: int, width: int, vocab: int, relaxed: bool):
    """Drafts that agree with the verified tokens for a random prefix (and sometimes hold eos)."""
    draft = torch.randint(4, vocab, (rows, width), generator=generator)
    verified = torch.randint(4, vocab, (rows, width + 1), generator=generator)
    agree = torch.rand(rows, width, generator=generator) < 0.7
    verified[:, :width] = torch.where(agree, draft, verified[:, :width])
    eos_at = torch.rand(rows, width + 1, generator=generator) < 0.1
    verified = torch.where(eos_at, EOS, verified)
    draft = torch.where(eos_at[:, :width] & agree, EOS, draft)
    counts = torch.randint(0, width + 1, (rows,), generator=generator)
    marks = torch.rand(rows, width, generator=generator) < 0.3 if relaxed else None
    return draft, counts, verified, marks


def test_accept_reference_by_hand() -> None:
    """The rule on rows written out: keep agreeing drafts, then AR's token; an accepted eos ends."""
    draft = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 3, 7, 8], [5, 6, 7, 8], [9, 9, 9, 9]])
    verified = torch.tensor([[5, 6, 9, 8, 1], [5, 6, 7, 8, 11], [5, 3, 7, 8, 2], [5, 3, 7, 8, 2], [1, 2, 3, 4, 5]])
    counts = torch.tensor([4, 4, 4, 2, 0])
    kept, tokens = speculative_accept_reference(draft, counts, verified, None, EOS)
    assert kept.tolist() == [3, 5, 2, 2, 1]
    assert tokens.tolist() == [
        [5, 6, 9, -1, -1],
        [5, 6, 7, 8, 11],
        [5, 3, -1, -1, -1],
        [5, 3, -1, -1, -1],
        [1, -1, -1, -1, -1],
    ]
    relaxed = torch.zeros(5, 4, dtype=torch.bool)
    relaxed[0, 2] = True  # draft 7 kept although AR chose 9; then 8 agrees and AR's 1 follows
    kept, tokens = speculative_accept_reference(draft, counts, verified, relaxed, EOS)
    assert kept[0] == 5 and tokens[0].tolist() == [5, 6, 7, 8, 1]


@needs_native_ops
@pytest.mark.parametrize("relaxed", [False, True])
def test_native_accept_matches_reference(relaxed: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    for width in (1, 3, 8):
        draft, counts, verified, marks = random_round(generator, 64, width, 12, relaxed)
        native = torch.ops.janus_fast.speculative_accept(draft, counts, verified, marks, EOS)
        reference = speculative_accept_reference(draft, counts, verified, marks, EOS)
        assert torch.equal(native[0], reference[0]) and torch.equal(native[1], reference[1])
        assert bool((native[0] >= 1).all()) and bool((native[0] <= counts + 1).all())


@needs_native_ops
def test_accept_op_checks_and_opcheck() -> None:
    draft, counts, verified, marks = random_round(torch.Generator().manual_seed(2), 5, 4, 12, True)
    torch.library.opcheck(
        torch.ops.janus_fast.speculative_accept.default,
        (draft, counts, verified, marks, EOS),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )
    with pytest.raises(ValueError, match="draft count"):
        speculative_accept(draft, torch.full((5,), 5), verified, None, EOS)
    with pytest.raises(ValueError, match="verified must be"):
        speculative_accept(draft, counts, verified[:, :4], None, EOS)
    with pytest.raises(TypeError, match="int64"):
        speculative_accept(draft.int(), counts, verified, None, EOS)
    with pytest.raises(TypeError, match="bool"):
        speculative_accept(draft, counts, verified, marks.long(), EOS)
    empty = torch.empty(0, 4, dtype=torch.long)
    kept, tokens = speculative_accept(
        empty, torch.empty(0, dtype=torch.long), torch.empty(0, 5, dtype=torch.long), None, EOS
    )
    assert kept.shape == (0,) and tokens.shape == (0, 5)


@needs_native_decoder
@pytest.mark.parametrize("weight_type", ["fp32", "bf16", "int8"])
def test_extend_pass_equals_single_steps(weight_type: str) -> None:
    """Several new tokens per sentence from per-sentence cache lengths give exactly the tokens and
    log-probabilities of one AR step at a time (the products are row-independent), and the caches
    end up holding the same keys/values."""
    model = random_model(3, vocab_size=50)
    native = NativeDecoder.for_model(model, weight_type)
    generator = torch.Generator().manual_seed(4)
    src = torch.randint(5, 50, (3, 7), generator=generator)
    src_lengths = torch.tensor([7, 4, 6])
    encoder_out = native.encode(src, src_lengths)
    memory = NativeDecoder.memory(encoder_out)
    sequences = torch.randint(5, 50, (3, 12), generator=generator)
    banned = torch.tensor([4, 0, 2])
    # one step at a time, sentence by sentence (batch of 1: the fewest rows a pass can have)
    expected_tokens, expected_scores, step_caches = [], [], []
    for b in range(3):
        caches = model.new_caches(1, 16, encoder_out.states)
        row_memory = NativeDecoder.select_memory(memory, torch.tensor([b]))
        tokens, scores = [], []
        for step in range(12):
            token, score = native.ar_greedy_step(
                sequences[b : b + 1, step], step, row_memory, caches, banned, torch.tensor([step == 9]), EOS
            )
            tokens.append(int(token))
            scores.append(float(score))
        expected_tokens.append(tokens)
        expected_scores.append(scores)
        step_caches.append(caches)
    # the same positions in three extend passes of different splits per sentence
    caches = model.new_caches(3, 16, encoder_out.states)
    splits = [[1, 5, 6], [4, 4, 4], [7, 1, 4]]  # new tokens per sentence in each pass
    done = torch.zeros(3, dtype=torch.long)
    got_tokens: list[list[int]] = [[], [], []]
    got_scores: list[list[float]] = [[], [], []]
    for part in range(3):
        counts = torch.tensor([splits[b][part] for b in range(3)])
        new = torch.cat([sequences[b, done[b] : done[b] + counts[b]] for b in range(3)])
        positions = torch.cat([torch.arange(done[b], done[b] + counts[b]) for b in range(3)])
        forced = positions == 9
        tokens, scores, _, _ = native.ar_extend(
            new, torch.nn.functional.pad(counts.cumsum(0), (1, 0)), done.clone(), memory, caches, banned, forced, EOS
        )
        offsets = torch.nn.functional.pad(counts.cumsum(0), (1, 0)).tolist()
        for b in range(3):
            got_tokens[b] += tokens[offsets[b] : offsets[b + 1]].tolist()
            got_scores[b] += scores[offsets[b] : offsets[b + 1]].tolist()
        done += counts
    assert got_tokens == expected_tokens
    assert got_scores == expected_scores  # bit-identical
    for b in range(3):
        for layer, single in zip(caches, step_caches[b]):
            assert torch.equal(layer.keys[b, :, :12], single.keys[0, :, :12])
            assert torch.equal(layer.values[b, :, :12], single.values[0, :, :12])


@needs_native_decoder
def test_extend_pass_ranks_candidates() -> None:
    """Candidate log-probabilities and ranks equal those read off the step's full logits."""
    model = random_model(5, vocab_size=50)
    native = NativeDecoder.for_model(model, "fp32")
    src, src_lengths = torch.randint(5, 50, (1, 6)), torch.tensor([6])
    memory = NativeDecoder.memory(native.encode(src, src_lengths))
    banned = torch.tensor([4, 0, 2])
    tokens = torch.tensor([2, 17, 23, 9])
    candidates = torch.tensor([17, 0, 31, -1])  # 0 is banned: unranked
    step_caches = model.new_caches(1, 8, memory[0][0])
    log_probs = [torch.log_softmax(native.ar_step(tokens[i : i + 1], i, memory, step_caches)[0], -1) for i in range(4)]
    caches = model.new_caches(1, 8, memory[0][0])
    _, _, scores, ranks = native.ar_extend(
        tokens,
        torch.tensor([0, 4]),
        torch.tensor([0]),
        memory,
        caches,
        banned,
        torch.zeros(4, dtype=torch.bool),
        EOS,
        candidates,
    )
    for i, candidate in enumerate(candidates.tolist()):
        if candidate < 0:
            assert torch.isnan(scores[i]) and ranks[i] == 50
            continue
        torch.testing.assert_close(scores[i], log_probs[i][candidate], rtol=0, atol=1e-5)
        allowed = log_probs[i].clone()
        allowed[banned] = float("-inf")
        expected = 50 if candidate in banned.tolist() else int((allowed > allowed[candidate]).sum())
        assert ranks[i] == expected


def exact_cases():
    """(seed, model overrides, options, max_len_b) over the rejection paths of an untrained model."""
    yield 0, {}, SpeculativeOptions(), 10
    yield 1, {}, SpeculativeOptions(min_draft=1, max_verify=1), 10
    yield 2, {}, SpeculativeOptions(draft_iterations=3, min_draft=2, max_verify=3), 10
    yield 3, {}, SpeculativeOptions(max_verify=16, min_draft=12), 10
    yield 4, {}, SpeculativeOptions(), 2  # the length limit cuts every sentence
    yield 5, {"eos_bias": True}, SpeculativeOptions(max_verify=6), 10  # eos drafted and chosen often
    yield 6, {"normalize_before": False}, SpeculativeOptions(min_draft=3), 10  # post-norm layers
    yield 7, {"eos_off": True}, SpeculativeOptions(max_verify=16, min_draft=20), 200  # up to the last position
    # a window and a draft far past the length limit: capped at it (memory follows the batch), same output
    yield 8, {}, SpeculativeOptions(max_verify=65536, min_draft=65536), 10


def biased_model(seed: int, overrides: dict):
    overrides = dict(overrides)
    eos_bias = overrides.pop("eos_bias", False)
    eos_off = overrides.pop("eos_off", False)
    model = random_model(seed, vocab_size=40, **overrides)
    with torch.no_grad():
        if eos_bias:  # the tied output embedding of eos made large: eos appears inside drafts
            model.embed_tokens.weight[EOS] *= 4.0
        if eos_off:  # eos never chosen: every sentence runs to its limit, here the model's last position
            model.embed_tokens.weight[EOS] = 0.0
    return model


def source_batch(seed: int, batch: int = 6, vocab: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (batch,), generator=generator)
    src = torch.zeros(batch, int(lengths.max()), dtype=torch.long)
    for b, length in enumerate(lengths.tolist()):
        src[b, :length] = torch.randint(5, vocab, (length,), generator=generator)
    return src, lengths


def run_speculative(model, src, src_lengths, max_len, native, options, stats=None, one_call=True, precision="fp32"):
    """``speculative_greedy`` on the native passes (``native``; with ``one_call`` false their rounds run
    one pass at a time, as without ``decoder_speculative_search``) or the PyTorch ones."""
    passes = PassChoice(model, precision, native=native).passes()
    assert passes.native == native
    if not one_call:
        passes.speculative_search = lambda *arguments: None
    limits = max_ar_lengths(src_lengths, model, max_len)
    return speculative_greedy(model, passes, src, src_lengths, limits, options, stats)


@pytest.mark.parametrize("case", list(exact_cases()), ids=lambda c: f"seed{c[0]}")
@pytest.mark.parametrize("native", ["one call", "rounds", "torch"])
def test_speculative_equals_greedy(case, native: str) -> None:
    """Tokens identical to AR greedy and scores within 1e-5, batches of mixed lengths, every
    rejection path of an untrained drafter; the native search in one call, its rounds one native
    pass at a time, and the PyTorch passes."""
    seed, overrides, options, max_len_b = case
    if native != "torch" and not native_decoder_available():
        pytest.skip("native decoder ops not built")
    model = biased_model(seed, overrides)
    src, src_lengths = source_batch(seed)
    expected = reference_decoding.ar_search(model, src, src_lengths, 1, (1.2, max_len_b))
    stats = SpeculativeStats()
    got = run_speculative(
        model, src, src_lengths, (1.2, max_len_b), native != "torch", options, stats, one_call=native == "one call"
    )
    assert got.tokens == expected.tokens
    torch.testing.assert_close(torch.tensor(got.scores), torch.tensor(expected.scores), rtol=0, atol=1e-5)
    assert stats.sentences == len(src_lengths) and stats.rounds >= len(src_lengths)
    assert stats.tokens == sum(len(t) + 1 for t in expected.tokens)  # every token generated, eos included


@needs_native_decoder
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_native_search_equals_its_rounds_pass_by_pass(precision: str) -> None:
    """``decoder_speculative_search`` (one call) against the same rounds run one native pass at a
    time from Python: the same tokens, the same rounds and kept drafts (stats), scores within 1e-5
    (the one call adds each kept token's log-probability in order, as AR greedy's search does);
    windows and drafts of several sizes, eos in the drafts, the length limit."""
    for seed, overrides, options, max_len_b in exact_cases():
        if options.draft_iterations != 1 or options.relaxed_top_k:
            continue  # the one call covers exact verification with one-iteration drafts
        model = biased_model(seed, overrides)
        src, src_lengths = source_batch(seed, batch=7)
        outputs = []
        for one_call in (True, False):
            stats = SpeculativeStats()
            found = run_speculative(
                model, src, src_lengths, (1.2, max_len_b), True, options, stats, one_call, precision
            )  # fmt: skip
            outputs.append((found, vars(stats)))
        (fast, fast_stats), (rounds, round_stats) = outputs
        assert fast.tokens == rounds.tokens, seed
        assert fast_stats == round_stats, seed
        torch.testing.assert_close(torch.tensor(fast.scores), torch.tensor(rounds.scores), rtol=0, atol=1e-5)


@needs_native_decoder
def test_native_search_checks_its_arguments() -> None:
    model = biased_model(3, {})
    native = NativeDecoder.for_model(model)
    src, src_lengths = source_batch(3, batch=2)
    with torch.inference_mode():
        memory = NativeDecoder.memory(native.encode(src, src_lengths))
    config = model.config
    banned, ids = torch.tensor([config.pad_id]), (config.bos_id, config.eos_id, config.pad_id)
    good = (torch.tensor([4, 6]), torch.tensor([3, 7]), banned, ids, 4, 2)
    found = native.speculative_search(memory, *good)
    assert found[0].shape == (2, 6) and found[3].tolist() >= [1, 1]
    for change, message in [
        ({0: torch.tensor([0, 6])}, r"limit 0 outside \[1, max_steps = 6\]"),
        ({0: torch.tensor([4.0, 6.0])}, "limits and draft_lengths must be int64"),
        ({1: torch.tensor([3])}, "2 limits but 1 draft lengths"),
        ({1: torch.tensor([6, 7])}, r"draft length 6 outside \[0, limit \+ 1 = 5\]"),
        ({1: torch.tensor([-1, 7])}, "draft length -1 outside"),
        ({2: torch.tensor([10_000])}, "excluded id 10000 outside"),
        ({3: (10_000, *ids[1:])}, "bos_id 10000 outside"),
        ({4: 0}, "max_verify and min_draft must be >= 1"),
        ({5: 0}, "max_verify and min_draft must be >= 1"),
        ({0: torch.tensor([4, 10_000]), 1: torch.tensor([3, 7])}, r"max_steps 10000 \(the longest limit\) exceeds"),
    ]:
        arguments = list(good)
        for index, value in change.items():
            arguments[index] = value
        with pytest.raises(ValueError, match=message):
            native.speculative_search(memory, *arguments)


@needs_native_decoder
@pytest.mark.parametrize("weight_type", ["bf16", "int8"])
def test_speculative_equals_greedy_at_the_same_precision(weight_type: str) -> None:
    model = biased_model(7, {})
    src, src_lengths = source_batch(7, batch=8)
    expected = engine_decode(model, src, src_lengths, beam=1, precision=weight_type)
    always = SpeculativeOptions(speculate_up_to=0)
    got = engine_decode(model, src, src_lengths, mode="spec", precision=weight_type, speculative=always)
    assert got.tokens == expected.tokens
    torch.testing.assert_close(torch.tensor(got.scores), torch.tensor(expected.scores), rtol=0, atol=1e-5)


def test_generate_spec_mode_and_its_checks() -> None:
    model = random_model(8, vocab_size=40)
    src, src_lengths = source_batch(8)
    greedy = generate(model, src, src_lengths, mode="ar", return_scores=True)
    for decoder in ("engine", "reference"):
        spec = generate(model, src, src_lengths, mode="spec", decoder=decoder, return_scores=True)
        assert spec.tokens == greedy.tokens
    empty = generate(model, src[:0], src_lengths[:0], mode="spec")
    assert empty == []
    with pytest.raises(ValueError, match="mode='spec' only"):
        generate(model, src, src_lengths, mode="ar", speculative=SpeculativeOptions())
    with pytest.raises(ValueError, match="decoder='engine'"):
        generate(
            model, src, src_lengths, mode="spec", decoder="reference", speculative=SpeculativeOptions(relaxed_top_k=2)
        )
    with pytest.raises(
        ValueError, match="mode='nar' or mode='ar', not mode='spec'"
    ):  # fairseq-generate has no speculative mode
        generate(model, src, src_lengths, mode="spec", compat="fairseq")
    with pytest.raises(TypeError, match="SpeculativeOptions"):
        generate(model, src, src_lengths, mode="spec", speculative={"max_verify": 2})
    with pytest.raises(ValueError, match="max_verify"):
        SpeculativeOptions(max_verify=0)
    for name in ("max_verify", "min_draft", "relaxed_top_k"):
        with pytest.raises(ValueError, match=rf"{name} must be in \[\d, 65536\], got {2**70}"):
            SpeculativeOptions(**{name: 2**70})
    with pytest.raises(TypeError, match="draft_iterations"):
        SpeculativeOptions(draft_iterations=1.5)
    with pytest.raises(ValueError, match="relaxed_margin"):
        SpeculativeOptions(relaxed_margin=float("nan"))
    plain = random_model(8, vocab_size=40, ar_stream="content")
    with pytest.raises(ValueError, match="JANUS model"):
        generate(plain, src, src_lengths, mode="spec")


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_relaxed_verification(native: bool) -> None:
    """top 1 with no margin keeps only AR's own choices (greedy's output); a looser test keeps more
    drafted tokens per round, each of them among AR's top k within the margin."""
    if native and not native_decoder_available():
        pytest.skip("native decoder ops not built")
    model = biased_model(9, {})
    src, src_lengths = source_batch(9, batch=8)
    greedy = reference_decoding.ar_search(model, src, src_lengths, 1, (1.2, 10))
    strict = run_speculative(
        model, src, src_lengths, (1.2, 10), native, SpeculativeOptions(relaxed_top_k=1, relaxed_margin=0.0)
    )
    assert strict.tokens == greedy.tokens
    exact_stats, loose_stats = SpeculativeStats(), SpeculativeStats()
    run_speculative(model, src, src_lengths, (1.2, 10), native, SpeculativeOptions(), exact_stats)
    loose = run_speculative(
        model, src, src_lengths, (1.2, 10), native, SpeculativeOptions(relaxed_top_k=5, relaxed_margin=3.0), loose_stats
    )
    assert loose_stats.accepted_drafted > exact_stats.accepted_drafted
    assert loose.tokens != greedy.tokens
    # scores: greedy's where the tokens are greedy's; never NaN (a slot not kept may hold NaN)
    torch.testing.assert_close(torch.tensor(strict.scores), torch.tensor(greedy.scores), rtol=0, atol=1e-5)
    # each output token is within AR's top 5 given the tokens before it (teacher-forced check), and
    # the score is the mean log-probability of the tokens and eos
    encoder_out = model.encode(src, src_lengths)
    for b, tokens in enumerate(loose.tokens):
        row = torch.tensor([[2, *tokens, EOS]])
        with torch.no_grad():
            hidden = model.ar_hidden(row, torch.tensor([row.shape[1]]), encoder_out.select(torch.tensor([b])))
            log_probs = torch.log_softmax(model.output_logits(hidden), -1)[0]
        own = log_probs[torch.arange(len(tokens) + 1), torch.tensor([*tokens, EOS])]
        assert loose.scores[b] == pytest.approx(float(own.mean()), abs=1e-4)
        log_probs[:, [4, 0, 2]] = float("-inf")
        for i, token in enumerate(tokens):
            assert int((log_probs[i] > log_probs[i, token]).sum()) < 5
            assert float(log_probs[i, token]) >= float(log_probs[i].max()) - 3.0 - 1e-4


def shipped_sentences(count: int) -> list[str]:
    with gzip.open(os.path.join(MULTI30K, "test_2016_flickr.de.gz"), "rt", encoding="utf-8") as handle:
        return [line.strip() for line, _ in zip(handle, range(count))]


@needs_native_decoder
def test_shipped_model_spec_equals_ar_greedy() -> None:
    """The shipped model, 100 test sentences, fp32 and int8: mode spec gives mode ar's translations."""
    from janus_fast import Translator

    sentences = shipped_sentences(100)
    for precision in ("fp32", "int8"):
        translator = Translator.from_pretrained(precision=precision)
        greedy = translator.translate(sentences, mode="ar", return_scores=True)
        always = SpeculativeOptions(speculate_up_to=0)  # batches of 16 speculate too (default: AR greedy's steps)
        spec = translator.translate(sentences, mode="spec", batch_size=16, return_scores=True, speculative=always)
        assert [text for text, _ in spec] == [text for text, _ in greedy]
        torch.testing.assert_close(
            torch.tensor([s for _, s in spec]), torch.tensor([s for _, s in greedy]), rtol=0, atol=1e-5
        )
    one = Translator.from_pretrained().translate(["Zwei Hunde spielen im Schnee."], mode="spec")
    assert one == ["Two dogs play in the snow."]


def test_spec_int8_on_pytorch_layers_is_refused(monkeypatch) -> None:
    """Without the native passes int8 runs PyTorch's dynamic int8 layers, whose one activation range
    per batch makes a verification pass differ from AR greedy's steps: refused, not inexact."""
    from janus_fast.decoding import passes as passes_module

    model = biased_model(3, {})
    src, src_lengths = source_batch(3)
    monkeypatch.setattr(passes_module, "unsupported_reason", lambda model: "no native decoder here")
    with pytest.raises(ValueError, match="mode 'spec' with precision 'int8' needs the engine's native passes"):
        generate(model, src, src_lengths, mode="spec", precision="int8")
    assert generate(model, src, src_lengths, mode="spec") == generate(model, src, src_lengths, mode="ar")


def test_a_batch_above_speculate_up_to_runs_ar_greedys_steps() -> None:
    """Exact verification's output is AR greedy's, so a batch of more than ``speculate_up_to``
    sentences runs AR greedy's steps (no speculative rounds: ``stats`` untouched) and gives the same
    tokens as speculating in it; a batch within the limit, or ``speculate_up_to`` 0, speculates;
    relaxed verification (another output) speculates at every batch size."""
    model = biased_model(3, {})
    src, src_lengths = source_batch(3, batch=10)
    greedy = engine_decode(model, src, src_lengths, beam=1)
    stats = SpeculativeStats()
    above_limit = SpeculativeOptions(speculate_up_to=9)
    above = engine_decode(model, src, src_lengths, stats=stats, mode="spec", speculative=above_limit)
    assert above.tokens == greedy.tokens and above.scores == greedy.scores and stats.rounds == 0
    for limit in (10, 0):
        stats = SpeculativeStats()
        within = engine_decode(
            model, src, src_lengths, stats=stats, mode="spec", speculative=SpeculativeOptions(speculate_up_to=limit)
        )
        assert within.tokens == greedy.tokens and stats.rounds >= len(src_lengths)
    stats = SpeculativeStats()
    relaxed = SpeculativeOptions(relaxed_top_k=3, speculate_up_to=1)
    engine_decode(model, src, src_lengths, stats=stats, mode="spec", speculative=relaxed)
    assert stats.rounds >= len(src_lengths)
    with pytest.raises(ValueError, match="speculate_up_to"):
        SpeculativeOptions(speculate_up_to=-1)
