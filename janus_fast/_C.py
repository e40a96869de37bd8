"""``janus_fast._C`` when no compiled extension module was installed: built on first use.

A compiled module ``janus_fast/_C.<abi>.so`` (installed when setup.py could import torch, e.g.
``pip install --no-build-isolation .``) takes precedence over this file: Python's import system
tries extension modules before source files in a directory. Without one (a plain ``pip install .``),
``import janus_fast._C`` runs this module: it compiles the same C++ sources with ninja against the
torch that is installed (once per torch version and sources, cached per user; see
``janus_fast.native``) and loads the library, which registers ``torch.ops.janus_fast.*``. The cached
library is checked against the size and sha256 recorded when it was built before it is loaded; a
damaged one (e.g. truncated, which would kill the process with SIGBUS) is built again. When that
cannot be done it raises an ``ImportError`` that says what to run.
"""

from janus_fast.native.build import build_and_load as _build_and_load

LIBRARY = str(_build_and_load())
