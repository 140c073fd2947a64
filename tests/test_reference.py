"""docs/configuration.md's entity reference is the schema's, rendered."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.tools import reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_the_documented_reference_matches_the_schema() -> None:
    assert reference.main(["--check", str(DOC)]) == 0, (
        "run: python -m router.tools.reference --write docs/configuration.md"
    )


def test_a_stale_reference_is_reported_and_rewritten(tmp_path: Path) -> None:
    doc = tmp_path / "c.md"
    doc.write_text(f"intro\n{reference.BEGIN}\nold\n{reference.END}\noutro\n")
    assert reference.main(["--check", str(doc)]) == 1
    assert reference.main(["--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "`backlog` | an integer from 0 to 65535 | `0`" in text
    assert reference.main(["--check", str(doc)]) == 0


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        reference.splice("no markers here", reference.render())
