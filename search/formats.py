"""Numbers and durations as every output shows them (the terminal's lines and tables, the report's
HTML): one place, so that showing a study needs nothing of the code that runs one."""

from __future__ import annotations

from typing import Any


def short(value: Any) -> str:
    """A parameter's value as the tables and lines show it: 3 significant digits, ``-`` for none."""
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def four(value: float | None) -> str:
    """A metric to four places; nan where it was not recorded."""
    return f"{value if value is not None else float('nan'):.4f}"


def duration(seconds: float | None) -> str:
    """'2 h 05 min', '3 min 07 s' or '42 s'; empty where it is not known."""
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
