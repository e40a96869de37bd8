"""The one writer of every file the project writes, and the checks of an output path before the work.

A regular file (or a new one) is replaced atomically: the data goes to a temporary file in the
directory of the real file (symlinks followed), which is then renamed onto it, so a symlink keeps
pointing at the updated file and a crash never leaves a half-written file under the final name. An
existing file keeps its permission bits (and, where allowed, its owner); a new one gets
``0666 & ~umask``, as ``open`` would give it. Anything else (a named pipe, ``/dev/null``, a
terminal, ``/dev/stdout``) is opened and written in place, never replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from janus_fast.data import InputError

_DESCRIPTOR_DIRECTORY = re.compile(r"/proc/(self|thread-self|\d+)(/task/\d+)?/fd")


def _is_descriptor_link(path: str) -> bool:
    """Whether following ``path``'s symlinks goes through an open descriptor of the process
    (``/proc/<pid>/fd/N``: what ``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N`` are)."""
    current = os.path.abspath(path)
    for _ in range(40):  # as many links as the kernel follows
        directory = os.path.realpath(os.path.dirname(current))
        if _DESCRIPTOR_DIRECTORY.fullmatch(directory):
            return True
        try:
            target = os.readlink(current)
        except OSError:  # not a link (or not there): the end of the chain
            return False
        current = os.path.join(directory, target)
    return False


def _destination(path: str) -> tuple[bool, str, os.stat_result | None]:
    """How ``atomic_write`` writes ``path``: (replace, target, stat of the existing file or None).

    ``replace`` is True for a regular file or a path that does not exist yet: ``target`` is then
    the real path (symlinks followed). It is False for anything else, and for a regular file reached
    through a descriptor (``/dev/stdout`` redirected to a file): ``target`` is then ``path`` itself,
    written in place.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return True, os.path.realpath(path), None
    if not stat.S_ISREG(info.st_mode) or _is_descriptor_link(path):
        return False, path, info
    real = os.path.realpath(path)
    try:
        same = os.path.samestat(info, os.stat(real))
    except OSError:
        same = False
    return (True, real, info) if same else (False, path, info)


def _write_in_place(path: str, info: os.stat_result) -> int:
    """A descriptor open for writing on the existing non-replaceable ``path`` (a pipe, a device,
    a file reached through a descriptor link: appended to, as writing to that descriptor would)."""
    flags = os.O_WRONLY | (os.O_APPEND if stat.S_ISREG(info.st_mode) else 0)
    return os.open(path, flags)


def _create_temporary(directory: str, name: str) -> tuple[int, str]:
    """A new empty file ``.tmp-XXXX<name>`` in ``directory``, created with mode 0666 (the umask applies)."""
    while True:
        path = os.path.join(directory, f".tmp-{secrets.token_hex(4)}{name}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def _keep_owner_and_mode(handle: int, info: os.stat_result) -> None:
    """Give the new file the owner (where allowed) and the permission bits of the one it replaces."""
    current = os.fstat(handle)
    if (current.st_uid, current.st_gid) != (info.st_uid, info.st_gid):
        try:
            os.fchown(handle, info.st_uid, info.st_gid)
        except OSError:
            pass  # only root may give a file away: it stays the writer's
    os.fchmod(handle, stat.S_IMODE(info.st_mode))  # after chown, which clears set-id bits


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, piece by piece: a regular or new file is written to
    a temporary file renamed onto the real file when the block ends without an exception (symlinks
    kept, permission bits kept, a new file's from the umask; on an exception it is deleted and
    ``path`` left as it was); anything else (a pipe, a device, ``/dev/stdout``) is opened and
    written in place. An OSError from writing (a full disk, a file size limit) names ``path``."""
    replace, target, info = _destination(path)
    if not replace:
        assert info is not None
        try:
            with os.fdopen(_write_in_place(target, info), "wb") as out:
                yield out
                out.flush()
                if stat.S_ISREG(info.st_mode):
                    os.fsync(out.fileno())
        except OSError as error:
            _name_file(error, path)
            raise
        return
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = _create_temporary(directory, os.path.basename(target))
    try:
        with os.fdopen(handle, "wb") as out:
            if info is not None:
                _keep_owner_and_mode(out.fileno(), info)
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_path, target)
    except BaseException as error:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        if isinstance(error, OSError):
            _name_file(error, path)
        raise


def _name_file(error: OSError, path: str) -> None:
    """Give ``error`` ``path`` as its file name where it names none (write(2) errors do not)."""
    if error.filename is None:
        error.filename = path


def is_replaceable(path: str) -> bool:
    """Whether ``atomic_writer`` replaces ``path`` (a regular file or a new one: a temporary file
    can be made beside it) rather than writing it in place (a pipe, a device, ``/dev/stdout``)."""
    try:
        return _destination(path)[0]
    except OSError:
        return False


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` as a whole (``atomic_writer``)."""
    with atomic_writer(path) as out:
        out.write(data)


def create_exclusively(path: str, data: bytes) -> bool:
    """Create the regular file ``path`` holding ``data`` unless a file of that name exists: False
    then, and nothing written. Whole or not at all (written beside, then hard-linked into place, which
    fails rather than replace), so that of several processes creating the same path at once exactly
    one does and the others read what it wrote. An OSError from writing names ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temp_path = _create_temporary(directory, os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp_path, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: created exclusively, then written
            try:
                with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as out:
                    out.write(data)
            except FileExistsError:
                return False
        return True
    except OSError as error:
        _name_file(error, path)
        raise
    finally:
        os.unlink(temp_path)


def check_output_not_input(
    output: str | None, inputs: Iterable[str | None], option: str, folders: Iterable[str | None] = ()
) -> None:
    """Raise InputError when writing ``output`` would overwrite one of ``inputs``: the same path once
    symlinks are followed (os.path.realpath), or the same existing regular file (a hard link); or a
    file inside one of the input ``folders`` (a model checkpoint the command reads). ``-`` (standard
    input / output) and None are skipped, and so is an output that is a pipe, a terminal or a
    device: writing it overwrites nothing, even when it is also read."""
    if output is None or output == "-":
        return
    for folder in folders:
        if folder is not None and os.path.isdir(folder):
            inside = os.path.realpath(folder)
            if os.path.commonpath([inside, os.path.realpath(output)]) == inside:
                raise InputError(
                    f"{option} {output} is inside {folder}, which this command reads: it could overwrite it; "
                    "write elsewhere"
                )
    try:
        info: os.stat_result | None = os.stat(output)
    except OSError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        return
    real = os.path.realpath(output)
    for path in inputs:
        if path is None or path == "-":
            continue
        same = os.path.realpath(path) == real
        if not same and info is not None:
            try:
                same = os.path.samestat(info, os.stat(path))
            except OSError:
                same = False
        if same:
            raise InputError(f"{option} {output} is the input file {path}: it would be overwritten; write elsewhere")


def check_output(path: str, option: str, inputs: Iterable[str | None] = (), folders: Iterable[str | None] = ()) -> None:
    """Raise InputError before the work unless ``atomic_write`` can write ``path`` and it is none of
    ``inputs`` (``check_output_not_input``): not a directory, a pipe or device open to writing, or
    a file whose real directory (symlinks followed) is, or can be created as, a writable one."""
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a directory")
    check_output_not_input(path, inputs, option, folders)
    try:
        replace, target, _ = _destination(path)
    except OSError as error:  # e.g. a path through a regular file (/proc/version/out.txt)
        raise InputError(f"{option} {path}: cannot write there ({error.strerror})") from error
    if not replace:
        if not os.access(target, os.W_OK):
            raise InputError(f"{option} {path}: not writable")
        return
    parent = os.path.dirname(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: cannot write there ({parent} is not a writable directory)")


__all__ = ["atomic_write", "atomic_writer", "is_replaceable", "check_output", "check_output_not_input"]
