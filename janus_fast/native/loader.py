"""Load ``janus_fast._C``: the module compiled at install time after checking its library, else the
first-use build (``janus_fast._C``, which calls ``janus_fast.native.build.build_and_load``).

``python -m janus_fast.native`` runs :func:`main`: builds the library now if needed and says which
one is used (then ``janus_fast/native/__main__.py`` reports the instruction set of the native
passes, or that the reference ops are forced).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

from janus_fast.native.build import DamagedLibraryError, _retry_command, build_and_load, library_problem


def installed_module() -> Path | None:
    """The compiled module ``janus_fast._C`` installed with the package (built at install time), or None."""
    spec = importlib.util.find_spec("janus_fast._C")
    if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader) and spec.origin:
        return Path(spec.origin)
    return None


def import_native() -> Path:
    """Import ``janus_fast._C`` (registers ``torch.ops.janus_fast.*``) after checking the library it loads;
    returns that library's path.

    The compiled module installed with the package is checked (:func:`library_problem`) and, when it
    fails, not loaded: :class:`DamagedLibraryError`, one line naming it and what to run. Without one,
    ``janus_fast/_C.py`` builds (or checks) the first-use library. Raises an ``ImportError``.
    """
    module = installed_module()
    if module is not None:
        problem = library_problem(module)
        if problem is not None:
            raise DamagedLibraryError(
                f"janus_fast._C: {module} (compiled at install time) {problem}: not loaded. Reinstall janus_fast "
                "from its source checkout (`pip install --no-build-isolation --force-reinstall --no-deps <checkout>`), "
                f"or delete that file and run `{_retry_command()}` to build it on first use"
            )
    import janus_fast._C

    return module if module is not None else Path(janus_fast._C.LIBRARY)


def main() -> int:
    """Build janus_fast._C now if needed (retrying a remembered failure) and say which library is used;
    a library that fails its check is built again (first use) or named in a one-line error (install time)."""
    try:
        if installed_module() is not None:
            where = f"{import_native()} (built at install time)"
        else:
            where = f"{build_and_load(retry_failed=True)} (built on first use)"
    except ImportError as error:
        print(error, file=sys.stderr)
        return 1
    import torch

    try:  # a file of another build in the cache loads but registers nothing of ours
        registered = torch._C._dispatch_has_kernel_for_dispatch_key("janus_fast::mask_predict_step", "CPU")
    except RuntimeError:  # no such operator
        registered = False
    op = "op janus_fast::mask_predict_step registered" if registered else "no janus_fast op registered"
    print(f"janus_fast._C: {where}; torch {torch.__version__}; {op}")
    return 0
