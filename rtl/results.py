"""docs/results.md is written by several tools, each owning one section between its markers."""

from pathlib import Path

__all__ = ["write_section"]


def write_section(path: Path, begin: str, end: str, section: str) -> None:
    """Replace the text from `begin` to `end` in `path` by `section` (which carries both
    markers), or append `section` when the markers are absent; leave the rest alone."""
    text = path.read_text() if path.exists() else "# Results\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
