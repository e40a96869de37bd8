"""The one output writer (``atomic_write``): symlinks, pipes and devices, permission bits, and outputs
that are inputs refused by translate, evaluate and distill."""

from __future__ import annotations

import gzip
import os
import re
import stat
import threading
from collections.abc import Iterator

import pytest
from test_cli import run_cli

from janus_fast.checkpoint import atomic_write
from janus_fast.data import InputError

AS_ROOT = os.geteuid() == 0


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask that a test sets."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


def leftovers(*directories) -> list[str]:  # noqa: ANN002
    return [name for directory in directories for name in os.listdir(directory) if name.startswith(".tmp-")]


def test_write_through_a_symlink_updates_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "real" / "out.txt"
    target.write_bytes(b"old\n")
    link = tmp_path / "links" / "out.txt"
    link.symlink_to(os.path.join("..", "real", "out.txt"))  # relative, into another directory
    atomic_write(str(link), b"new\n")
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "real", "out.txt")
    assert target.read_bytes() == b"new\n" and link.read_bytes() == b"new\n"
    assert leftovers(tmp_path / "real", tmp_path / "links") == []


def test_write_through_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "out.txt"
    link.symlink_to(tmp_path / "later.txt")
    atomic_write(str(link), b"made\n")
    assert link.is_symlink() and (tmp_path / "later.txt").read_bytes() == b"made\n"


def test_write_into_a_fifo_reaches_its_reader(tmp_path):
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    data = b"x" * 200_000 + b"\n"  # more than a pipe's buffer: the reader must drain it as it comes
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened before the write, as `cat pipe &` would be
    holder = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # no EOF for the reader until the test is done
    os.set_blocking(reader, True)
    received: list[bytes] = []

    def read_all() -> None:
        with os.fdopen(reader, "rb") as handle:
            received.append(handle.read())

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    try:
        atomic_write(fifo, data)
    finally:
        os.close(holder)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the pipe was replaced by a file"
    assert received == [data]


def test_write_to_a_descriptor_path_writes_the_descriptor(tmp_path):
    """/dev/stdout is a link to /proc/self/fd/1: /proc/self/fd/N of a pipe is written, not replaced."""
    read_end, write_end = os.pipe()
    try:
        atomic_write(f"/proc/self/fd/{write_end}", b"through the descriptor\n")
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as handle:
            read_end = -1
            assert handle.read() == b"through the descriptor\n"
    finally:
        for end in (read_end, write_end):
            if end >= 0:
                os.close(end)


def test_a_file_behind_a_descriptor_path_is_appended_to_not_replaced(tmp_path):
    """``-o /dev/stdout >> log``: /dev/fd/N of a file opened for appending keeps the file and what it held."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"kept\n")
    inode = os.stat(log).st_ino
    handle = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        atomic_write(f"/dev/fd/{handle}", b"added\n")
    finally:
        os.close(handle)
    assert log.read_bytes() == b"kept\nadded\n" and os.stat(log).st_ino == inode
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not AS_ROOT, reason="replacing a device node needs root; as another user it is refused anyway")
def test_write_to_dev_null_keeps_the_device(tmp_path):
    # first a private copy of /dev/null (the same device numbers): a writer that replaces it spoils
    # only this copy, and the real /dev/null is written only once that copy survived
    null = os.stat("/dev/null")
    copy = str(tmp_path / "null")
    try:
        os.mknod(copy, stat.S_IFCHR | 0o666, null.st_rdev)
    except PermissionError:
        pytest.skip("mknod is not allowed here")
    atomic_write(copy, b"discarded\n")
    assert stat.S_ISCHR(os.stat(copy).st_mode) and os.stat(copy).st_rdev == null.st_rdev
    atomic_write("/dev/null", b"discarded\n")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == null.st_rdev and after.st_ino == null.st_ino


@pytest.mark.parametrize("mode", [0o644, 0o664], ids=oct)
def test_an_existing_file_keeps_its_permission_bits(tmp_path, umask, mode):
    path = tmp_path / "out.txt"
    path.write_bytes(b"old\n")
    os.chmod(path, mode)
    os.umask(0o077)
    atomic_write(str(path), b"new\n")
    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


@pytest.mark.skipif(not AS_ROOT, reason="only root may give a file to another user")
def test_an_existing_file_keeps_its_owner(tmp_path):
    path = tmp_path / "out.txt"
    path.write_bytes(b"old\n")
    os.chown(path, 12345, 12346)
    os.chmod(path, 0o640)
    atomic_write(str(path), b"new\n")
    info = os.stat(path)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (12345, 12346, 0o640)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)], ids=oct)
def test_a_new_file_follows_the_umask(tmp_path, umask, mask, expected):
    os.umask(mask)
    path = tmp_path / "new" / "out.txt"  # its directory is created too
    atomic_write(str(path), b"new\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == expected


def test_check_output_not_input(tmp_path):
    from janus_fast.output import check_output_not_input

    source = tmp_path / "a.txt"
    source.write_text("a\n")
    (tmp_path / "link.txt").symlink_to(source)
    os.link(source, tmp_path / "hard.txt")
    for output in (source, tmp_path / "link.txt", tmp_path / "hard.txt", os.path.join(tmp_path, ".", "a.txt")):
        with pytest.raises(InputError, match=re.escape(f"--out {output} is the input file {source}:")):
            check_output_not_input(str(output), ["-", str(source)], "--out")
    check_output_not_input(str(tmp_path / "b.txt"), [str(source), None, "-"], "--out")
    check_output_not_input("-", ["-"], "--out")  # standard input and output
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    check_output_not_input(fifo, [fifo], "--out")  # read and written, nothing is overwritten


class Upper:
    """A stand-in translator: upper-cases each line."""

    def translate(self, lines: list[str], progress=None, **options) -> list[str]:  # noqa: ANN001, ANN003
        return [line.upper() for line in lines]


@pytest.fixture
def fake_cli(monkeypatch):  # noqa: ANN201
    import warnings

    from janus_fast import cli

    monkeypatch.setattr(cli, "_translator", lambda args: Upper())
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # cli.main replaces it
    return cli


def one_error_line(capsys) -> str:  # noqa: ANN001
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("janus-fast: error: "), err
    return err


@pytest.mark.parametrize("through_link", [False, True])
def test_translate_refuses_to_overwrite_its_input(fake_cli, tmp_path, capsys, through_link):
    source = tmp_path / "a.txt"
    source.write_text("ein hund\n", encoding="utf-8")
    output = source
    if through_link:
        output = tmp_path / "link-to-a.txt"
        output.symlink_to("a.txt")
    assert fake_cli.main(["translate", "--model", "unused", "-i", str(source), "-o", str(output)]) == 2
    err = one_error_line(capsys)
    assert f"--output {output} is the input file {source}" in err
    assert source.read_text(encoding="utf-8") == "ein hund\n"
    # a distinct output, through a link, is written (the link kept), and '-' is still stdout
    out_link = tmp_path / "out-link.txt"
    out_link.symlink_to("out.txt")
    assert fake_cli.main(["translate", "--model", "unused", "-i", str(output), "-o", str(out_link)]) == 0
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "EIN HUND\n"
    assert out_link.is_symlink()
    assert fake_cli.main(["translate", "--model", "unused", "-i", str(output), "-o", "-"]) == 0
    assert capsys.readouterr().out == "EIN HUND\n"


def test_evaluate_refuses_to_overwrite_its_reference(fake_cli, tmp_path, capsys):
    source, reference = tmp_path / "src.de", tmp_path / "ref.en"
    source.write_text("ein hund\n", encoding="utf-8")
    reference.write_text("a dog\n", encoding="utf-8")
    for output, named in ((reference, reference), (source, source)):
        arguments = ["--src", str(source), "--ref", str(reference), "--output", str(output), "--json"]
        assert fake_cli.main(["evaluate", "--model", "unused", *arguments]) == 2
        assert f"--output {output} is the input file {named}" in one_error_line(capsys)
    assert reference.read_text(encoding="utf-8") == "a dog\n" and source.read_text(encoding="utf-8") == "ein hund\n"


def test_translate_cli_names_the_option_and_the_file(tmp_path):
    """The real command line: one error line, before any model is loaded; the file unchanged."""
    source = tmp_path / "a.txt"
    source.write_text("ein hund\n", encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(source)
    result = run_cli("translate", "--model", str(tmp_path / "no-model"), "-i", str(source), "-o", str(link))
    assert result.returncode == 2
    assert result.stderr.decode() == (
        f"janus-fast: error: --output {link} is the input file {source}: it would be overwritten; write elsewhere\n"
    )
    assert source.read_text(encoding="utf-8") == "ein hund\n"


def test_distill_writes_gz_through_a_symlink_and_refuses_its_source(tmp_path):
    from janus_fast.training.distill import PARTS_SUFFIX, distill

    source = tmp_path / "src.de.gz"
    with gzip.open(source, "wt", encoding="utf-8") as handle:
        handle.write("ein hund\nzwei katzen\n\ndrei\n")
    before = source.read_bytes()
    with pytest.raises(InputError, match="is the input file"):
        distill(Upper(), str(source), str(source), chunk_size=2)
    (tmp_path / "same.gz").symlink_to(source)
    with pytest.raises(InputError, match="is the input file"):
        distill(Upper(), str(source), str(tmp_path / "same.gz"), chunk_size=2)
    assert source.read_bytes() == before
    (tmp_path / "store").mkdir()
    link = tmp_path / "out.en.gz"
    link.symlink_to(tmp_path / "store" / "out.en.gz")
    assert distill(Upper(), str(source), str(link), chunk_size=3) == 4
    assert link.is_symlink()
    with gzip.open(tmp_path / "store" / "out.en.gz", "rt", encoding="utf-8") as handle:
        assert handle.read() == "EIN HUND\nZWEI KATZEN\n\nDREI\n"
    assert not os.path.exists(str(link) + PARTS_SUFFIX)


WRITE_UNDER_A_SIZE_LIMIT = """
import resource, sys
from janus_fast.output import atomic_write, create_exclusively
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # write(2) fails with EFBIG, naming no file
for write in (atomic_write, create_exclusively):
    try:
        write(sys.argv[1] + "." + write.__name__, bytes(5000))
    except OSError as error:
        print(write.__name__, error.errno, error.filename)
"""


def test_write_errors_name_the_file_they_were_writing(tmp_path):
    """A full disk or a file size limit: the OSError names the file (the CLI's one-line error then
    says which: "janus-fast: error: OUT/spm.model: File too large"), and nothing is left behind."""
    import errno
    import subprocess
    import sys

    target = str(tmp_path / "out")
    result = subprocess.run([sys.executable, "-c", WRITE_UNDER_A_SIZE_LIMIT, target], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"atomic_write {errno.EFBIG} {target}.atomic_write",
        f"create_exclusively {errno.EFBIG} {target}.create_exclusively",
    ]
    assert os.listdir(tmp_path) == []
