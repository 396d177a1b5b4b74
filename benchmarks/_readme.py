"""Each benchmark driver writes its results table between its own markers of README.md."""

from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def update_section(name: str, heading: str, block: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in README.md
    with ``block``; append the markers under ``## heading`` when they are absent."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = README.read_text() if README.exists() else ""
    section = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + section + "\n"
    README.write_text(text)
