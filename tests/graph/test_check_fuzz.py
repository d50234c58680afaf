"""Property-based fuzzing: ``ptc check`` ends with status 0 or 2 and one-line errors, never a traceback."""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composer.cli import main

VALID = Path(__file__).parents[1].joinpath("graphs", "tiny_shared.yaml").read_text()
NAMES = ["blocks", "flow", "updates", "objective", "inputs", "type", "encoder", "aug", "q", "k", "x", "loss",
         "image", "info_nce", "projector", "queue", "keys", "dims", "size", "arch", "momentum", "source",
         "embedding", "extends", "variants", "train"]
KINDS = ["encoder.timm", "head.mlp", "augment.moco_v2", "loss.info_nce", "memory.queue", "teacher.ema",
         "ops.l2_normalize", "mask.random", "encoder.vit", "nope.nothing"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                    st.sampled_from(NAMES + KINDS + ["!sg q", "q.field", ""]), st.text(max_size=8))
TREES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(NAMES + KINDS), inner, max_size=4)), max_leaves=25)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(text: bytes | str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "g.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        err_buf, out_buf = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err_buf), contextlib.redirect_stdout(out_buf):
            status = main(["check", str(path)])
        err = err_buf.getvalue()
    assert status in (0, 2), err
    assert "Traceback" not in err
    if status == 2:
        assert all(line.startswith(str(path)) for line in err.strip().splitlines()), err


@SETTINGS
@given(st.data())
def test_mutated_valid_graph(data):
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 12)))
        insert = data.draw(st.text(alphabet=" :{}[],!&*-#\n\tabcqkxsg.0123456789'\"", max_size=6))
        text = text[:i] + insert + text[j:]
    _check(text)


@SETTINGS
@given(st.dictionaries(st.sampled_from(NAMES), TREES, max_size=6))
def test_random_structures(tree):
    _check(yaml.safe_dump(tree, allow_unicode=True))


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes(raw):
    _check(raw)
