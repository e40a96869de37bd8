"""Argument checks shared by the API and the command line: a clear error before any work."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import field, fields
from typing import Any

from janus_fast.data import InputError
from janus_fast.output import check_output

MAX_THREADS = 1024  # thread counts past this are a mistake on any machine this runs on


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False; TypeError otherwise (1, "no", None, numpy's bool_: a flag
    whose truth would be guessed)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return value


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]: TypeError for non-integers (bool and float included),
    ValueError outside the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_real(name: str, value: object, low: float | None = None) -> float:
    """``value`` as a finite float (>= ``low`` where given): TypeError for what is not a real number
    (bool, str, Decimal), ValueError for NaN, infinities, values past float's range or below ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (int or float), got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and number < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return number


def check_field_types(instance: Any, display: Callable[[str], str] = str) -> None:
    """Raise TypeError for a field of the dataclass ``instance`` declared int, float, bool or str
    whose value is not one (a bool is no number; an int is a float); ``display`` names a field in
    the message (e.g. as its command-line option)."""
    for item in fields(instance):
        value = getattr(instance, item.name)
        declared = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", "")
        if declared == "bool":
            if not isinstance(value, bool):
                raise TypeError(f"{display(item.name)} must be true or false, got {value!r}")
            continue
        expected = {"int": ((int,), "an integer"), "float": ((int, float), "a number"), "str": ((str,), "a string")}
        if declared not in expected:
            continue
        types, what = expected[declared]
        if (isinstance(value, bool) and declared != "str") or not isinstance(value, types):
            raise TypeError(f"{display(item.name)} must be {what}, got {type(value).__name__} {value!r}")


def check_writable_directory(path: str, option: str) -> None:
    """Raise InputError unless ``path`` is, or can be created as, a writable directory."""
    if os.path.exists(path):
        if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{option} {path} is not a writable directory")
        return
    check_output(path, option)  # not there yet: its nearest existing folder must be writable


def check_device(device: object, name: str = "device") -> None:
    """Raise ValueError for a device string torch does not know, a CUDA device without CUDA (or
    past the GPUs there are) or any other device type; ``name``: how the message names the option
    (``device``, or ``--device`` from the command line)."""
    import torch

    said = setting(name, device) if name == "device" else f"{name} {device}"
    try:
        resolved = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{said}: not a device torch knows ({error})") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"{said}: only cpu and cuda are supported")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{said}: CUDA is not available here (use cpu)")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"{said}: this machine has {torch.cuda.device_count()} CUDA device(s)")


__all__ = ["check_bool", "check_int", "check_field_types", "check_writable_directory", "check_device"]


def flag(name: str) -> str:
    """The command-line flag of an option field: ``length_beam`` -> ``--length-beam``."""
    return "--" + name.replace("_", "-")


# How messages name an option: as the API's field (``relaxed_top_k``, ``mode='nar'``) or, where the
# command line runs (``spelled_as_flags``), as the flag typed (``--relaxed-top-k``, ``--mode nar``).
_AS_FLAGS: ContextVar[bool] = ContextVar("janus_fast_options_as_flags", default=False)


@contextmanager
def spelled_as_flags(as_flags: bool = True) -> Iterator[None]:
    """Within this context the option errors name command-line flags (every field's flag is
    ``--`` + its name with dashes); ``as_flags`` False: field names again (an option that is
    not a flag of the command running, e.g. an architecture inside ``bench --shape``)."""
    token = _AS_FLAGS.set(as_flags)
    try:
        yield
    finally:
        _AS_FLAGS.reset(token)


def named(name: str) -> str:
    """An option's name in a message: ``length_beam``, or ``--length-beam`` from the command line."""
    return flag(name) if _AS_FLAGS.get() else name


def setting(name: str, value: object) -> str:
    """An option set to a value in a message: ``mode='nar'``, or ``--mode nar`` (a true flag alone)."""
    if not _AS_FLAGS.get():
        return f"{name}={value!r}"
    return named(name) if value is True else f"{named(name)} {value}"


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field that is also a command-line option: ``help`` is its text, ``metadata`` the
    rest of what ``janus_fast.cli`` reads from it (``choices``, ``aliases``, ``required``, ...)."""
    return field(default=default, metadata={"help": help, **metadata})
