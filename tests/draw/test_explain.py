"""Explanations: symbolic shapes against the papers' sizes, parameter counts and FLOPs against hand counts,
the pseudocode's structure (one line per node, the no-grad region, updates after the step), the DINO handout."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm

import composer
from composer.cli import main
from composer.draw.explain import explain, numeric, pseudocode
from composer.draw.measure import count_flops, param_counts, symbolic_shapes

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "graphs"


@pytest.fixture(scope="module")
def dino_text():
    return explain(composer.load(TESTS / "render_dino.yaml"))


@pytest.fixture(scope="module")
def moco_v2():
    spec = composer.load(ROOT / "graphs" / "moco_v2.yaml")
    return spec, symbolic_shapes(spec)


def test_moco_v2_shapes_use_the_papers_symbols(moco_v2):
    shapes = moco_v2[1]
    # MoCo (arXiv:1911.05722) Algorithm 1: queries and keys N x C, the queue holds K keys; C = 128, K = 65536
    assert shapes.of("q") == shapes.of("k") == "N x C"
    assert shapes.of("queue") == "K x C"
    assert shapes.of("x_q") == "N x 3 x S x S"
    assert shapes.of("q__encoder") == "N x D"
    assert {s: v.value for s, v in shapes.symbols.items()} == {"S": 224, "K": 65536, "C": 128, "D": 2048}
    assert numeric(shapes.of("queue"), shapes.symbols, 256) == "65536 x 128"
    assert numeric("2N x 3 x S x S", shapes.symbols, 256) == "512 x 3 x 224 x 224"


def test_parameter_counts_match_direct_counts():
    spec = composer.load(TESTS / "render_dino.yaml")
    counts = param_counts(spec)
    resnet = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=0).parameters())
    head = 96 * 32 + 32 + 32 * 24 + 24  # Linear(96, 32) and Linear(32, 24) with biases
    assert (counts["encoder"].trainable, counts["encoder"].frozen) == (resnet, 0)
    assert (counts["teacher_enc"].trainable, counts["teacher_enc"].frozen) == (0, resnet)
    assert (counts["head"].trainable, counts["teacher_head"].frozen) == (head, head)
    assert counts["center"].buffers == 24 and counts["center"].trainable == 0


def test_flops_per_step_match_a_hand_count():
    cost = count_flops(composer.load(TESTS / "render_flops.yaml"))
    assert cost.where == "meta" and cost.batch == 5
    rows = 5 * 3 * 8  # head.mlp folds (N, 3, 8, 8) into rows of the last axis (8)
    layers = 8 * 16 + 16 * 4
    assert cost.forward == 2 * 2 * rows * layers  # two calls (both views), 2 FLOPs per multiply-add
    # backward of the first view only (the second is behind sg): both weight grads, the input grad of layer 2
    assert cost.backward == 2 * rows * (16 * 4 + 16 * 4 + 8 * 16)
    assert cost.per_block == {"head": cost.forward}


def test_pseudocode_has_one_line_per_node_and_the_step_order(moco_v2):
    spec, shapes = moco_v2
    lines = pseudocode(spec, shapes)
    text = "\n".join(lines)
    for name, node in spec.nodes.items():
        if node.kind != "input":
            assert len([l for l in lines if re.match(rf"\s+{name} = ", l)]) == 1, name
    no_grad = next(i for i, l in enumerate(lines) if l.startswith("    with no_grad():"))
    teacher = next(i for i, l in enumerate(lines) if l.lstrip().startswith("k__key_encoder = "))
    student = next(i for i, l in enumerate(lines) if l.lstrip().startswith("q__encoder = "))
    assert no_grad < teacher < student
    assert lines[teacher].startswith(" " * 8) and lines[student].startswith(" " * 4 + "q")
    assert "loss = info_nce(query=q, positive=sg(k), negatives=sg(queue))" in text
    assert re.search(r"# l_neg = q · queueᵀ\s+\[N x K\]", text)
    assert re.search(r"# q: N x C", text)
    step = text.index("optimizer.step()")
    assert step < text.index("θ[key_encoder] ← m·θ[key_encoder] + (1 − m)·θ[encoder],   m = 0.999")
    assert step < text.index("queue[ptr : ptr + W·N] ← k_all")


def test_dino_handout_gives_equations_and_every_size(dino_text):
    text = dino_text
    sizes = {m.group(1): m.group(2) for m in re.finditer(r"^([A-Z])\s+(\d+)\s", text, re.M)}
    assert sizes == {"N": "8", "G": "16", "L": "8", "V": "4", "K": "24", "D": "96"}
    assert re.search(r"P_t = softmax\(\(t − center\) / τ_t\),   τ_t = 0.04 .*\[2 x N x K\]", text)
    assert re.search(r"log P_s = log_softmax\(s / τ_s\),   τ_s = 0.1 .*\[\(2\+V\) x N x K\]", text)
    assert "2(V+1) = 10 pairs" in text  # 2 teacher crops x (2 + 4 - 1) student crops
    assert re.search(r"center ← m·center \+ \(1 − m\)·Σ_rows t / \(rows·W\),   m = 0.9 .*# 1 x K", text)
    variables = text[text.index("Variables"):text.index("Blocks")]
    expected = {"crops.global_crops": ("2 x N x 3 x G x G", "2 x 8 x 3 x 16 x 16"),
                "crops.local_crops": ("V x N x 3 x L x L", "4 x 8 x 3 x 8 x 8"),
                "s_global": ("2 x N x K", "2 x 8 x 24"), "s_local": ("V x N x K", "4 x 8 x 24"),
                "t": ("2 x N x K", "2 x 8 x 24"), "t__teacher_enc": ("2 x N x D", "2 x 8 x 96"),
                "center": ("1 x K", "1 x 24"), "loss": ("scalar", "scalar")}
    for name, (symbolic, at_n) in expected.items():
        assert re.search(rf"^{re.escape(name)}\s+\S+\s+{re.escape(symbolic)}\s+{re.escape(at_n)}\s", variables,
                         re.M), name
    assert "forward" in text and "at N = 8 = train.batch_size, the whole global batch in one process" in text


def test_markdown_and_cli(capsys):
    graph = str(TESTS / "render_siamese.yaml")
    assert main(["explain", graph, "--no-flops", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# render_siamese") and "```python" in out and "| value | computed by |" in out
    assert main(["explain", graph, "--code"]) == 0
    code = capsys.readouterr().out
    assert "def forward(self, batch):" in code and "z2.detach()" in code
    assert main(["explain", graph, "--set", "blocks.nope.dims=[1]"]) == 2
