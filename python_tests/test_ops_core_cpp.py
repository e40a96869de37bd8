"""Builds and runs the C++ unit tests of the torch-free core of the native ops (csrc/core/) with
CMake and ctest, as ``cmake -S . -B build/cmake && cmake --build build/cmake && ctest`` does.
Skips only when cmake or a C++ compiler is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ctest") is None, reason="cmake not installed")
@pytest.mark.skipif(
    not any(shutil.which(compiler) for compiler in ("c++", "g++", "clang++")),
    reason="no C++ compiler",
)
def test_core_cpp_unit_tests(tmp_path: Path) -> None:
    build = tmp_path / "cmake"
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="1")
    for command in (
        ["cmake", "-S", str(REPO_ROOT), "-B", str(build)],
        ["cmake", "--build", str(build)],
        ["ctest", "--test-dir", str(build), "--output-on-failure"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"


def test_native_extension_imports_on_its_own():
    """``import janus_fast._C`` in a fresh interpreter, without importing torch first."""
    import subprocess
    import sys

    import janus_fast.ops as ops

    if not ops.HAS_NATIVE_OPS:
        import pytest

        pytest.skip(f"janus_fast._C not built: {ops.NATIVE_IMPORT_ERROR}")
    code = "import janus_fast._C, torch; print(hasattr(torch.ops.janus_fast, 'mask_predict_step'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr
