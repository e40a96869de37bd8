"""Tests of the native mask-predict step (``torch.ops.janus_fast.mask_predict_step``) against the
PyTorch reference ``janus_fast.ops.mask_predict_step_reference``.

Tests that call the compiled op skip only when the extension ``janus_fast._C`` is genuinely not
built; CI builds it (``pip install --no-build-isolation -e .``), so there they all run.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import janus_fast.ops as ops
from janus_fast.ops import mask_predict_step, mask_predict_step_reference

needs_native = pytest.mark.skipif(not ops.HAS_NATIVE_OPS, reason=f"janus_fast._C not built: {ops.NATIVE_IMPORT_ERROR}")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def native_op(*args: object) -> torch.Tensor:
    return torch.ops.janus_fast.mask_predict_step(*args)


def make_case(
    seed: int,
    num_rows: int,
    max_length: int,
    vocab_size: int,
    dtype: torch.dtype,
    mask_id: int,
    quantised: bool,
    masked_fraction: float,
    neg_inf_fraction: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (logits, tokens, scores, lengths); ``quantised`` forces ties in logits and scores."""
    generator = torch.Generator().manual_seed(seed)
    shape = (num_rows, max_length, vocab_size)
    if quantised:
        logits = torch.randint(-2, 3, shape, generator=generator).float()
    else:
        logits = 4.0 * torch.randn(shape, generator=generator)
    if neg_inf_fraction > 0:
        logits[torch.rand(shape, generator=generator) < neg_inf_fraction] = float("-inf")
    logits = logits.to(dtype)
    lengths = torch.randint(2, max_length + 1, (num_rows,), generator=generator)
    tokens = torch.randint(0, vocab_size - 1, (num_rows, max_length), generator=generator)
    tokens = tokens + (tokens >= mask_id).long()  # random non-mask tokens
    tokens[torch.rand(num_rows, max_length, generator=generator) < masked_fraction] = mask_id
    if quantised:
        scores = -torch.randint(0, 3, (num_rows, max_length), generator=generator).float()
    else:
        scores = -torch.rand(num_rows, max_length, generator=generator) * 5
    return logits, tokens, scores, lengths


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bitwise-equal values (NaN equals NaN: a row whose logits are all -inf scores NaN)."""
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def run(function, logits, tokens, scores, lengths, iteration, num_iterations, mask_id):
    """Calls ``function`` on copies of tokens/scores; returns (tokens, scores, remasked)."""
    tokens, scores = tokens.clone(), scores.clone()
    remasked = function(logits, tokens, scores, lengths, iteration, num_iterations, mask_id)
    return tokens, scores, remasked


case_parameters = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**31 - 1),
        "num_rows": st.integers(1, 6),
        "max_length": st.integers(2, 40),
        "vocab_size": st.integers(3, 300),
        "dtype": st.sampled_from(DTYPES),
        "quantised": st.booleans(),
        "masked_fraction": st.sampled_from([0.0, 0.3, 0.8, 1.0]),
        "neg_inf_fraction": st.sampled_from([0.0, 0.0, 0.2]),
    }
)


@needs_native
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=case_parameters, data=st.data())
def test_native_matches_reference(case: dict, data: st.DataObject) -> None:
    """Fill and re-mask agree with the reference on every iteration of a random schedule."""
    vocab_size = case["vocab_size"]
    mask_id = data.draw(st.integers(0, vocab_size - 1), label="mask_id")
    num_iterations = data.draw(st.integers(1, 10), label="num_iterations")
    logits, tokens, scores, lengths = make_case(mask_id=mask_id, **case)
    last = num_iterations - 1

    # Step 1 alone (last iteration re-masks nothing): same tokens, scores within fp32 tolerance.
    native = run(native_op, logits, tokens, scores, lengths, last, num_iterations, mask_id)
    reference = run(mask_predict_step_reference, logits, tokens, scores, lengths, last, num_iterations, mask_id)
    assert torch.equal(native[0], reference[0])
    torch.testing.assert_close(native[1], reference[1], rtol=1e-5, atol=1e-4, equal_nan=True)
    assert not native[2].any() and not reference[2].any()
    filled_tokens, filled_scores = native[0], native[1]

    for iteration in range(num_iterations):
        step = run(native_op, logits, tokens, scores, lengths, iteration, num_iterations, mask_id)
        # Step 2 on the very same scores: the reference re-masks exactly the same positions.
        expected = run(
            mask_predict_step_reference,
            logits,
            filled_tokens,
            filled_scores,
            lengths,
            iteration,
            num_iterations,
            mask_id,
        )
        assert torch.equal(step[2], expected[2])
        assert torch.equal(step[0], expected[0])
        assert_same(step[1], filled_scores)
        # Dispatcher = native op.
        dispatched = run(mask_predict_step, logits, tokens, scores, lengths, iteration, num_iterations, mask_id)
        for got, want in zip(dispatched, step, strict=True):
            assert_same(got, want)


@needs_native
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@settings(max_examples=60, deadline=None)
@given(case=case_parameters, data=st.data())
def test_cuda_matches_cpu(case: dict, data: st.DataObject) -> None:
    """The CUDA kernels give the CPU kernel's tokens and re-masks (scores within fp32 rounding)."""
    mask_id = data.draw(st.integers(0, case["vocab_size"] - 1), label="mask_id")
    num_iterations = data.draw(st.integers(1, 10), label="num_iterations")
    iteration = data.draw(st.integers(0, num_iterations - 1), label="iteration")
    logits, tokens, scores, lengths = make_case(mask_id=mask_id, **case)
    last = num_iterations - 1
    on_cuda = [tensor.cuda() for tensor in (logits, tokens, scores, lengths)]
    cpu_fill = run(native_op, logits, tokens, scores, lengths, last, num_iterations, mask_id)
    cuda_fill = run(native_op, *on_cuda, last, num_iterations, mask_id)
    assert torch.equal(cuda_fill[0].cpu(), cpu_fill[0])
    torch.testing.assert_close(cuda_fill[1].cpu(), cpu_fill[1], rtol=1e-5, atol=1e-4, equal_nan=True)
    # Re-masking from the same scores is exact.
    filled = [cpu_fill[0], cpu_fill[1]]
    cpu_step = run(native_op, logits, *filled, lengths, iteration, num_iterations, mask_id)
    cuda_step = run(
        native_op,
        on_cuda[0],
        filled[0].cuda(),
        filled[1].cuda(),
        on_cuda[3],
        iteration,
        num_iterations,
        mask_id,
    )
    for got, want in zip(cuda_step, cpu_step, strict=True):
        assert_same(got.cpu(), want)


@needs_native
@settings(max_examples=40, deadline=None)
@given(case=case_parameters, iteration=st.integers(0, 3))
def test_rows_are_independent(case: dict, iteration: int) -> None:
    """A row's result equals the result of running that row alone."""
    logits, tokens, scores, lengths = make_case(mask_id=1, **case)
    batch = run(native_op, logits, tokens, scores, lengths, iteration, 4, 1)
    for row in range(logits.shape[0]):
        alone = run(
            native_op,
            logits[row : row + 1],
            tokens[row : row + 1],
            scores[row : row + 1],
            lengths[row : row + 1],
            iteration,
            4,
            1,
        )
        for got, want in zip(alone, batch, strict=True):
            assert_same(got[0], want[row])


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_hand_example(dtype: torch.dtype) -> None:
    """A worked example of the spec, checked on the reference (and the dispatcher)."""
    logits = torch.full((1, 6, 4), -1.0)
    logits[0, 1] = torch.tensor([9.0, 1.0, 3.0, 3.0])  # argmax skips the mask; tie -> token 2
    logits[0, 2] = torch.tensor([0.0, 5.0, 0.0, 0.0])
    logits[0, 3] = torch.tensor([0.0, 0.0, 0.0, 2.0])
    logits = logits.to(dtype)
    tokens = torch.tensor([[7, 0, 0, 0, 8, 9]])  # bos, 3 masks, real token, eos
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0, -0.5, 0.0]])
    lengths = torch.tensor([6])
    for function in (mask_predict_step_reference, mask_predict_step):
        out_tokens, out_scores, remasked = run(function, logits, tokens, scores, lengths, 0, 2, 0)
        row = logits[0].float()
        expected_scores = torch.tensor(
            [
                0.0,
                (row[1] - row[1].logsumexp(0))[2].item(),
                (row[2] - row[2].logsumexp(0))[1].item(),
                (row[3] - row[3].logsumexp(0))[3].item(),
                -0.5,
                0.0,
            ]
        )
        torch.testing.assert_close(out_scores[0], expected_scores)
        # n = floor(4 * 1 / 2) = 2 lowest of positions 1..4: position 1 (about -6.1) and
        # position 4 (-0.5); positions 2 and 3 score higher.
        assert remasked[0].tolist() == [False, True, False, False, True, False]
        assert out_tokens[0].tolist() == [7, 0, 1, 3, 0, 9]


@needs_native
def test_native_bos_only_rows_and_last_iteration() -> None:
    """T = 2 (bos and eos only) and the last iteration change nothing but masked real tokens."""
    logits = torch.randn(3, 2, 5)
    tokens = torch.full((3, 2), 4)
    scores = torch.zeros(3, 2)
    remasked = native_op(logits, tokens, scores, torch.full((3,), 2), 0, 3, 4)
    assert not remasked.any() and (tokens == 4).all() and (scores == 0).all()


def _bad_inputs() -> list[tuple[str, dict]]:
    good = {
        "logits": torch.randn(2, 5, 7),
        "tokens": torch.zeros(2, 5, dtype=torch.long),
        "scores": torch.zeros(2, 5),
        "lengths": torch.tensor([5, 3]),
        "iteration": 0,
        "num_iterations": 3,
        "mask_id": 0,
    }
    cases = {
        "logits float64": {"logits": torch.randn(2, 5, 7, dtype=torch.float64)},
        "logits int": {"logits": torch.zeros(2, 5, 7, dtype=torch.long)},
        "tokens int32": {"tokens": torch.zeros(2, 5, dtype=torch.int32)},
        "scores float16": {"scores": torch.zeros(2, 5, dtype=torch.float16)},
        "lengths int32": {"lengths": torch.tensor([5, 3], dtype=torch.int32)},
        "logits rank 2": {"logits": torch.randn(10, 7)},
        "tokens shape": {"tokens": torch.zeros(2, 4, dtype=torch.long)},
        "scores rank 1": {"scores": torch.zeros(10)},
        "lengths shape": {"lengths": torch.tensor([5, 3, 4])},
        "length above T": {"lengths": torch.tensor([6, 3])},
        "length below 2": {"lengths": torch.tensor([5, 1])},
        "iteration negative": {"iteration": -1},
        "iteration too large": {"iteration": 3},
        "num_iterations zero": {"num_iterations": 0, "iteration": 0},
        # (T - 2) * (num_iterations - 1) overflowed int64: 0 positions re-masked instead of 3, no error
        "num_iterations past the limit": {"num_iterations": 2**62},
        "num_iterations past int64": {"num_iterations": 2**64},
        "mask_id negative": {"mask_id": -1},
        "mask_id too large": {"mask_id": 7},
        "tokens non-contiguous": {"tokens": torch.zeros(5, 2, dtype=torch.long).t()},
        "scores non-contiguous": {"scores": torch.zeros(5, 2).t()},
        "device mismatch": {"lengths": torch.tensor([5, 3], device="meta")},
    }
    return [(name, {**good, **change}) for name, change in cases.items()]


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize(("name", "arguments"), BAD_INPUTS, ids=[name for name, _ in BAD_INPUTS])
def test_dispatcher_rejects_bad_input(name: str, arguments: dict) -> None:
    with pytest.raises((TypeError, ValueError)):
        mask_predict_step(**arguments)


def test_dispatcher_refuses_meta_tensors_with_its_own_error() -> None:
    """Meta tensors hold no lengths to check (before: torch's 'cannot be called on meta tensors')."""
    arguments = {name: value.to("meta") if isinstance(value, torch.Tensor) else value
                 for name, value in _bad_inputs()[0][1].items()}  # fmt: skip
    arguments["logits"] = torch.randn(2, 5, 7, device="meta")
    with pytest.raises(ValueError, match="meta device"):
        mask_predict_step(**arguments)


def test_dispatcher_rejects_non_int_and_non_tensor() -> None:
    good = dict(_bad_inputs()[0][1], logits=torch.randn(2, 5, 7))
    with pytest.raises(TypeError):
        mask_predict_step(**dict(good, iteration=0.0))
    with pytest.raises(TypeError):
        mask_predict_step(**dict(good, tokens=[[0] * 5] * 2))


@needs_native
@pytest.mark.parametrize(("name", "arguments"), BAD_INPUTS, ids=[name for name, _ in BAD_INPUTS])
def test_native_op_rejects_bad_input(name: str, arguments: dict) -> None:
    """The compiled op checks its inputs itself (TORCH_CHECK), so direct calls cannot crash."""
    with pytest.raises((TypeError, ValueError, RuntimeError, NotImplementedError)):
        native_op(*arguments.values())


@needs_native
def test_native_op_rejects_non_contiguous_logits() -> None:
    logits = torch.randn(2, 7, 5).transpose(1, 2)
    with pytest.raises(RuntimeError, match="contiguous"):
        native_op(
            logits,
            torch.zeros(2, 5, dtype=torch.long),
            torch.zeros(2, 5),
            torch.tensor([5, 3]),
            0,
            3,
            0,
        )


def test_dispatcher_accepts_non_contiguous_logits() -> None:
    logits = torch.randn(2, 7, 5).transpose(1, 2)
    tokens = torch.zeros(2, 5, dtype=torch.long)
    expected = run(
        mask_predict_step_reference,
        logits.contiguous(),
        tokens,
        torch.zeros(2, 5),
        torch.tensor([5, 3]),
        0,
        3,
        0,
    )
    got = run(mask_predict_step, logits, tokens, torch.zeros(2, 5), torch.tensor([5, 3]), 0, 3, 0)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])


def test_reference_fallback_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "HAS_NATIVE_OPS", False)
    monkeypatch.setattr(ops, "_warned_missing", False)
    logits, tokens, scores, lengths = make_case(0, 2, 6, 9, torch.float32, 0, False, 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = run(mask_predict_step, logits, tokens, scores, lengths, 0, 2, 0)
        run(mask_predict_step, logits, tokens, scores, lengths, 0, 2, 0)
    assert len([w for w in caught if "native extension" in str(w.message)]) == 1
    expected = run(mask_predict_step_reference, logits, tokens, scores, lengths, 0, 2, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, expected, strict=True))


def test_the_engine_says_once_that_it_decodes_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where janus_fast._C did not load (no compiler, a cache it cannot use), the engine's passes fall
    back to PyTorch: one warning says so (before: silent in the default decoding, probe 27); none
    where JANUS_FAST_FORCE_REFERENCE turned a loaded extension off."""
    from conftest import random_model

    from janus_fast.decoding.passes import PassChoice

    model = random_model()
    monkeypatch.setattr(ops, "_warned_missing", False)
    monkeypatch.setenv("JANUS_FAST_FORCE_REFERENCE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not PassChoice(model).native
    if ops.HAS_NATIVE_OPS:  # loaded and turned off on purpose: nothing to say
        assert not [w for w in caught if "native extension" in str(w.message)]
    monkeypatch.delenv("JANUS_FAST_FORCE_REFERENCE")
    monkeypatch.setattr(ops, "HAS_NATIVE_OPS", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not PassChoice(model).native and not PassChoice(model, "int8").native
    said = [str(w.message) for w in caught if "native extension" in str(w.message)]
    assert len(said) == 1 and "decoding uses the slower PyTorch path" in said[0]


def test_force_reference_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANUS_FAST_FORCE_REFERENCE", "1")
    assert not ops.uses_native_ops()
    logits, tokens, scores, lengths = make_case(1, 2, 6, 9, torch.float32, 0, False, 1.0)
    got = run(mask_predict_step, logits, tokens, scores, lengths, 0, 2, 0)
    expected = run(mask_predict_step_reference, logits, tokens, scores, lengths, 0, 2, 0)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@needs_native
def test_native_op_large_vocabulary_and_long_rows() -> None:
    """Several blocks per vocabulary row, the mask token inside a block, long rows: as reference."""
    for dtype in DTYPES:
        logits, tokens, scores, lengths = make_case(3, 5, 70, 1000, dtype, 517, False, 0.7)
        for iteration in (0, 2):
            native = run(native_op, logits, tokens, scores, lengths, iteration, 3, 517)
            reference = run(mask_predict_step_reference, logits, tokens, scores, lengths, iteration, 3, 517)
            filled = ~native[2]
            assert torch.equal(native[0][filled], reference[0][filled])
            torch.testing.assert_close(native[1], reference[1], rtol=1e-5, atol=1e-4)


@needs_native
@pytest.mark.parametrize("scale", [1.0, 40.0, 200.0])
def test_native_scores_are_as_precise_as_torch_log_softmax_at_large_logits(scale: float) -> None:
    """The fill's log-probabilities against float64 log-softmax, as close as torch's float32 one.

    A confident token with a logit of 40-200 has a log-probability near 0; computed as
    ``x - (max + log(sum))`` it rounds to the ulp of the largest logit (1.8e-6 at 40, 6e-6 at 200)
    and makes exact ties of scores that torch tells apart (re-masked differently by the reference
    decoder and the engine: a probe's NAR mismatch). ``(x - max) - log(sum)`` is torch's order."""
    generator = torch.Generator().manual_seed(7)
    rows, length, vocab = 4, 12, 600
    logits = torch.randn(rows, length, vocab, generator=generator) * scale / 3
    logits[..., 7] += scale
    tokens = torch.full((rows, length), 4)
    tokens[:, 0], tokens[:, -1] = 2, 3
    lengths = torch.full((rows,), length)
    native = run(native_op, logits, tokens, torch.zeros(rows, length), lengths, 0, 1, 4)
    exact = torch.log_softmax(logits.double(), -1).gather(2, native[0][..., None]).squeeze(-1)[:, 1:-1]
    torch_error = torch.log_softmax(logits, -1).double().gather(2, native[0][..., None]).squeeze(-1)[:, 1:-1] - exact
    native_error = (native[1][:, 1:-1].double() - exact).abs().max()
    assert native_error <= max(4 * float(torch_error.abs().max()), 5e-7), (native_error, torch_error.abs().max())


@needs_native
def test_native_op_under_torch_compile_and_opcheck() -> None:
    """The schema (mutating tokens/scores) and the Meta kernel support tracing and compile."""
    logits, tokens, scores, lengths = make_case(2, 3, 8, 11, torch.float32, 0, False, 1.0)
    torch.library.opcheck(
        torch.ops.janus_fast.mask_predict_step.default,
        (logits, tokens.clone(), scores.clone(), lengths, 0, 3, 0),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )

    def step(logits, tokens, scores, lengths):
        return torch.ops.janus_fast.mask_predict_step(logits, tokens, scores, lengths, 0, 3, 0)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = run(lambda *a: compiled(*a[:4]), logits, tokens, scores, lengths, 0, 3, 0)
    expected = run(native_op, logits, tokens, scores, lengths, 0, 3, 0)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@needs_native
def test_native_op_under_torchscript() -> None:
    """torch.ops.janus_fast.mask_predict_step is callable from a scripted function."""

    def step(logits: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.ops.janus_fast.mask_predict_step(logits, tokens, scores, lengths, 0, 3, 0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in recent torch
        scripted = torch.jit.script(step)
    logits, tokens, scores, lengths = make_case(4, 3, 8, 11, torch.float32, 0, False, 1.0)
    got = run(lambda *a: scripted(*a[:4]), logits, tokens, scores, lengths, 0, 3, 0)
    expected = run(native_op, logits, tokens, scores, lengths, 0, 3, 0)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@needs_native
def test_native_matches_reference_on_1000_fuzz_cases_with_nan_and_inf() -> None:
    """Rows holding NaN, +inf, -inf (single logits, whole rows, the mask column), ties, lengths
    2..T and every dtype: token for token, score for score (NaN where the reference has NaN)."""
    generator = torch.Generator().manual_seed(2024)
    specials = torch.tensor([float("nan"), float("inf"), float("-inf")])

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=generator))

    for case in range(1000):
        rows, width, vocab = draw(1, 3), draw(2, 9), [2, 3, 5, 17, 129, 300][draw(0, 5)]
        logits = torch.randn(rows, width, vocab, generator=generator)
        if draw(0, 4) == 0:
            logits = logits.round()  # ties
        for _ in range(draw(0, 6)):
            logits[draw(0, rows - 1), draw(0, width - 1), draw(0, vocab - 1)] = specials[draw(0, 2)]
        if draw(0, 9) == 0:
            logits[draw(0, rows - 1), draw(0, width - 1)] = specials[draw(0, 2)]
        mask_id = draw(0, vocab - 1)
        if draw(0, 9) == 0:
            logits[..., mask_id] = specials[draw(0, 2)]
        logits = logits.to(DTYPES[draw(0, 2)])
        lengths = torch.randint(2, width + 1, (rows,), generator=generator)
        num_iterations = draw(1, 5)
        iteration = draw(0, num_iterations - 1)
        tokens = torch.full((rows, width), mask_id)
        tokens[:, 0] = 0 if mask_id else 1
        scores = torch.zeros(rows, width)
        # step 1 (fill) alone on the last iteration: same tokens, same scores (NaN where NaN)
        native = run(native_op, logits, tokens, scores, lengths, num_iterations - 1, num_iterations, mask_id)
        reference = run(
            mask_predict_step_reference, logits, tokens, scores, lengths, num_iterations - 1, num_iterations, mask_id
        )
        assert torch.equal(native[0], reference[0]), case
        torch.testing.assert_close(native[1], reference[1], equal_nan=True, rtol=1e-5, atol=1e-4, msg=str(case))
        # step 2 (re-mask) on the very same scores, NaN included: the same positions
        step = run(native_op, logits, native[0], native[1], lengths, iteration, num_iterations, mask_id)
        expected = run(mask_predict_step_reference, logits, native[0], native[1], lengths, iteration,
                       num_iterations, mask_id)  # fmt: skip
        assert torch.equal(step[2], expected[2]) and torch.equal(step[0], expected[0]), case


# ------------------------------------------------------------------ mask_predict_remask (step 2 alone)
needs_remask = pytest.mark.skipif(
    not (ops.HAS_NATIVE_OPS and hasattr(torch.ops.janus_fast, "mask_predict_remask")),
    reason="janus_fast._C not built with mask_predict_remask",
)


@needs_remask
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=case_parameters, data=st.data())
def test_native_remask_matches_its_reference(case: dict, data: st.DataObject) -> None:
    """The native re-mask against ``mask_predict_remask_reference``: the same tokens and flags, the
    scores untouched, over random rows with ties (quantised scores) and NaN scores."""
    _, tokens, scores, lengths = make_case(**case, mask_id=0)
    if data.draw(st.booleans()):
        scores[torch.rand(scores.shape) < 0.1] = float("nan")
    num_iterations = data.draw(st.integers(1, 6))
    iteration = data.draw(st.integers(0, num_iterations - 1))
    mask_id = data.draw(st.integers(0, 5))
    got_tokens, want_tokens = tokens.clone(), tokens.clone()
    got = torch.ops.janus_fast.mask_predict_remask(got_tokens, scores, lengths, iteration, num_iterations, mask_id)
    want = ops.mask_predict_remask_reference(want_tokens, scores.clone(), lengths, iteration, num_iterations, mask_id)
    assert torch.equal(got, want) and torch.equal(got_tokens, want_tokens)


@settings(max_examples=60, deadline=None)
@given(case=case_parameters, iteration=st.integers(0, 3))
def test_step_is_its_fill_then_the_remask(case: dict, iteration: int) -> None:
    """``mask_predict_step`` = its fill, then ``mask_predict_remask`` on the filled rows (through the
    dispatcher: the native op where it is built, else the reference)."""
    logits, tokens, scores, lengths = make_case(**case, mask_id=0)
    step_tokens, step_scores, step_remasked = run(mask_predict_step, logits, tokens, scores, lengths, iteration, 4, 0)
    filled_tokens, filled_scores, _ = run(mask_predict_step, logits, tokens, scores, lengths, 3, 4, 0)  # fill only
    remasked = ops.mask_predict_remask(filled_tokens, filled_scores, lengths, iteration, 4, 0)
    assert torch.equal(remasked, step_remasked) and torch.equal(filled_tokens, step_tokens)
    assert_same(filled_scores, step_scores)


@needs_remask
def test_remask_op_opcheck_and_bad_input() -> None:
    """The schema (mutating tokens) and the Meta kernel; errors for bad shapes, dtypes and ranges
    from the dispatcher and the native op alike."""
    _, tokens, scores, lengths = make_case(2, 3, 8, 11, torch.float32, 0, False, 1.0)
    torch.library.opcheck(
        torch.ops.janus_fast.mask_predict_remask.default,
        (tokens.clone(), scores, lengths, 0, 3, 0),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )
    bad = [
        ((tokens.float(), scores, lengths, 0, 3, 0), TypeError, "tokens must be"),
        ((tokens, scores.double(), lengths, 0, 3, 0), TypeError, "scores must be"),
        ((tokens, scores[:, :4].contiguous(), lengths, 0, 3, 0), ValueError, "scores must be"),
        ((tokens, scores, lengths[:2], 0, 3, 0), ValueError, "lengths must be"),
        ((tokens, scores, lengths + 20, 0, 3, 0), ValueError, "lengths must be in"),
        ((tokens, scores, lengths, 3, 3, 0), ValueError, "iteration must be"),
        ((tokens, scores, lengths, 0, 0, 0), ValueError, "num_iterations must be"),
        ((tokens, scores, lengths, 0, 3, -1), ValueError, "mask_id must be"),
    ]
    for arguments, error, message in bad:
        for function in (ops.mask_predict_remask, torch.ops.janus_fast.mask_predict_remask):
            with pytest.raises(error, match=message):
                function(arguments[0].clone(), *arguments[1:])
