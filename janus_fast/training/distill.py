"""Sequence-level knowledge distillation (Kim & Rush, 2016): ``janus-fast distill``.

A teacher translates the training sources; a student then trains on those translations in place of
the references (``janus-fast train --train-target FILE``). The translation is a corpus job,
``distill`` being ``janus_fast.corpus.translate_file``: in chunks written atomically to
``OUTPUT.parts/`` with a manifest of what made them, so that a killed run resumes where it stopped
(and refuses to mix chunks of other inputs or options), shared among the ranks of a ``torchrun``
launch. Only the command's defaults differ from ``translate``'s (AR beam 4).
"""

from __future__ import annotations

from janus_fast.corpus import MANIFEST_NAME, PARTS_SUFFIX, model_identity, translate_file

distill = translate_file

__all__ = ["MANIFEST_NAME", "PARTS_SUFFIX", "distill", "model_identity"]
