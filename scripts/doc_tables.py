"""Generated tables live in the docs between two HTML comments, ``<!-- NAME-table:start -->`` and
``<!-- NAME-table:end -->``: a script rewrites what is between them and leaves the rest of the page as written."""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}-table:start -->", f"<!-- {name}-table:end -->"


def write_between_markers(page: Path, name: str, table: str) -> None:
    start, end = markers(name)
    text = page.read_text()
    if start not in text or end not in text.split(start, 1)[1]:
        raise SystemExit(f"{page} lacks the markers {start} and {end} (in that order): add them where the table goes")
    before, rest = text.split(start, 1)
    page.write_text(before + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])
