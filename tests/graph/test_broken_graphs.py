"""The catalogue of broken graph files: each gets one-line errors naming file and line, and exit status 2."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from composer.cli import main

BROKEN = sorted((Path(__file__).parent / "broken").glob("*.yaml"))
LINE = re.compile(r"^\S+?(:\d+)?: (node '[^']+': )?\S")


def _expected(path: Path) -> str | None:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    return first.split("# expect:", 1)[1].strip() if "# expect:" in first else None


def test_catalogue_is_large():
    assert len(BROKEN) >= 30


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_graph_gets_one_line_errors(path, capsys):
    status = main(["check", str(path)])
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert lines, "no error printed"
    assert "Traceback" not in err
    for line in lines:
        assert line.startswith(str(path)), line  # every error names the file ...
        assert LINE.match(line), line
    expected = _expected(path)
    if expected:
        assert expected in err, err
    if path.stat().st_size and b"\x00" not in path.read_bytes() and path.stem not in ("latin1",):
        assert re.match(rf"^{re.escape(str(path))}:\d+: ", lines[0]), "... and the line"


def test_error_points_at_the_offending_line(capsys):
    path = Path(__file__).parent / "broken" / "unknown_param.yaml"
    main(["check", str(path)])
    err = capsys.readouterr().err
    line_no = int(err.split(":")[1])
    assert "temprature" in path.read_text().splitlines()[line_no - 1]


def test_debug_flag_shows_traceback(capsys):
    path = Path(__file__).parent / "broken" / "unknown_block_type.yaml"
    assert main(["--debug", "check", str(path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_misspelt_type_is_one_line_wherever_the_block_is_used(capsys):
    """The block is a teacher's source, called in the flow, read as a value and named as the embedding: the
    misspelt type is the only cause, so it is the only line."""
    path = Path(__file__).parent / "broken" / "misspelt_type_of_a_teacher_source.yaml"
    assert main(["check", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}:3: "), lines
