"""The native library is checked before it is loaded (issue 34 item 4): a truncated library killed
every run with SIGBUS (exit 135) and no message, ``python -m janus_fast.native`` too.

The subprocess tests run a copy of the package (under tmp_path, imported first: it is the working
directory) with a truncated copy of the built library, either as its compiled module (built at
install time) or in a first-use cache (JANUS_FAST_CACHE_DIR); the library of the checkout is never
touched. They need no compiler: the rebuild of a damaged cached library is made to fail fast (CXX
names no compiler), except in the one slow test that rebuilds it for real.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import janus_fast
from janus_fast.native import build as native

PACKAGE = Path(janus_fast.__file__).resolve().parent
NO_COMPILER = "no-such-compiler++"
OPS_CODE = "import janus_fast.ops as ops; print(ops.HAS_NATIVE_OPS); print(ops.NATIVE_IMPORT_ERROR)"
# how much of the library is kept: half the file (as in the issue), or a part of its code (its
# loaded segments end past it: that is what killed the process with SIGBUS when it was loaded)
TRUNCATIONS = {"half": lambda size: size // 2, "into its code": lambda size: min(size // 4, 1 << 16)}


@pytest.fixture(scope="module")
def built_library() -> Path:
    """The library janus_fast._C loaded here: the compiled module, else the first-use one."""
    import janus_fast.ops as ops

    if not ops.HAS_NATIVE_OPS:
        pytest.skip(f"janus_fast._C is not built: {ops.NATIVE_IMPORT_ERROR}")
    import janus_fast._C as module

    return Path(getattr(module, "LIBRARY", None) or module.__file__)


def _package_copy(root: Path) -> Path:
    """A copy of the package under ``root`` (no compiled module, no pretrained model), with its C++
    sources in ``root/csrc`` for the first-use build. Returns ``root``."""
    shutil.copytree(
        PACKAGE,
        root / "janus_fast",
        ignore=shutil.ignore_patterns("_C*.so", "*.record", "pretrained", "__pycache__", "_csrc"),
    )
    shutil.copytree(native.source_dir(), root / "csrc")
    return root


def _truncated_copy(library: Path, target: Path, truncation: str) -> None:
    data = library.read_bytes()
    target.write_bytes(data[: TRUNCATIONS[truncation](len(data))])


def _run(root: Path, cache: Path, *args: str, cxx: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JANUS_FAST_")}
    env.update(JANUS_FAST_CACHE_DIR=str(cache), FORCE_ONLY_CPU="1", PYTHONPATH=str(root))
    if cxx is not None:
        env["CXX"] = cxx
    return subprocess.run(
        [sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=1200, check=False
    )


def _ends_normally(result: subprocess.CompletedProcess) -> None:
    assert result.returncode >= 0 and result.returncode != 128 + 7, (
        f"died with {result.returncode} (SIGBUS is -7 / 135)\n{result.stderr}"
    )


def _cache_dir(csrc: Path, cache: Path, cxx: str | None, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The build directory a first use with the sources ``csrc`` looks in (its key names the compiler),
    marked built."""
    if cxx is None:
        monkeypatch.delenv("CXX", raising=False)
    else:
        monkeypatch.setenv("CXX", cxx)
    monkeypatch.setenv("FORCE_ONLY_CPU", "1")
    build_dir = cache / native.build_key(torch, csrc, with_cuda=False)
    build_dir.mkdir(parents=True)
    (build_dir / "built").write_text("torch, CPU, built in 1 s\n")
    return build_dir


def _package_with_cache(tmp_path: Path, cxx: str | None, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """A copy of the package in ``tmp_path / "site"`` (``_package_copy``) and the build directory of its
    first use in the cache ``tmp_path / "cache"`` (``_cache_dir``). Returns the copy, the build directory
    and where the library goes in it (not written)."""
    root = _package_copy(tmp_path / "site")
    build_dir = _cache_dir(root / "csrc", tmp_path / "cache", cxx, monkeypatch)
    return root, build_dir, build_dir / f"{native.LIBRARY_NAME}.so"


@pytest.mark.parametrize("truncation", sorted(TRUNCATIONS))
def test_truncated_compiled_module_is_skipped_with_one_line(
    built_library: Path, tmp_path: Path, truncation: str
) -> None:
    root = _package_copy(tmp_path / "site")
    module = root / "janus_fast" / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    _truncated_copy(built_library, module, truncation)
    result = _run(root, tmp_path / "cache", "-c", OPS_CODE)
    _ends_normally(result)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "False"
    warning = [line for line in result.stderr.splitlines() if line.startswith("janus_fast: warning:")]
    assert len(warning) == 1 and str(module) in warning[0] and "is truncated" in warning[0], result.stderr
    assert "pip install" in warning[0] and "-m janus_fast.native" in warning[0]
    assert not (tmp_path / "cache").exists()  # the reference ops are used; nothing is built
    if truncation == "into its code":
        result = _run(root, tmp_path / "cache", "-m", "janus_fast.native")
        _ends_normally(result)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and str(module) in result.stderr, result.stderr


@pytest.mark.parametrize(("truncation", "recorded"), [("half", True), ("into its code", False)])
def test_truncated_cached_library_is_built_again(
    built_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, truncation: str, recorded: bool
) -> None:
    """A truncated first-use library (with the record of the whole one, or none) is deleted and built
    again; here that build fails at once (no compiler): the reference ops are used, nothing dies."""
    root, build_dir, library = _package_with_cache(tmp_path, NO_COMPILER, monkeypatch)
    if recorded:
        shutil.copyfile(built_library, library)
        native.write_record(library)
    _truncated_copy(built_library, library, truncation)
    result = _run(root, tmp_path / "cache", "-c", OPS_CODE, cxx=NO_COMPILER)
    _ends_normally(result)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "False" and "needs a C++ compiler" in result.stdout
    reason = "recorded when it was built" if recorded else "is truncated"
    assert f"the cached library {library} " in result.stderr and reason in result.stderr, result.stderr
    assert "building it again" in result.stderr
    assert not library.exists()  # not left behind for the next run
    (build_dir / "built").write_text("torch, CPU, built in 1 s\n")
    _truncated_copy(built_library, library, truncation)
    result = _run(root, tmp_path / "cache", "-m", "janus_fast.native", cxx=NO_COMPILER)
    _ends_normally(result)
    assert result.returncode == 1 and "needs a C++ compiler" in result.stderr, result.stderr


def test_cached_library_without_a_record_is_loaded_in_a_child_first(
    built_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache of an earlier version (no record): loaded once in a child process, then recorded and used."""
    root, build_dir, library = _package_with_cache(tmp_path, NO_COMPILER, monkeypatch)
    shutil.copyfile(built_library, library)
    result = _run(root, tmp_path / "cache", "-c", OPS_CODE, cxx=NO_COMPILER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True", "None"], result.stdout + result.stderr
    assert native.record_path(library).is_file()
    assert native.library_problem(library, record_required=True) is None
    assert [path.name for path in build_dir.iterdir() if path.name.endswith(".tmp")] == []


def test_cached_library_without_a_record_that_does_not_load_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No record and an intact ELF layout, but it does not load (here: an executable): built again."""
    root, _, library = _package_with_cache(tmp_path, NO_COMPILER, monkeypatch)
    shutil.copyfile(os.path.realpath(sys.executable), library)
    assert native.library_problem(library) is None
    result = _run(root, tmp_path / "cache", "-c", OPS_CODE, cxx=NO_COMPILER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "False" and "needs a C++ compiler" in result.stdout
    assert "has no record of its size and digest and does not load in a separate process" in result.stderr
    assert not library.exists()


def test_library_problem(built_library: Path, tmp_path: Path) -> None:
    library = tmp_path / "lib.so"
    shutil.copyfile(built_library, library)
    assert native.library_problem(library) is None  # no record: the ELF layout only
    assert "no record" in native.library_problem(library, record_required=True)
    native.write_record(library)
    assert native.library_problem(library, record_required=True) is None
    assert oct(native.record_path(library).stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # same size, one byte changed at the end (in no loaded segment): the digest says so
    data = bytearray(library.read_bytes())
    data[-1] ^= 0xFF
    library.write_bytes(bytes(data))
    os.utime(library, ns=(1, 1))  # another mtime: checked again
    assert "sha256" in native.library_problem(library)
    library.write_bytes(bytes(data[: len(data) // 2]))
    assert "recorded when it was built" in native.library_problem(library)
    native.record_path(library).unlink()
    _truncated_copy(built_library, library, "into its code")
    assert "is truncated" in native.library_problem(library)
    library.write_bytes(b"")
    assert native.library_problem(library) == "is empty"
    library.write_bytes(b"\x7fELF\x02\x01")
    assert "is truncated" in native.library_problem(library)
    assert "cannot be read" in native.library_problem(tmp_path / "missing.so")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_read_only_cache_of_an_earlier_version_still_loads(
    built_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No record and no way to write one (a read-only cache): the child load decides, as before."""
    build_dir = _cache_dir(native.source_dir(), tmp_path / "cache", None, monkeypatch)
    library = build_dir / f"{native.LIBRARY_NAME}.so"
    shutil.copyfile(built_library, library)

    def read_only(*_args: object) -> None:
        raise OSError(30, "Read-only file system")

    loaded = []
    monkeypatch.setattr(native, "_locked", read_only)
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    monkeypatch.setenv("JANUS_FAST_CACHE_DIR", str(tmp_path / "cache"))
    if native.build_key(torch, native.source_dir(), with_cuda=False) != build_dir.name:
        pytest.skip("the sources of this checkout are not those of its package")
    assert native.build_and_load() == library and loaded == [str(library)]
    # a damaged one is not loaded: the error says why and where to build it instead
    _truncated_copy(built_library, library, "into its code")
    with pytest.raises(ImportError, match=r"is truncated .* and cannot build it in .*JANUS_FAST_CACHE_DIR"):
        native.build_and_load()
    assert loaded == [str(library)]


@pytest.mark.slow
def test_truncated_cached_library_is_rebuilt_and_used(
    built_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real rebuild (a minute or two): the library, its record, then `python -m janus_fast.native`."""
    root, _, library = _package_with_cache(tmp_path, None, monkeypatch)
    _truncated_copy(built_library, library, "into its code")
    result = _run(root, tmp_path / "cache", "-c", OPS_CODE)
    _ends_normally(result)
    assert result.returncode == 0 and result.stdout.splitlines() == ["True", "None"], result.stdout + result.stderr
    assert "building it again" in result.stderr and "janus_fast._C built in" in result.stderr
    assert native.library_problem(library, record_required=True) is None
    result = _run(root, tmp_path / "cache", "-m", "janus_fast.native")
    assert result.returncode == 0 and f"{library} (built on first use)" in result.stdout, result.stderr
    assert "compiling" not in result.stderr
