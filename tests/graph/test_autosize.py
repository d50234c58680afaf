"""``vocab_size: auto`` (encoder.text's default): the embedding table takes the vocabulary of the tokenizer wired
to its ``ids``; a number written in the graph must still equal it; ``auto`` without a tokenizer is one line."""
from __future__ import annotations

from pathlib import Path

import pytest

import composer
from composer.cli import main

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
CLIP, SIGLIP, GLIP = (str(GRAPHS / f"{n}.yaml") for n in ("clip", "siglip", "glip"))


@pytest.mark.parametrize("graph,variant,overrides,size", [
    (CLIP, None, {}, 49408),                       # open_clip's BPE: 49406 SOT, 49407 EOT
    (CLIP, "tiny", {}, 258),                       # UTF-8 bytes, SOT 256, EOT 257
    (SIGLIP, None, {}, 258),
    (SIGLIP, None, {"blocks.tokenizer": "{type: tokenizer.clip_bpe, context_length: 64}"}, 49408),  # one edit
    (GLIP, "tiny", {}, 258),
])
def test_text_encoder_takes_the_wired_tokenizers_vocabulary(graph, variant, overrides, size):
    spec = composer.load(graph, overrides, variant)
    assert spec.blocks["text_encoder"].params["vocab_size"] == size
    if variant == "tiny":  # the built embedding table, not only the parameter
        modules = __import__("composer.graph.compile", fromlist=["build_blocks"]).build_blocks(spec, "meta")
        assert modules["text_encoder"].token_embedding.weight.shape[0] == size


@pytest.mark.parametrize("written", [257, 259])  # a row short (an id without an embedding), a row too many
def test_an_explicit_mismatch_is_still_one_line(capsys, written):
    assert main(["check", CLIP, "--variant", "tiny", "--set", f"blocks.text_encoder.vocab_size={written}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and (f"vocab_size {written} " in lines[0] or f"vocab_size is {written}" in lines[0]), lines
    assert "258" in lines[0] and "node 'text_encoder'" in lines[0]


def test_auto_without_a_tokenizer_is_one_line(tmp_path, capsys):
    graph = tmp_path / "g.yaml"
    graph.write_text("""inputs: [image, ids]
blocks:
  enc: {type: encoder.text, context_length: 8, width: 16, layers: 1, heads: 2, output_dim: 4}
  img: {type: encoder.timm, arch: resnet10t}
  proj: {type: head.mlp, dims: [512, 4]}
  scale: {type: ops.scalar, init: 2.6}
  clip_loss: {type: loss.clip}
flow:
  t: {enc: ids}
  loss: {clip_loss: {image: {proj: {img: image}}, text: t.pooled, logit_scale: scale}}
""")
    assert main(["check", str(graph)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{graph}:3: "), lines
    assert "vocab_size 'auto' of encoder.text takes the size from the block that computes its 'ids' input, " \
           "but 'ids' has none" in lines[0]
