"""Objective weights: finite and > 0 by default; a term declared ``{weight: w, allow_negative: true}`` may be zero
or negative on purpose (a quantity the training maximises), and the compiled loss then is ``Σ w_i · term_i``."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import torch

import composer
from composer.cli import main
from composer.graph.schema import graph_schema
from composer.graph.shapes import example_batch

SIMCLR = Path(__file__).resolve().parents[2] / "graphs" / "simclr.yaml"
GRAPH = """\
extends: {base}
blocks:
  energy: {{type: loss.expr, expr: "mean(z * z)"}}
flow:
  bonus: {{energy: z}}
objective: {{loss: 1.0, bonus: {weight}}}
"""


def _write(tmp_path, weight: str) -> Path:
    path = tmp_path / "signed.yaml"
    path.write_text(GRAPH.format(base=SIMCLR, weight=weight))
    return path


def test_declared_negative_weight_checks_and_enters_the_loss_with_its_sign(tmp_path, capsys):
    path = _write(tmp_path, "{weight: -0.5, allow_negative: true}")
    assert main(["check", str(path), "--variant", "tiny"]) == 0, capsys.readouterr().err
    spec = composer.load(path, variant="tiny")
    assert spec.objective == {"loss": 1.0, "bonus": -0.5} and spec.signed_objective == {"bonus"}
    torch.manual_seed(0)
    model = composer.build(spec)
    out = model(model.data_stage(example_batch(spec, n=4)))
    expected = out.values["loss"] - 0.5 * out.values["bonus"]  # written out: 1 · loss + (-0.5) · bonus
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert out.values["bonus"].item() > 0  # so the sign is visible in the sum


@pytest.mark.parametrize("weight,message", [
    ("-0.5", "the objective weight of 'bonus': -0.5 is out of range"),
    ("0", "the objective weight of 'bonus': 0.0 is out of range"),
    ("{weight: -0.5}", "allow_negative: true"),  # the hint names the declaration
    ("{weight: .nan, allow_negative: true}", "nan is not a finite number"),
    ("{weight: .inf, allow_negative: true}", "inf is not a finite number"),
    ("{weight: -0.5, allow_negative: yes please}", "the objective term 'bonus'"),
])
def test_undeclared_or_non_finite_weight_is_one_line(tmp_path, capsys, weight, message):
    path = _write(tmp_path, weight)
    assert main(["check", str(path), "--variant", "tiny"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}:6: ") and message in lines[0], lines


def test_schema_accepts_the_declaration_and_rejects_a_bare_negative_weight():
    schema = graph_schema()
    base = {"blocks": {}, "flow": {}}
    jsonschema.validate({**base, "objective": {"l": {"weight": -1.0, "allow_negative": True}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**base, "objective": {"l": -1.0}}, schema)
