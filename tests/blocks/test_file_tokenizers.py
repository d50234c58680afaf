"""tokenizer.hf and tokenizer.sentencepiece against the libraries they wrap, on tokenizers trained here."""
from __future__ import annotations

import pytest

from composer.blocks import file_tokenizers
from composer.blocks.registry import get
from text_helpers import make_captions

CAPTIONS = make_captions(1200, seed=0)


def at(caption: str, phrase: str) -> tuple[int, int]:
    start = caption.index(phrase)
    return start, start + len(phrase)


# ---------------------------------------------------------------- Hugging Face tokenizer.json

def _train_wordpiece(tmp_path, captions):
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)  # like bert-base-uncased (GLIP)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(captions, trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path, tok


def _train_bpe(tmp_path, captions):
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=500, special_tokens=["<pad>"]))
    path = tmp_path / "bpe.json"
    tok.save(str(path))
    return path, tok


@pytest.mark.parametrize("train", [_train_wordpiece, _train_bpe])
def test_hf_tokenizer_matches_library(tmp_path, train):
    path, ref = train(tmp_path, CAPTIONS[:600])
    tok = file_tokenizers.HFTokenizer(path, context_length=32)
    tokens = tok(CAPTIONS)
    for i, caption in enumerate(CAPTIONS):
        want = ref.encode(caption).ids
        if len(want) > 32 and ref.post_processor is not None:  # truncation keeps [CLS] ... [SEP]
            assert tokens.ids[i, -1] == ref.token_to_id("[SEP]")
            want = want[:31] + [ref.token_to_id("[SEP]")]
        want = want[:32]
        n = len(want)
        assert tokens.ids[i, :n].tolist() == want and tokens.mask[i].sum() == n
        assert (tokens.ids[i, n:] == tok.pad_id).all()


def test_hf_spans(tmp_path):
    path, _ = _train_wordpiece(tmp_path, CAPTIONS[:600])
    tok = file_tokenizers.HFTokenizer(path, context_length=64)
    caption = "Two DOGS sitting on a red bench in Zürich"
    boxes = [[at(caption, "DOGS")], [at(caption, "red bench")], [at(caption, "Zürich")]]
    (ids, offs), = tok.encode_with_offsets([caption])
    assert offs[0] is None and offs[-1] is None  # [CLS], [SEP]
    for spans in boxes:
        got = file_tokenizers.span_positions(offs, spans)
        assert got and "".join(caption[offs[j][0]:offs[j][1]] for j in got).replace(" ", "") == \
            "".join(caption[s:e] for s, e in spans).replace(" ", "")
    assert file_tokenizers.positive_map(offs, boxes, 64).shape == (3, 64)


# ---------------------------------------------------------------- SentencePiece

@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    path = tmp_path_factory.mktemp("sp") / "sp"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CAPTIONS[:600]), model_prefix=str(path), vocab_size=300,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1)  # c4_en's layout: pad 0, eos 1
    return path.with_suffix(".model")


@pytest.mark.parametrize("eos", ["sticky", "yes", "none"])
def test_sentencepiece_matches_library(sp_model, eos):
    import sentencepiece as spm
    ref = spm.SentencePieceProcessor(model_file=str(sp_model))
    t = 16
    tok = file_tokenizers.SentencePieceTokenizer(sp_model, context_length=t, eos=eos, pad_id=1, lower=False)
    tokens = tok(CAPTIONS)
    for i, caption in enumerate(CAPTIONS):
        raw = ref.encode(caption)
        want = {"none": raw[:t], "yes": (raw + [1])[:t], "sticky": raw[:t - 1] + [1]}[eos]
        assert tokens.ids[i].tolist() == want + [1] * (t - len(want))  # SigLIP: pad with 1 (= EOS)
        assert tokens.mask[i].sum() == len(want)


def test_sentencepiece_spans(sp_model):
    tok = file_tokenizers.SentencePieceTokenizer(sp_model, context_length=64)
    caption = "Two DOGS near the café in 東京"
    (ids, offs), = tok.encode_with_offsets([caption])
    assert offs[-1] is None and ids[-1] == 1
    for s, e in [at(caption, "DOGS"), at(caption, "café"), at(caption, "東京")]:
        got = file_tokenizers.span_positions(offs, [(s, e)])
        covered = "".join(caption[offs[j][0]:offs[j][1]] for j in got).strip()
        assert caption[s:e] in covered and len(covered) <= e - s + 6
    for (ids, offs), caption in zip(tok.encode_with_offsets(CAPTIONS), CAPTIONS):
        assert all(o is None or 0 <= o[0] <= o[1] <= len(caption) for o in offs)


# ---------------------------------------------------------------- missing files

@pytest.mark.parametrize("make", [
    lambda p: file_tokenizers.HFTokenizer(p / "nope" / "tokenizer.json", 64),
    lambda p: file_tokenizers.SentencePieceTokenizer(p / "spiece.model", 64),
    lambda p: get("tokenizer.clip_bpe").cls(vocab=str(p / "bpe.txt.gz")),
    lambda p: get("tokenizer.hf").cls(path=str(p / "tokenizer.json")),
])
def test_missing_file_is_one_line(tmp_path, make):
    with pytest.raises(ValueError) as err:
        make(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and message.startswith("tokenizer file not found: ")


def test_block_wordpiece_glip_spans(tmp_path):
    path, ref = _train_wordpiece(tmp_path, CAPTIONS[:600])
    block = get("tokenizer.hf").cls(path=str(path), context_length=24)
    caption = "Two DOGS sitting on a red bench"
    out = block([caption, "a cat"], [[[at(caption, "red bench")]], []])
    assert block.vocab_size == ref.get_vocab_size()
    assert out.ids[0, :out.mask[0].sum()].tolist() == ref.encode(caption).ids
    picked = [ref.id_to_token(int(out.ids[0, j])) for j in out.positive[0][0].nonzero().flatten()]
    assert "".join(p.removeprefix("##") for p in picked) == "redbench"
    assert out.positive[1].shape == (0, 24)


def test_validator_sizes_encoder_from_tokenizer(tmp_path):
    from composer.graph import check, load
    from composer.runtime.errors import GraphErrors
    path, ref = _train_wordpiece(tmp_path, CAPTIONS[:600])
    graph = tmp_path / "g.yaml"
    graph.write_text(f"""name: t
inputs: [image, caption]
blocks:
  tok: {{type: tokenizer.hf, path: {path}, context_length: 16}}
  enc: {{type: encoder.text, vocab_size: 258, context_length: 16, width: 32, layers: 1, heads: 2, output_dim: 8}}
  img: {{type: encoder.timm, arch: resnet10t}}
  proj: {{type: head.mlp, dims: [512, 8]}}
  scale: {{type: ops.scalar, init: 2.6}}
  clip_loss: {{type: loss.clip}}
flow:
  t: {{tok: caption}}
  e: {{enc: {{ids: t.ids}}}}
  loss: {{clip_loss: {{image: {{proj: {{img: image}}}}, text: e.pooled, logit_scale: scale}}}}
objective: loss
""")
    with pytest.raises(GraphErrors) as err:
        check(load(str(graph)))
    message = str(err.value)
    assert f"vocab_size: {ref.get_vocab_size()}" in message and "pool 'argmax'" in message
