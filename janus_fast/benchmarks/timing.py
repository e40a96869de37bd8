"""The one timer of the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(
    function: Callable[[], object],
    repeats: int,
    setup: Callable[[], object] | None = None,
    synchronize: Callable[[], object] | None = None,
    warmup: bool = True,
) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``function`` (after one untimed warm-up
    call unless ``warmup`` is False); ``setup`` runs untimed before each call, ``synchronize`` (e.g.
    torch.cuda.synchronize) inside the timed region after it."""

    def call() -> float:
        if setup is not None:
            setup()
        start = time.perf_counter()
        function()
        if synchronize is not None:
            synchronize()
        return time.perf_counter() - start

    if warmup:
        call()
    return statistics.median(call() for _ in range(max(repeats, 1)))
