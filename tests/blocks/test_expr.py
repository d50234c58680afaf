"""Expression losses (loss.expr / ops.expr): the parser's whitelist and its error positions, and NT-Xent and
MoCo's InfoNCE written as expressions against the shipped loss blocks, in value and gradient, on one process
and on two gloo processes (the expression's gather with gradient must reproduce one process's gradient)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from dist_helpers import spawn

from composer.blocks.expr.block import ExpressionLoss, ExpressionOp
from composer.blocks.expr.examples import BARLOW_TWINS, INFO_NCE, NT_XENT, SIMSIAM
from composer.blocks.expr.ops import OPS
from composer.blocks.expr.parse import ExprError, parse
from composer.blocks.losses.info_nce import InfoNCE
from composer.blocks.losses.nt_xent import NTXent


def test_free_names_are_the_ports_in_order_of_first_use():
    program = parse("a = mean(y)\nx * a + y - z[0] / 2", OPS)
    assert program.inputs == ("y", "x", "z")
    assert [name for name, _ in program.assignments] == ["a"]


@pytest.mark.parametrize("text, col, words", [
    ("mean(x) + bogus(x)", 11, "unknown operation 'bogus'"),
    ("mean(x", 5, "syntax error"),
    ("x.__class__", 1, "Attribute is not part"),
    ("(lambda: 0)()", 1, "unknown operation"),
    ("[v for v in x]", 1, "ListComp is not part"),
    ("x + 'text'", 5, "is not a number"),
    ("mean(*x)", 6, "'*' arguments"),
    ("mean(x, dim=0, bad=1)", 1, "unexpected keyword"),
    ("cosine(x)", 1, "missing a required argument"),
    ("mean = x\nmean", 1, "'mean' is an operation"),
    ("normalize + 1", 1, "call it"),
])
def test_mistakes_are_one_line_with_the_column(text, col, words):
    with pytest.raises(ExprError) as e:
        ExpressionLoss(expr=text)
    assert e.value.col == col and words in str(e.value) and "\n" not in str(e.value)


def test_nothing_runs_while_parsing():
    # a call of anything outside the table is refused before any code runs
    with pytest.raises(ExprError, match="unknown operation '__import__'"):
        parse("__import__('os')", OPS)
    with pytest.raises(ExprError, match="unknown operation"):
        parse("mean.__globals__(x)", OPS)


def test_ops_expr_is_any_value():
    z = torch.randn(3, 4)
    out = ExpressionOp(expr="normalize(z) / 0.1")(z=z)
    torch.testing.assert_close(out, torch.nn.functional.normalize(z, dim=-1) / 0.1)


def test_a_loss_must_be_a_scalar():
    with pytest.raises(ValueError, match="must give a scalar"):
        ExpressionLoss(expr="x * 2")(x=torch.ones(3))


def _compare(expression, block, inputs, stopped=()):
    """Value and gradient of every input except the ``stopped`` ones (the graph's ``!sg`` edges)."""
    leaves = {k: v.clone().requires_grad_(k not in stopped) for k, v in inputs.items()}
    twins = {k: v.clone().requires_grad_(k not in stopped) for k, v in inputs.items()}
    ours, theirs = expression(**leaves), block(**twins)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    ours.backward()
    theirs.backward()
    for k in inputs:
        if k not in stopped:
            torch.testing.assert_close(leaves[k].grad, twins[k].grad, rtol=1e-5, atol=1e-7)


def test_nt_xent_as_an_expression_is_the_shipped_block():
    gen = torch.Generator().manual_seed(0)
    _compare(ExpressionLoss(expr=NT_XENT), NTXent(temperature=0.1), {"z": torch.randn(2, 6, 5, generator=gen)})


def test_info_nce_as_an_expression_is_the_shipped_block():
    gen = torch.Generator().manual_seed(1)
    norm = torch.nn.functional.normalize
    q, k, queue = (norm(torch.randn(*s, generator=gen), dim=1) for s in [(6, 8), (6, 8), (16, 8)])
    _compare(ExpressionLoss(expr=INFO_NCE), InfoNCE(temperature=0.2),
             {"query": q, "positive": k, "negatives": queue}, stopped=("positive", "negatives"))


def test_barlow_twins_and_simsiam_as_expressions_equal_lightly():
    """lightly's losses as the independent reference (lightly · loss/barlow_twins_loss.py, loss/negative_cosine_...)."""
    from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 16, 6, generator=gen)
    theirs = lambda z: BarlowTwinsLoss(lambda_param=0.0051)(z[0], z[1])  # noqa: E731 (official lambda)
    _compare(ExpressionLoss(expr=BARLOW_TWINS), theirs, {"z": z})
    p = torch.randn(2, 16, 6, generator=gen)
    ncs = NegativeCosineSimilarity()
    simsiam = lambda p, z: (ncs(p[0], z[1]) + ncs(p[1], z[0])) / 2  # noqa: E731
    _compare(ExpressionLoss(expr=SIMSIAM), simsiam, {"p": p, "z": z}, stopped=("z",))


def test_the_docs_show_the_examples_and_every_operation():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "expressions.md").read_text()
    for op in OPS.values():
        assert f"`{op.signature}`" in doc, f"docs/expressions.md lacks {op.signature}"
    for line in BARLOW_TWINS.strip().splitlines():
        assert line in doc


def _nt_xent_worker(rank: int, world: int, z: torch.Tensor, expected_loss: float, expected_grad: torch.Tensor):
    n = z.shape[1] // world
    local = z[:, rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = ExpressionLoss(expr=NT_XENT)(z=local)
    loss.backward()
    # the gather's backward sums every rank's gradient into this rank's rows; DDP then divides by the world size
    torch.testing.assert_close(local.grad / world, expected_grad[:, rank * n:(rank + 1) * n], rtol=1e-4, atol=1e-6)
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    assert abs(mean_loss.item() / world - expected_loss) < 1e-5


@pytest.mark.dist
def test_nt_xent_expression_on_two_processes_is_one_process_on_the_global_batch():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(2, 8, 5, generator=gen)
    whole = z.clone().requires_grad_(True)
    loss = ExpressionLoss(expr=NT_XENT)(z=whole)
    loss.backward()
    spawn(_nt_xent_worker, 2, z, loss.item(), whole.grad)


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    loss = ExpressionLoss(expr=NT_XENT)
    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    z = torch.randn(2, 4, 3)
    torch.testing.assert_close(compiled(z=z), loss(z=z))
