"""What memory the machine has left, and refusing work that cannot fit before it starts."""

from __future__ import annotations


def available_memory_bytes() -> int | None:
    """The kernel's estimate of memory available without swapping (MemAvailable), None where
    there is no /proc/meminfo (not Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None


def check_fits_in_memory(needed_bytes: float, what: str, advice: str) -> None:
    """ValueError when ``needed_bytes`` exceed the memory available (no check off Linux):
    "``what`` needs about N GB ... ``advice``"."""
    available = available_memory_bytes()
    if available is not None and needed_bytes > available:
        raise ValueError(
            f"{what} needs about {needed_bytes / 1e9:.1f} GB of memory and {available / 1e9:.1f} GB are "
            f"available: {advice}"
        )
