"""Markdown tables of benchmark rows: one formatter for every report that prints one."""

from __future__ import annotations

from collections.abc import Sequence


def number(value: float | None, digits: int = 3, missing: str = "-") -> str:
    """``value`` with ``digits`` decimals, ``missing`` where nothing was measured (None)."""
    return missing if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1) -> list[str]:
    """The lines of a Markdown table: ``header``, then one line per row (cells as ``str()``);
    the columns from ``numeric_from`` on are right-aligned."""
    align = ["---"] * numeric_from + ["---:"] * (len(header) - numeric_from)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines
