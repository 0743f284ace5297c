"""How a report table writes one figure: integers, rates, token counts, milliseconds, money,
cores, cosines, with ``MISSING`` (a dash) for anything that is not a finite number. Shared by
every report format through ``embedsweep.report_model``'s columns. Pure: value in, text out.
"""

from __future__ import annotations

import math

__all__ = [
    "MISSING",
    "finite_number",
    "format_cores",
    "format_cosine",
    "format_integer",
    "format_millis",
    "format_money",
    "format_rate",
    "format_sci",
    "format_text",
    "format_tokens",
]

# What a table shows for a figure a row lacks.
MISSING = "-"


def finite_number(value: object) -> float | int | None:
    """The value as a figure, or None for anything that is not a finite number."""
    # bool is an int to Python but never a figure here; NaN and infinities print as missing.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_integer(value: object) -> str:
    """An integer figure with thousands separators."""
    number = finite_number(value)
    return MISSING if number is None else f"{number:,}"


def format_rate(value: object) -> str:
    """A rate: one decimal under a thousand, none past it."""
    # Requests per second of a small CPU model are single digits; one decimal keeps them apart.
    # Past a thousand the decimal is noise and only widens the column.
    number = finite_number(value)
    if number is None:
        return MISSING
    return f"{number:,.1f}" if abs(number) < 1000 else f"{number:,.0f}"


def format_tokens(value: object) -> str:
    """A token count or rate, whole, with thousands separators."""
    number = finite_number(value)
    return MISSING if number is None else f"{number:,.0f}"


def format_millis(value: object) -> str:
    """A latency in ms to about three significant figures."""
    # Three significant figures: sub-10 ms latencies differ in the second decimal, 10-100 ms in
    # the first; past 100 ms a decimal is noise.
    number = finite_number(value)
    if number is None:
        return MISSING
    if abs(number) < 10:
        return f"{number:.2f}"
    return f"{number:.1f}" if abs(number) < 100 else f"{number:,.0f}"


def format_text(value: object) -> str:
    """The value as text; a dash for None or an empty string."""
    return MISSING if value is None or value == "" else str(value)


def format_money(value: object) -> str:
    """Dollars to three significant figures (whole past a thousand)."""
    # A small CPU model costs dollars per million tokens, a big GPU fractions of a cent: keep
    # three significant figures either way.
    number = finite_number(value)
    if number is None:
        return MISSING
    return f"{number:.3g}" if abs(number) < 1000 else f"{number:,.0f}"


def format_cores(value: object) -> str:
    """A number of CPU cores, two decimals."""
    number = finite_number(value)
    return MISSING if number is None else f"{number:.2f}"


def format_cosine(value: object) -> str:
    """A cosine similarity, six decimals."""
    # 1 - cosine is what matters: 0.99999994 and 0.9999 differ in the fifth decimal.
    number = finite_number(value)
    return MISSING if number is None else f"{number:.6f}"


def format_sci(value: object) -> str:
    """A figure in scientific notation, one decimal."""
    number = finite_number(value)
    return MISSING if number is None else f"{number:.1e}"
