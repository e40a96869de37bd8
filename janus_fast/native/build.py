"""Build and load the native op library ``janus_fast._C`` against the torch that is installed.

There are two ways the library gets built, from the same sources, flags and source globs (below):

* at install time, when ``setup.py`` can import torch (``pip install --no-build-isolation``, as
  ``scripts/setup_env.sh`` does): the compiled module ``janus_fast/_C.<abi>.so`` is installed and
  ``import janus_fast._C`` loads it;
* on first use otherwise. A plain ``pip install .`` builds in pip's isolated environment, which has
  no torch, so it installs the C++ sources with the package (``janus_fast/_csrc``) and no compiled
  module; ``import janus_fast._C`` then runs ``janus_fast/_C.py``, which calls
  :func:`build_and_load`: the sources are compiled once with ninja against the installed torch into
  a per-user cache directory keyed by the torch version and a hash of the sources and flags
  (``$JANUS_FAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/janus_fast``, else ``~/.cache/janus_fast``),
  under a file lock so that concurrent processes build it once, and the library is loaded, which
  registers ``torch.ops.janus_fast.*``. Later processes load the cached library (no compiler needed).

When the build cannot be done (no C++ compiler, no ninja, a compile error) the import raises an
``ImportError`` that says what to run; ``janus_fast.ops`` then uses the PyTorch reference ops and
warns with that message. A failed compile is remembered (the log stays in the cache directory) so
that later imports do not repeat it; ``python -m janus_fast.native`` retries it.

A library is checked before it is loaded: a truncated one would kill the process with SIGBUS, with
no message. The first-use build records the size and sha256 of the library it built next to it
(``janus_fast_C.so.record``, written atomically); a cached library whose size or digest differs
from its record, or whose ELF layout does not fit in the file, is built again. A cached library
with no record (built by an earlier version) is loaded once in a child process; if that works its
record is written, else it is built again. The module compiled at install time has no record: its
ELF layout is checked (a record next to it, ``<module>.record``, is checked too where there is
one); when it fails, ``janus_fast.ops`` does not load it, says so in one line and uses the PyTorch
reference ops, as when there is no extension.

``python -m janus_fast.native`` builds the library now if needed and says which one is used.

This module imports only the standard library at import time: ``setup.py`` loads it by path, before
torch may be importable, for the source list and the flags.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import secrets
import shutil
import struct
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The sources of janus_fast._C, relative to csrc/. Globbed: every .cpp file in csrc/ and csrc/cpu/
# is part of the library, and the CUDA files in csrc/cuda/ when CUDA is built.
CPU_SOURCE_GLOBS = ("*.cpp", "cpu/*.cpp")
CUDA_SOURCE_GLOBS = ("cuda/*.cu",)
CXX_FLAGS = ("-O3", "-std=c++20", "-fopenmp")
NVCC_FLAGS = ("-O3", "-std=c++20", "--use_fast_math")
LINK_FLAGS = ("-fopenmp",)
CUDA_MACRO = "WITH_CUDA"
# The files installed with the package for the first-use build (package_data of janus_fast._csrc,
# relative to csrc/; csrc/tests/ is left out) and hashed into the cache key.
PACKAGED_SOURCE_PATTERNS = ("*.cpp", "*.h", "*.hpp", "*.cuh", "*/*.cpp", "*/*.h", "*/*.hpp", "*/*.cu", "*/*.cuh")
EXCLUDED_SOURCE_DIRS = ("tests",)

LIBRARY_NAME = "janus_fast_C"
_CACHE_FORMAT = "1"  # bump when the layout of the cache directory changes


RECORD_SUFFIX = ".record"  # <library>.record: the size and sha256 of the library, written when it is built
CHILD_LOAD_TIMEOUT_S = 300


class NativeBuildError(ImportError):
    """The native library could not be built or loaded; the message says what to run."""


class DamagedLibraryError(NativeBuildError):
    """The compiled module installed with the package fails its check (e.g. truncated): not loaded."""


_TRUE_VALUES = ("1", "true", "yes", "on")
_FALSE_VALUES = ("0", "false", "no", "off")


def env_flag(name: str, default: bool = False) -> bool:
    """The boolean environment variable ``name``: 1/true/yes/on or 0/false/no/off (any case);
    ``default`` when it is unset or empty. Any other value raises ValueError naming the variable and
    the values it takes, as an option's would (every switch of the package reads it this way: the
    build's ``FORCE_CUDA`` / ``FORCE_ONLY_CPU`` / ``JANUS_FAST_NO_EXTENSION`` and
    ``JANUS_FAST_FORCE_REFERENCE``)."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE_VALUES:
        return True
    if value in _FALSE_VALUES:
        return False
    raise ValueError(
        f"{name}={os.environ[name]!r}: expected one of {', '.join(_TRUE_VALUES + _FALSE_VALUES)} (any case)"
    )


def _glob(csrc: str | os.PathLike, patterns: tuple[str, ...]) -> list[str]:
    return sorted(path for pattern in patterns for path in glob.glob(os.path.join(os.fspath(csrc), pattern)))


def cuda_sources(csrc: str | os.PathLike) -> list[str]:
    """The CUDA source files under ``csrc`` (paths joined onto ``csrc`` as given)."""
    return _glob(csrc, CUDA_SOURCE_GLOBS)


def extension_sources(csrc: str | os.PathLike, with_cuda: bool) -> list[str]:
    """The source files of the library under ``csrc`` (paths joined onto ``csrc`` as given): the C++
    ones, then the CUDA ones when ``with_cuda``."""
    return _glob(csrc, CPU_SOURCE_GLOBS) + (cuda_sources(csrc) if with_cuda else [])


def want_cuda(torch, has_cuda_sources: bool) -> bool:  # noqa: ANN001  (torch is passed in: no import here)
    """Whether to compile the CUDA sources: ``FORCE_ONLY_CPU=1`` never, ``FORCE_CUDA=1`` always (with
    a CUDA build of torch), else when a GPU is visible and a CUDA toolkit is found. Both switches
    are read first: a value ``env_flag`` does not take is a ValueError whatever the other says."""
    only_cpu, force_cuda = env_flag("FORCE_ONLY_CPU"), env_flag("FORCE_CUDA")
    if only_cpu or not has_cuda_sources or torch.version.cuda is None:
        return False
    if force_cuda:
        return True
    if not torch.cuda.is_available():
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


def source_dir() -> Path | None:
    """The C++ sources: installed with the package, else those of the source checkout."""
    package = Path(__file__).resolve().parent.parent  # janus_fast/
    for candidate in (package / "_csrc", package.parent / "csrc"):
        if (candidate / "mask_predict.cpp").is_file():
            return candidate
    return None


def cache_root() -> Path:
    if os.environ.get("JANUS_FAST_CACHE_DIR"):
        return Path(os.environ["JANUS_FAST_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "janus_fast"


def _source_files(csrc: Path) -> list[Path]:
    files = {path for pattern in PACKAGED_SOURCE_PATTERNS for path in csrc.glob(pattern) if path.is_file()}
    return sorted(path for path in files if path.relative_to(csrc).parts[0] not in EXCLUDED_SOURCE_DIRS)


def _cuda_architectures(torch) -> str:  # noqa: ANN001
    """What decides the GPU code compiled: TORCH_CUDA_ARCH_LIST, else the visible GPUs."""
    capabilities = sorted(
        {torch.cuda.get_device_capability(index) for index in range(torch.cuda.device_count())}
        if torch.cuda.is_available()
        else set()
    )
    return f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '')}|{capabilities}"


def build_key(torch, csrc: Path, with_cuda: bool) -> str:  # noqa: ANN001
    """Name of the cache directory: torch version, Python, device kind and a hash of everything that
    goes into the build (sources and headers, flags, torch and compiler identity)."""
    digest = hashlib.sha256()
    for part in (
        _CACHE_FORMAT,
        torch.__version__,
        str(getattr(torch.version, "git_version", "")),
        str(torch.version.cuda),
        sys.implementation.cache_tag,
        platform.machine(),
        str(with_cuda),
        os.environ.get("CXX", "c++"),
        " ".join(CXX_FLAGS + NVCC_FLAGS + LINK_FLAGS),
        _cuda_architectures(torch) if with_cuda else "",
    ):
        digest.update(part.encode() + b"\0")
    for path in _source_files(csrc):
        digest.update(path.relative_to(csrc).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    device = f"cuda{torch.version.cuda}" if with_cuda else "cpu"
    return f"torch{torch.__version__}-{sys.implementation.cache_tag}-{device}-{digest.hexdigest()[:16]}"


def _say(message: str) -> None:
    print(f"janus_fast: {message}", file=sys.stderr, flush=True)


def _retry_command() -> str:
    return f"{sys.executable} -m janus_fast.native"


@contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch runs ``ninja`` from PATH; the ninja installed with the package (pip's ``ninja``) is not
    on PATH when the environment is not activated, so add its directory for the build."""
    old_path = os.environ.get("PATH", "")
    directories = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    try:
        import ninja

        directories.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    os.environ["PATH"] = os.pathsep.join([*directories, old_path])
    try:
        yield
    finally:
        os.environ["PATH"] = old_path


def _check_toolchain(with_cuda: bool) -> None:
    """Missing tools: a clear error now rather than a compiler traceback (not remembered as a failure)."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise NativeBuildError(
            f"janus_fast._C is built on first use, and that needs a C++ compiler: {compiler!r} is not on PATH. "
            "Install one (Debian/Ubuntu: `sudo apt-get install g++`; conda: `conda install -c conda-forge gxx`), "
            f"then run `{_retry_command()}` (or just use janus_fast again)."
        )
    if shutil.which("ninja") is None:
        raise NativeBuildError(
            f"janus_fast._C is built on first use, and that needs ninja: run `{sys.executable} -m pip install ninja`, "
            f"then `{_retry_command()}`."
        )
    if with_cuda:
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME is None or shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is None:
            raise NativeBuildError(
                "janus_fast._C: building the CUDA op needs nvcc (set CUDA_HOME to a CUDA toolkit), or set "
                f"FORCE_ONLY_CPU=1 for the CPU op only; then run `{_retry_command()}`."
            )


@contextmanager
def _locked(lock_path: Path, what: str) -> Iterator[None]:
    """An exclusive lock across processes (flock through filelock: released if the holder dies)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(f"waiting for another process that is {what} (lock {lock_path})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _compile(torch, csrc: Path, build_dir: Path, with_cuda: bool) -> None:  # noqa: ANN001
    from torch.utils import cpp_extension

    # torch's own lock file in the build directory, left behind by a killed build, would make torch
    # wait forever; our lock is held, so no other build of this directory runs.
    (build_dir / "lock").unlink(missing_ok=True)
    cpp_extension.load(
        name=LIBRARY_NAME,
        sources=extension_sources(csrc, with_cuda),
        extra_cflags=[*CXX_FLAGS, "-DNDEBUG"] + ([f"-D{CUDA_MACRO}"] if with_cuda else []),
        extra_cuda_cflags=[*NVCC_FLAGS, "-DNDEBUG", f"-D{CUDA_MACRO}"] if with_cuda else None,
        extra_ldflags=list(LINK_FLAGS),
        extra_include_paths=[str(csrc)],
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=False,  # loads the library with torch.ops.load_library
        verbose=False,
    )


def record_path(library: Path) -> Path:
    """Where the size and digest of ``library`` are recorded: ``<library>.record`` next to it."""
    return library.with_name(library.name + RECORD_SUFFIX)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_record(library: Path) -> None:
    """Record the size and sha256 of ``library`` in ``<library>.record``, atomically (a temporary file
    in the same directory, renamed over it). Raises OSError where the directory is not writable."""
    library = Path(library)
    text = json.dumps({"size": library.stat().st_size, "sha256": _sha256(library)}) + "\n"
    temporary = library.with_name(f".{library.name}{RECORD_SUFFIX}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to the library
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, record_path(library))
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _read_record(library: Path) -> dict | None:
    """The recorded size and digest of ``library``; None where there is no record (or an unreadable one)."""
    try:
        record = json.loads(record_path(library).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and isinstance(record.get("size"), int) and isinstance(record.get("sha256"), str):
        return record
    return None


def _elf_layout_problem(path: Path, size: int) -> str | None:
    """Why the ELF headers of ``path`` (``size`` bytes) show it damaged, or None: the program headers, every
    segment the loader maps (PT_LOAD) and the section headers must lie inside the file. A segment past
    the end of the file is what crashes the loading process with SIGBUS. Not ELF: a problem on Linux,
    else unknown (None)."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF":
            if not sys.platform.startswith("linux"):
                return None
            return "is empty" if size == 0 else "is not an ELF shared library"
        is_64 = header[4:5] == b"\x02"
        order = "<" if header[5:6] == b"\x01" else ">"
        if len(header) < (64 if is_64 else 52):
            return f"is truncated ({size:,} bytes: not even its ELF header)"
        if is_64:
            phoff, shoff = struct.unpack_from(order + "QQ", header, 32)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 54)
            entry_format, offset_field, filesz_field, entry_size = order + "IIQQQQQQ", 2, 5, 56
        else:
            phoff, shoff = struct.unpack_from(order + "II", header, 28)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 42)
            entry_format, offset_field, filesz_field, entry_size = order + "IIIIIIII", 1, 4, 32
        if phentsize < entry_size:
            return "has a damaged ELF header"
        needed = max(phoff + phnum * phentsize, shoff + shnum * shentsize if shoff else 0)
        if needed <= size:
            handle.seek(phoff)
            table = handle.read(phnum * phentsize)
            for index in range(phnum):
                fields = struct.unpack_from(entry_format, table, index * phentsize)
                if fields[0] == 1:  # PT_LOAD
                    needed = max(needed, fields[offset_field] + fields[filesz_field])
    if needed > size:
        return f"is truncated ({size:,} bytes; its ELF headers describe {needed:,})"
    return None


_NOT_BUILT = "is not built"
_NO_RECORD = "has no record of its size and digest"
_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime) whose digest matched its record


def library_problem(library: Path, record_required: bool = False) -> str | None:
    """Why the native library file ``library`` must not be loaded, or None. Cheapest first: its size
    against its record (``<library>.record``), its ELF layout (:func:`_elf_layout_problem`), its
    sha256 against the record (once per process and file). Without a record only the layout is
    checked, and ``record_required`` makes the missing record the problem."""
    library = Path(library)
    try:
        stat = library.stat()
        record = _read_record(library)
        if record is not None and record["size"] != stat.st_size:
            return f"has {stat.st_size:,} bytes, not the {record['size']:,} recorded when it was built (truncated?)"
        problem = _elf_layout_problem(library, stat.st_size)
        if problem is not None or record is None:
            return problem if problem is not None or not record_required else _NO_RECORD
        key = (str(library.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _verified:
            if _sha256(library) != record["sha256"]:
                return "does not have the sha256 recorded when it was built (damaged or replaced)"
            _verified.add(key)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None


def _loads_in_child(library: Path) -> bool:
    """Whether ``library`` loads in a separate Python process: if it is damaged, that one dies, not this one."""
    code = "import sys, torch; torch.ops.load_library(sys.argv[1])"
    try:
        result = subprocess.run(
            [sys.executable, "-c", code, str(library)],
            capture_output=True,
            timeout=CHILD_LOAD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _cache_problem(build_dir: Path, library: Path) -> str | None:
    """Why the cached library cannot be loaded as it is (not built yet, or :func:`library_problem`)."""
    if not (build_dir / "built").is_file():
        return _NOT_BUILT
    return library_problem(library, record_required=True)


def build_and_load(retry_failed: bool = False) -> Path:
    """Build the library if the cache has none for this torch and these sources, then load it.

    The cached library is checked before it is loaded (:func:`library_problem`): one that fails is
    built again; one without a record (an earlier version's cache) is loaded in a child process
    first and recorded when that works, else built again.

    Returns the path of the loaded library. Raises :class:`NativeBuildError` (an ``ImportError``)
    with what to run when it cannot be built; a remembered compile failure is raised again without
    compiling unless ``retry_failed``.
    """
    try:
        switched_off = env_flag("JANUS_FAST_NO_EXTENSION")
    except ValueError as error:  # the callers fall back on an ImportError, which now says why
        raise NativeBuildError(f"janus_fast._C is not built: {error}") from None
    if switched_off:
        raise NativeBuildError(
            "janus_fast._C is not built: JANUS_FAST_NO_EXTENSION=1 turns off its first-use build "
            f"(unset it and run `{_retry_command()}` to build it)"
        )
    import torch

    csrc = source_dir()
    if csrc is None:
        raise NativeBuildError(
            f"janus_fast._C: its C++ sources are not installed next to {Path(__file__).resolve().parent.parent}; "
            "reinstall the package from its source checkout: `pip install --force-reinstall --no-deps <checkout>`"
        )
    try:
        with_cuda = want_cuda(torch, bool(cuda_sources(csrc)))
    except ValueError as error:
        raise NativeBuildError(f"janus_fast._C is not built: {error}") from None
    build_dir = cache_root() / build_key(torch, csrc, with_cuda)
    library = build_dir / f"{LIBRARY_NAME}.so"
    try:
        problem = _cache_problem(build_dir, library)
    except OSError as error:  # a path too long, a folder that cannot be searched: no cache there
        raise NativeBuildError(
            f"janus_fast._C: cannot use the cache {build_dir} ({error.strerror or error}); set JANUS_FAST_CACHE_DIR "
            f"to a writable directory and run `{_retry_command()}`"
        ) from error
    loads = problem == _NO_RECORD and _loads_in_child(library)
    if problem is not None:
        try:
            build_dir.mkdir(parents=True, exist_ok=True)
            with _locked(build_dir.with_name(build_dir.name + ".lock"), "building janus_fast._C"):
                problem = _cache_problem(build_dir, library)  # another process may have built it meanwhile
                if problem == _NO_RECORD and loads:
                    write_record(library)
                elif problem is not None:
                    _rebuild(torch, csrc, build_dir, with_cuda, retry_failed, problem)
        except OSError as error:
            # a read-only cache of an earlier version: its library loaded in a child process, use it
            if not (loads and _cache_problem(build_dir, library) == _NO_RECORD):
                damaged = f"the cached library {library} {_failed(problem)}, and " if problem != _NOT_BUILT else ""
                raise NativeBuildError(
                    f"janus_fast._C: {damaged}cannot build it in {build_dir} ({error}); set JANUS_FAST_CACHE_DIR "
                    f"to a writable directory and run `{_retry_command()}`"
                ) from error
    if os.path.realpath(library) not in torch.ops.loaded_libraries:
        try:
            torch.ops.load_library(str(library))
        except OSError as error:
            raise NativeBuildError(
                f"janus_fast._C: the cached library {library} does not load ({error}); delete {build_dir} "
                f"and run `{_retry_command()}`"
            ) from error
    return library


def _failed(problem: str) -> str:
    """What is wrong with a cached library that is built again (a missing record: its child load failed)."""
    return problem + " and does not load in a separate process" if problem == _NO_RECORD else problem


def _rebuild(torch, csrc: Path, build_dir: Path, with_cuda: bool, retry_failed: bool, problem: str) -> None:  # noqa: ANN001
    """Build the library, after deleting the build directory's contents when a built library failed its
    check (its objects may be damaged too). Called with the build lock held."""
    if problem != _NOT_BUILT:
        _say(f"the cached library {build_dir / (LIBRARY_NAME + '.so')} {_failed(problem)}: building it again")
        shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
    _build(torch, csrc, build_dir, with_cuda, retry_failed)


def _build(torch, csrc: Path, build_dir: Path, with_cuda: bool, retry_failed: bool) -> None:  # noqa: ANN001
    failed_log = build_dir / "build-failed.log"
    if failed_log.is_file() and not retry_failed:
        raise NativeBuildError(
            f"janus_fast._C: its first-use build failed earlier (log: {failed_log}); after fixing the cause, "
            f"run `{_retry_command()}` to build it again"
        )
    with _ninja_on_path():
        _check_toolchain(with_cuda)
        kind = "CPU + CUDA" if with_cuda else "CPU"
        _say(
            f"compiling the native op janus_fast._C ({kind}) against torch {torch.__version__}: once, "
            f"1-5 minutes on 2 cores; cached in {build_dir}"
        )
        started = time.perf_counter()
        try:
            _compile(torch, csrc, build_dir, with_cuda)
        except Exception as error:  # a compile or link error: remember it, say where the log is
            failed_log.write_text(f"{type(error).__name__}: {error}\n")
            tail = "\n".join(str(error).strip().splitlines()[-15:])
            raise NativeBuildError(
                f"janus_fast._C: compiling the native op failed (log: {failed_log}):\n{tail}\n"
                f"After fixing the cause, run `{_retry_command()}` to build it again."
            ) from error
    seconds = time.perf_counter() - started
    failed_log.unlink(missing_ok=True)
    write_record(build_dir / f"{LIBRARY_NAME}.so")  # before the "built" marker: a built library has a record
    (build_dir / "built").write_text(f"torch {torch.__version__}, {kind}, built in {seconds:.1f} s\n")
    _say(f"janus_fast._C built in {seconds:.0f} s")
