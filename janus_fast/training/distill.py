"""Sequence-level knowledge distillation (Kim & Rush, 2016): ``janus-fast distill``.

A teacher translates the training sources; a student then trains on those translations in place of
the references (``janus-fast train --train-target FILE``). The translation is a corpus job
(``janus_fast.corpus.translate_file``): in chunks written atomically to ``OUTPUT.parts/`` with a
manifest of what made them, so that a killed run resumes where it stopped (and refuses to mix
chunks of other inputs or options), shared among the ranks of a ``torchrun`` launch.
"""

from __future__ import annotations

from janus_fast.corpus import MANIFEST_NAME, PARTS_SUFFIX, ChunkTranslator, Progress, model_identity, translate_file
from janus_fast.decoding.options import DecodeOptions
from janus_fast.distributed import DistributedContext


def distill(
    translator: ChunkTranslator,
    source_path: str,
    output_path: str,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    model_dir: str | None = None,
    options: DecodeOptions | None = None,
    batch_size: int | None = None,
    context: DistributedContext | None = None,
    **changes: object,
) -> int:
    """Translate every line of ``source_path`` (plain or .gz) into ``output_path`` (.gz: gzip);
    returns the number of lines. The arguments are ``translate_file``'s (chunks of ``chunk_size``
    lines, resumable; ``options``, ``changes`` and ``batch_size`` those of ``Translator.translate``)."""
    return translate_file(
        translator,
        source_path,
        output_path,
        chunk_size=chunk_size,
        options=options,
        batch_size=batch_size,
        progress=progress,
        model_dir=model_dir,
        context=context,
        **changes,
    )


__all__ = ["MANIFEST_NAME", "PARTS_SUFFIX", "distill", "model_identity"]
