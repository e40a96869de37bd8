"""Sequence-level knowledge distillation (Kim & Rush, 2016): ``janus-fast distill``.

A teacher translates the training sources; a student then trains on those translations in place of
the references (``janus-fast train --train-target FILE``). The corpus is translated in chunks of
``chunk_size`` lines, each written atomically to ``OUTPUT.parts/`` as it completes, so a killed
run resumes at the first missing chunk; the finished output (gzip when its name ends in ``.gz``)
replaces the parts once every chunk is there, with exactly one line per input line.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable

from janus_fast.data import InputError, read_lines
from janus_fast.output import atomic_write, check_output_not_input
from janus_fast.translator import Translator

PARTS_SUFFIX = ".parts"


def _chunk_path(parts_dir: str, index: int) -> str:
    return os.path.join(parts_dir, f"chunk-{index:06d}.txt")


def distill(
    translator: Translator,
    source_path: str,
    output_path: str,
    chunk_size: int = 2000,
    progress: Callable[[int], None] | None = None,
    **decode_options,
) -> int:
    """Translate every line of ``source_path`` (plain or .gz) into ``output_path``; returns the
    number of lines. ``decode_options`` go to ``Translator.translate`` (mode, beam, iterations, ...).
    Chunks already in ``output_path + '.parts'`` from an interrupted run are kept, not redone. An
    ``output_path`` that is the source file (symlinks followed) is refused (InputError)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_output_not_input(output_path, [source_path], "--output")
    sources = read_lines(source_path)
    parts_dir = output_path + PARTS_SUFFIX
    try:
        os.makedirs(parts_dir, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create {parts_dir}: {error}") from error
    starts = range(0, len(sources), chunk_size)
    for index, start in enumerate(starts):
        chunk = sources[start : start + chunk_size]
        path = _chunk_path(parts_dir, index)
        if os.path.exists(path) and len(read_lines(path)) == len(chunk):
            if progress is not None:
                progress(len(chunk))
            continue
        outputs = translator.translate(chunk, progress=progress, **decode_options)
        atomic_write(path, "".join(line.replace("\n", " ") + "\n" for line in outputs).encode("utf-8"))

    lines = [line for index in range(len(starts)) for line in read_lines(_chunk_path(parts_dir, index))]
    if len(lines) != len(sources):  # a chunk file changed under us: refuse rather than misalign
        raise InputError(f"{parts_dir}: {len(lines)} translated lines for {len(sources)} sources; delete it and rerun")
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if output_path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write(output_path, data)
    shutil.rmtree(parts_dir)
    return len(lines)


__all__ = ["distill"]
