"""Has a model's weights changed since a copy of them was made? ``ParameterStamp`` answers on every
decoding call without reading every weight: which tensors the parameters are and their version
counters (``parameters_version``), and a few values of each at fixed positions (``WeightSamples``).

The engine's converted weights (``janus_fast.native.decoder.NativeDecoder``) and the PyTorch dynamic
int8 copy (``janus_fast.decoding.passes.PassChoice``) are made again when their model's stamp no
longer matches.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

# Guards what a model keeps in its ``__dict__`` for the engine (the converted weights, made on first
# use) against another thread copying the model meanwhile (the int8 copy's deepcopy iterates that
# dict: "dictionary changed size during iteration" when two first calls met) or converting it too.
MODEL_CACHE_LOCK = threading.RLock()


def model_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` (a shared one once per module holding it): ``model.parameters()``
    without its bookkeeping, which costs more than the rest of the per-call check together."""
    found: list[nn.Parameter] = []
    stack: list[nn.Module] = [model]
    while stack:
        module = stack.pop()
        found.extend(parameter for parameter in module._parameters.values() if parameter is not None)
        stack.extend(module._modules.values())
    return found


def parameters_version(parameters: list[nn.Parameter]) -> tuple[tuple[int, int, int], ...]:
    """Which tensors the parameters are and how often each was written through itself: identity
    (``load_state_dict(..., assign=True)`` and ``module.weight = ...`` put new Parameters in place;
    the decoder keeps the old ones alive, so an id is never reused meanwhile), ``data_ptr``
    (``p.data = tensor`` keeps the Parameter but swaps its storage) and ``_version`` (every in-place
    op on ``p`` itself: optimizer steps, plain ``load_state_dict``). A write through ``p.data``
    (``p.data.copy_(...)``) changes none of them: ``p.data`` is a new tensor with a version counter
    of its own, started at 0 on each access; ``WeightSamples`` sees those."""
    return tuple((id(p), p.data_ptr(), p._version) for p in parameters)


# element size -> the integer dtype of that size: samples are compared bit for bit (NaN == NaN)
SAME_SIZE_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class WeightSamples:
    """A few values of every parameter at fixed positions (``SAMPLES`` spread over each tensor,
    first and last included), read again on every ``for_model`` call: what catches writes no
    version counter records (``p.data.copy_(...)``, writes through a NumPy view), without reading
    every weight per call (that costs a pass over the whole model). A write that leaves every
    sampled value as it was is not seen: after such a targeted edit, ``del model._native_decoders``."""

    SAMPLES = 32

    def __init__(self, parameters: list[nn.Parameter]) -> None:
        self.parameters = parameters
        self._view()
        self.values = self.read()

    def _view(self) -> None:
        """NumPy views of the parameters' memory, as integers of the same width, and the positions
        to read: indexing a NumPy array costs a fraction of a torch op, which matters per call."""
        self.views: list[np.ndarray] = []
        self.positions: list[np.ndarray | tuple[np.ndarray, ...]] = []
        for parameter in self.parameters:
            tensor = parameter.detach()
            if tensor.dim() == 0:
                tensor = tensor.reshape(1)  # a view
            tensor = tensor.view(SAME_SIZE_INTEGER.get(tensor.element_size(), torch.uint8))
            count = tensor.numel()
            flat = np.unique(np.linspace(0, count - 1, min(count, self.SAMPLES)).round().astype(np.int64))
            if tensor.is_contiguous():
                self.views.append(tensor.view(-1).numpy())
                self.positions.append(flat)
            else:  # never copied: a copy would not see later writes
                self.views.append(tensor.numpy())
                self.positions.append(np.unravel_index(flat, tuple(tensor.shape)))

    # Pickled (a Translator sent to a process pool, a deep copy) without the views: a view is a raw
    # pointer into a parameter's memory, which pickling the parameter for a pool moves to shared
    # memory (freeing the old block: the view would read freed memory, a segfault); made again from
    # the parameters on arrival, with the values sampled at conversion kept.
    def __getstate__(self) -> dict:
        return {"parameters": self.parameters, "values": self.values}

    def __setstate__(self, state: dict) -> None:
        self.parameters, self.values = state["parameters"], state["values"]
        self._view()

    def read(self) -> bytes:
        """The sampled values now, as bytes."""
        return b"".join(view[positions].tobytes() for view, positions in zip(self.views, self.positions))

    def unchanged(self) -> bool:
        """True while every sampled value is bit for bit what it was at conversion."""
        return self.read() == self.values


class ParameterStamp:
    """The state of ``model``'s parameters now, to compare with later (``changed``). Parameters on the
    meta device (released to the engine) count by identity and version only."""

    def __init__(self, model: nn.Module) -> None:
        self.parameters = model_parameters(model)  # kept alive, so their ids stay theirs
        self.version = parameters_version(self.parameters)
        self.samples = WeightSamples([p for p in self.parameters if not p.is_meta])

    def changed(self, model: nn.Module) -> bool:
        """Whether ``model``'s parameters are other tensors, were written in place, or hold other
        values at the sampled positions than when this stamp was made."""
        return self.version != parameters_version(model_parameters(model)) or not self.samples.unchanged()
