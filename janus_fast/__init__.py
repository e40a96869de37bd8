"""janus_fast: JANUS joint AR/NAR translation, trained in PyTorch and decoded fast.

Public API::

    from janus_fast import JanusConfig, JanusModel, Translator, generate
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# libtorch must be loaded before the native extension janus_fast._C (linked against it), so that
# `import janus_fast._C` works on its own; the public objects below are still imported lazily.
import torch  # noqa: F401

__version__ = "0.1.0"
__all__ = ["JanusConfig", "JanusModel", "Translator", "generate", "__version__"]

if TYPE_CHECKING:
    from janus_fast.generation import generate
    from janus_fast.model import JanusConfig, JanusModel
    from janus_fast.translator import Translator

_LAZY = {
    "JanusConfig": "janus_fast.model",
    "JanusModel": "janus_fast.model",
    "Translator": "janus_fast.translator",
    "generate": "janus_fast.generation",
}


def __getattr__(name: str) -> Any:
    """Import the public objects lazily: ``import janus_fast`` loads torch and nothing else."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'janus_fast' has no attribute {name!r}")
