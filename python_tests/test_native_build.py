"""The build of janus_fast._C on first use (janus_fast/native/build.py) without compiling anything: the
source globs, what is installed with the package, the cache key, and the errors that say what to
run. The real first-use build runs in .ci/install_check.sh (a fresh venv, plain ``pip install``)."""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

from janus_fast.native import build as native

REPO_ROOT = Path(__file__).resolve().parents[1]
CSRC = REPO_ROOT / "csrc"


def test_sources_are_the_globbed_ones() -> None:
    cpu = sorted(glob.glob(str(CSRC / "*.cpp")) + glob.glob(str(CSRC / "cpu" / "*.cpp")))
    cuda = sorted(glob.glob(str(CSRC / "cuda" / "*.cu")))
    assert cpu and cuda
    assert native.extension_sources(CSRC, with_cuda=False) == cpu
    assert native.extension_sources(CSRC, with_cuda=True) == cpu + cuda


def test_new_cpu_file_is_built_and_changes_the_cache_key(tmp_path: Path) -> None:
    csrc = tmp_path / "csrc"
    shutil.copytree(CSRC, csrc)
    key = native.build_key(torch, csrc, with_cuda=False)
    assert key.startswith(f"torch{torch.__version__}-") and "-cpu-" in key
    (csrc / "cpu" / "new_op_cpu.cpp").write_text("// a new op\n")
    assert str(csrc / "cpu" / "new_op_cpu.cpp") in native.extension_sources(csrc, with_cuda=False)
    changed = native.build_key(torch, csrc, with_cuda=False)
    assert changed != key
    (csrc / "core" / "select_lowest.h").write_text("// edited header\n")
    assert native.build_key(torch, csrc, with_cuda=False) != changed


def test_installed_sources_cover_the_build() -> None:
    """Every source and header the build uses is installed with the package (package_data)."""
    installed = set(native._source_files(CSRC))
    needed = {Path(path) for path in native.extension_sources(CSRC, with_cuda=True)}
    needed |= {path for path in CSRC.rglob("*.h") if "tests" not in path.relative_to(CSRC).parts}
    assert needed <= installed
    assert not any("tests" in path.relative_to(CSRC).parts for path in installed)


def test_source_dir_of_a_checkout() -> None:
    assert native.source_dir() == CSRC


def test_compiled_module_takes_precedence_over_the_first_use_build() -> None:
    """janus_fast/_C.py (the first-use build) is only imported when no compiled module is there."""
    package = REPO_ROOT / "janus_fast"
    spec = importlib.util.find_spec("janus_fast._C")
    assert spec is not None
    if any(package.glob("_C*.so")):
        assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader), spec.origin
    else:
        assert spec.origin == str(package / "_C.py")


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("JANUS_FAST_CACHE_DIR", str(cache))
    monkeypatch.setenv("FORCE_ONLY_CPU", "1")
    monkeypatch.delenv("JANUS_FAST_NO_EXTENSION", raising=False)
    return cache


def test_no_compiler_says_what_to_run(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(ImportError, match=r"needs a C\+\+ compiler") as caught:
        native.build_and_load()
    assert "-m janus_fast.native" in str(caught.value) and "apt-get install g++" in str(caught.value)
    assert not list(fresh_cache.glob("*/build-failed.log"))  # not remembered: installing one fixes it


def test_failed_build_is_remembered(fresh_cache: Path) -> None:
    build_dir = fresh_cache / native.build_key(torch, CSRC, with_cuda=False)
    build_dir.mkdir(parents=True)
    (build_dir / "build-failed.log").write_text("error: something\n")
    with pytest.raises(ImportError, match="failed earlier") as caught:
        native.build_and_load()
    assert str(build_dir / "build-failed.log") in str(caught.value)
    assert "-m janus_fast.native" in str(caught.value)


def test_no_extension_switch(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANUS_FAST_NO_EXTENSION", "1")
    with pytest.raises(ImportError, match="JANUS_FAST_NO_EXTENSION=1"):
        native.build_and_load()
    assert not fresh_cache.exists()


@pytest.mark.parametrize("name", ["JANUS_FAST_NO_EXTENSION", "FORCE_CUDA", "FORCE_ONLY_CPU"])
def test_a_build_switch_with_an_unknown_value_is_refused_by_name(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The build's switches read their values as every switch of the package does (probe 27 found
    FORCE_CUDA=maybe silently read as off): an unknown value is the ImportError every caller falls
    back on, naming the variable and the values it takes, before anything is built."""
    monkeypatch.setenv(name, "maybe")
    with pytest.raises(ImportError, match=rf"{name}='maybe': expected one of 1, true, yes, on, 0, false, no, off"):
        native.build_and_load()
    assert not fresh_cache.exists()


def test_switch_values_read_alike_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from janus_fast import ops

    assert ops.env_flag is native.env_flag  # one reader for the build's and the package's switches
    for value, expected in [("1", True), ("On", True), (" yes ", True), ("0", False), ("OFF", False), ("", None)]:
        monkeypatch.setenv("JANUS_FAST_TEST_SWITCH", value)
        assert native.env_flag("JANUS_FAST_TEST_SWITCH") is (False if expected is None else expected)
        assert native.env_flag("JANUS_FAST_TEST_SWITCH", default=True) is (True if expected is None else expected)
    monkeypatch.delenv("JANUS_FAST_TEST_SWITCH")
    assert native.env_flag("JANUS_FAST_TEST_SWITCH") is False


def test_a_cache_path_the_system_refuses_is_an_import_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache path too long for the filesystem: the error every caller falls back on (ImportError,
    naming the variable to set), not a bare OSError that ended translate (probe 27)."""
    monkeypatch.setenv("JANUS_FAST_CACHE_DIR", str(tmp_path / ("x" * 300)))
    monkeypatch.setenv("FORCE_ONLY_CPU", "1")
    monkeypatch.delenv("JANUS_FAST_NO_EXTENSION", raising=False)
    with pytest.raises(ImportError, match=r"cannot use the cache .*set JANUS_FAST_CACHE_DIR to a writable directory"):
        native.build_and_load()


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JANUS_FAST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.cache_root() == tmp_path / "janus_fast"
    monkeypatch.setenv("JANUS_FAST_CACHE_DIR", os.path.join(str(tmp_path), "elsewhere"))
    assert native.cache_root() == tmp_path / "elsewhere"


def test_device_without_native_kernel_uses_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device with no kernel in janus_fast._C (e.g. CUDA when it was compiled without nvcc): the
    reference runs, with a warning, instead of a dispatcher error."""
    import janus_fast.ops as ops

    monkeypatch.setattr(ops, "HAS_NATIVE_OPS", True)
    monkeypatch.delenv("JANUS_FAST_FORCE_REFERENCE", raising=False)
    monkeypatch.setattr(ops, "_native_kernels", {("mask_predict_step", "cpu"): False})
    calls = []
    monkeypatch.setattr(ops, "mask_predict_step_reference", lambda *args: calls.append(args) or "reference")
    tokens = torch.full((1, 5), 3, dtype=torch.int64)
    assert ops.mask_predict_step(torch.randn(1, 5, 7), tokens, torch.zeros(1, 5), torch.tensor([5]), 0, 2, 3) == (
        "reference"
    )
    assert len(calls) == 1
    monkeypatch.setattr(ops, "_native_kernels", {})
    with pytest.warns(RuntimeWarning, match="has no xla kernel"):
        assert not ops._has_native_kernel("xla")
