"""``ptc schema`` describes every ``train:`` key (type and meaning) and agrees with the grammar's checks."""
from __future__ import annotations

import jsonschema
import pytest
import yaml

import composer
from composer.graph.schema import graph_schema
from composer.graph.train_section import GROUP_KEYS, KEYS, parse_train
from composer.runtime.errors import GraphError

SIAMESE = "tests/graphs/render_siamese.yaml"
TRAIN = graph_schema()["properties"]["train"]
VALIDATOR = jsonschema.Draft202012Validator(TRAIN)


def test_every_key_has_a_type_and_a_meaning():
    assert set(TRAIN["properties"]) == set(KEYS)
    group = TRAIN["properties"]["param_groups"]["items"]["properties"]
    assert set(group) == set(GROUP_KEYS)
    for key, entry in list(TRAIN["properties"].items()) + list(group.items()):
        assert entry.get("description"), key
        assert {"type", "enum", "anyOf", "oneOf"} & set(entry), key


@pytest.mark.parametrize("text, ok", [
    ("{optimizer: lars, lr: {cosine: [0.2, 0.0002], warmup: 10ep}, param_groups: "
     "[{params: [ndim<=1], lr_factor: 0.024, weight_decay: 0, lars_adapt: false}]}", True),
    ("{optimizer: {sgd: {momentum: 0.9}}, param_groups: [{blocks: [predictor], lr: 0.05}]}", True),
    ("{optimizer: {adamw: {betas: [0.9, 0.95]}}, clip_grad: {per_param: 3.0}, freeze: {last_layer: 1ep}}", True),
    ("{batch_sz: 3}", False),
    ("{optimizer: adam}", False),
    ("{param_groups: [{blocks: [predictor], lr: 0.05, lr_factor: 2}]}", False),
    ("{param_groups: [{lr: 0.05}]}", False),
    ("{param_groups: [{blocks: [predictor], lr_facter: 2}]}", False),
    ("{clip_grad: {total: 1.0}}", False),
    ("{accumulate: 0}", False),
])
def test_schema_and_grammar_agree(text, ok):
    train = yaml.safe_load(text)
    schema_ok = not list(VALIDATOR.iter_errors(train))
    try:
        parse_train(composer.load(SIAMESE, {"train": text}))
        grammar_ok = True
    except GraphError:
        grammar_ok = False
    assert schema_ok == grammar_ok == ok
