"""Tables for people (columns chosen to fit the terminal, never cut) and for scripts (JSON, CSV, full values).

One renderer for every listing command (``best``, ``studies``, ``models``). A row is a mapping of full values (what
JSON and CSV print); a :class:`Column` says how a table shows one of them and how much it matters when space is short.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

FORMATS = ("table", "json", "csv")
GAP = 2  # spaces between table columns
WRAP_MIN = 20  # a wrapping column is never squeezed below this (or its header)
BREAK_AFTER = "/-_:,;"  # where a long word (a path, a URL, a study name) may wrap when it has no space

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """One table column: ``priority`` 0 is always shown; higher numbers are dropped first when space is short."""

    name: str
    priority: int = 0
    key: str | Callable[[Row], Any] | None = None  # the row's field (default: ``name``), or how to get the value
    text: Callable[[Any], str] | None = None  # how a cell shows the value (default: str; None shows as "-")
    short: Callable[[Any], str] | None = None  # the cell in a normal table; ``text`` is used with --wide
    wrap: bool = False  # long values may wrap onto more lines (they are never cut)
    right: bool = False  # right-aligned (numbers)

    def value(self, row: Row) -> Any:
        key = self.name if self.key is None else self.key
        return key(row) if callable(key) else row.get(key)

    def cell(self, row: Row, wide: bool = False) -> str:
        value = self.value(row)
        if value is None:
            return "-"
        show = self.short if (self.short is not None and not wide) else self.text
        text = show(value) if show is not None else _text(value)
        return " ".join(text.split()) if any(c in text for c in "\n\r\t") else text


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def terminal_width(fallback: int) -> int:
    """``$COLUMNS`` as it is now (a console object reads it once, at import), else ``fallback``."""
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else fallback


# --------------------------------------------------------------------------------------------------------------------
# Fitting and drawing.


def fit_columns(rows: Sequence[Row], columns: Sequence[Column], width: int,
                wide: bool = False) -> list[tuple[Column, int]] | None:
    """The columns to show with their widths, in declared order; None when even the essential ones do not fit.

    Essential columns (priority 0) come first, whole when they fit, else with their wrapping columns narrowed;
    then the others by priority, each only if it fits in what is left; spare space widens wrapped columns.
    ``wide`` shows every column at full width and leaves long lines to the terminal.
    """
    natural = [max([len(c.name), *(len(c.cell(r, wide)) for r in rows)]) for c in columns]
    if wide:
        return list(zip(columns, natural))
    narrow = [min(n, max(len(c.name), WRAP_MIN)) if c.wrap else n for c, n in zip(columns, natural)]

    def total(indices: list[int], widths: list[int]) -> int:
        return sum(widths[i] for i in indices) + GAP * max(len(indices) - 1, 0)

    chosen = [i for i, c in enumerate(columns) if c.priority <= 0]
    if total(chosen, natural) <= width:
        widths = list(natural)
    elif total(chosen, narrow) <= width:
        widths = list(narrow)
    else:
        return None
    for i in sorted((i for i, c in enumerate(columns) if c.priority > 0), key=lambda i: columns[i].priority):
        widths[i] = narrow[i]
        if total([*chosen, i], widths) <= width:
            chosen.append(i)
    spare = width - total(chosen, widths)
    growing = [i for i in sorted(chosen) if widths[i] < natural[i]]
    while spare > 0 and growing:  # share what is left among the wrapped columns, evenly
        share = max(1, spare // len(growing))
        for i in list(growing):
            step = min(share, natural[i] - widths[i], spare)
            widths[i] += step
            spare -= step
            if widths[i] >= natural[i]:
                growing.remove(i)
            if spare == 0:
                break
    return [(columns[i], widths[i]) for i in sorted(chosen)]


def wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``: at spaces, else after ``/-_:,;``, else anywhere. Nothing is dropped
    but the spaces a line breaks at."""
    if width <= 0 or len(text) <= width:
        return [text]
    lines = []
    while len(text) > width:
        cut = text.rfind(" ", 1, width + 1)
        if cut > 0:
            lines.append(text[:cut].rstrip())
            text = text[cut + 1:].lstrip()
            continue
        cut = max(text.rfind(c, 0, width) for c in BREAK_AFTER)
        cut = cut + 1 if cut >= 0 else width
        lines.append(text[:cut])
        text = text[cut:]
    return [*lines, text] if text else lines


def _table(rows: Sequence[Row], layout: list[tuple[Column, int]], wide: bool) -> list[str]:
    def line(parts: Sequence[str]) -> str:
        return (" " * GAP).join(p.rjust(w) if c.right else p.ljust(w) for (c, w), p in zip(layout, parts)).rstrip()

    cells = [[wrap(c.cell(r, wide), w) if c.wrap and not wide else [c.cell(r, wide)] for c, w in layout]
             for r in rows]
    tall = any(len(parts) > 1 for row in cells for parts in row)
    lines = [line([c.name for c, _ in layout]), line(["-" * w for _, w in layout])]
    for n, row in enumerate(cells):
        if tall and n:
            lines.append("")  # wrapped rows read better apart
        for k in range(max(len(parts) for parts in row)):
            lines.append(line([parts[k] if k < len(parts) else "" for parts in row]))
    return lines


def _vertical(rows: Sequence[Row], columns: Sequence[Column], width: int, wide: bool) -> list[str]:
    label = max(len(c.name) for c in columns)
    room = width - label - 4
    lines: list[str] = []
    for row in rows:
        lines.append("")
        for c in columns:
            parts = wrap(c.cell(row, wide), room) if room >= 10 else [c.cell(row, wide)]
            lines.append(f"  {c.name:>{label}}: {parts[0]}")
            lines.extend(" " * (label + 4) + part for part in parts[1:])
    return lines


def table(rows: Sequence[Row], columns: Sequence[Column], *, title: str = "", width: int = 80,
          wide: bool = False) -> str:
    """The rows as a text table that fits ``width`` (a ``column: value`` block per row if it cannot)."""
    lines = wrap(title, width) if title else []
    layout = fit_columns(rows, columns, width, wide)
    if layout is None:
        lines += _vertical(rows, columns, width, wide)
    else:
        lines += _table(rows, layout, wide)
        shown = {id(c) for c, _ in layout}
        hidden = [c.name for c in columns if id(c) not in shown]
        if hidden:
            lines += wrap(f"not shown: {', '.join(hidden)} (--wide shows all)", width)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Formats for scripts: exact values, no markup.


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def _csv_cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def render(rows: Sequence[Row], fmt: str, *, fields: Sequence[str] | None = None, columns: Sequence[Column] = (),
           title: str = "", width: int = 80, wide: bool = False) -> str:
    """``rows`` as ``fmt``: ``json`` (a list of objects), ``csv`` (a header line, then rows) or ``table``.

    JSON and CSV carry every field of a row, exactly (full sha256, ISO timestamps, unrounded numbers); ``fields``
    orders them and names the CSV header when there are no rows.
    """
    if fmt == "table":
        return table(rows, columns, title=title, width=width, wide=wide)
    names = list(fields or [])
    for row in rows:
        names += [k for k in row if k not in names]
    if fmt == "json":
        return json.dumps([{k: _plain(row.get(k)) for k in names} for row in rows], indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([_csv_cell(row.get(k)) for k in names] for row in rows)
        return buffer.getvalue()
    raise ValueError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
