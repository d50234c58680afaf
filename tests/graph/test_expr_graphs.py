"""Expression losses inside a graph: ports from the expression, one-line errors at the expression's line and
column, the shape dry run, ptc explain showing the program, and a forward/backward through the built model."""
from __future__ import annotations

import textwrap

import torch

import composer
from composer.cli import main
from composer.graph.shapes import example_batch

GRAPH = """\
name: expr_graph
inputs: [image]
blocks:
  aug: {type: augment.moco_v2, size: 16, views: 2}
  encoder: {type: encoder.timm, arch: resnet18, views: joint}
  predictor: {type: head.mlp, dims: [512, 32, 512]}
  simsiam:
    type: loss.expr
    expr: |
      a = mean(cosine(p[0], z[1]))
      b = mean(cosine(p[1], z[0]))
      -(a + b) / 2
flow:
  v: {aug: image}
  z: {encoder: v}
  p: {predictor: z}
  loss: {simsiam: {p: p, z: !sg z}}
objective: loss
train: {batch_size: 4}
"""


def _write(tmp_path, text):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


def test_a_graph_with_an_expression_loss_checks_builds_and_trains(tmp_path):
    spec = composer.load(_write(tmp_path, GRAPH))
    assert list(spec.ports("simsiam")) == ["p", "z"]
    model = composer.build(spec)
    out = model(model.data_stage(example_batch(spec, n=4)))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.predictor.net[0].weight.grad is not None  # gradient through p, none through the !sg z


def test_an_expression_error_names_the_line_and_column(tmp_path, capsys):
    broken = GRAPH.replace("b = mean(cosine(p[1], z[0]))", "b = mean(cosin(p[1], z[0]))")
    assert main(["check", str(_write(tmp_path, broken))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one cause, one line: no second line about the block's unknown inputs
    line = next(i for i, text in enumerate(broken.splitlines(), 1) if "cosin(" in text)
    assert err[0].startswith(f"{tmp_path / 'g.yaml'}:{line}: node 'simsiam': expr: line 2, col 10: unknown operation "
                             "'cosin' (did you mean 'cosine'?)")


def test_a_port_the_expression_does_not_use_is_an_error(tmp_path, capsys):
    broken = GRAPH.replace("{simsiam: {p: p, z: !sg z}}", "{simsiam: {p: p, z: !sg z, q: z}}")
    assert main(["check", str(_write(tmp_path, broken))]) == 2
    assert "has no input 'q'" in capsys.readouterr().err


def test_explain_writes_the_expression_as_the_loss_equation(tmp_path, capsys):
    assert main(["explain", str(_write(tmp_path, GRAPH)), "--no-flops"]) == 0
    text = capsys.readouterr().out
    assert textwrap.dedent("""\
        # a = mean(cosine(p[0], z[1]))
        # b = mean(cosine(p[1], z[0]))
        # loss = -(a + b) / 2""") in textwrap.dedent("\n".join(line.strip() for line in text.splitlines()))
