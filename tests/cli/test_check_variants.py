"""``ptc check`` checks every variant of a graph by default, and an error of a variant names it."""
from __future__ import annotations

from composer.cli import main

GRAPH = """\
name: v
inputs: [image]
blocks:
  aug:       {type: augment.simclr, size: 16, views: 2}
  encoder:   {type: encoder.timm, arch: test_resnet}
  projector: {type: head.mlp, dims: [96, 32, 16]}
  nt_xent:   {type: loss.nt_xent, temperature: 0.5}
flow:
  views: {aug: image}
  z:     {projector: {encoder: views}}
  loss:  {nt_xent: {z: z}}
variants:
  good: {blocks: {projector: {dims: [96, 8]}}}
  tiny:
    blocks:
      projector: {dimz: [96, 8]}
"""


def test_a_typo_inside_a_variant_fails_check_and_names_the_variant(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH)
    assert main(["check", "--no-dry-run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}:16: variant 'tiny': node 'projector': unknown parameter 'dimz' for head.mlp "
                   "(did you mean 'dims'?); expected one of dims, hidden_norm, last_norm, bias, last_bias, activation, views"]


def test_all_variants_pass_and_are_listed(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH.replace("dimz", "dims"))
    assert main(["check", "--no-dry-run", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok (and variants good, tiny)"


def test_no_variants_and_one_variant(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH)
    assert main(["check", "--no-dry-run", "--no-variants", str(path)]) == 0
    assert main(["check", "--no-dry-run", "--variant", "good", str(path)]) == 0
    assert main(["check", "--no-dry-run", "--variant", "tiny", str(path)]) == 2
