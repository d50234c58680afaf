"""The 80 ImageNet prompt templates against open_clip's copy."""
import pytest


def test_templates_match_open_clip():
    from composer.evaluate import templates
    pytest.importorskip("open_clip")
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    assert len(templates.IMAGENET_TEMPLATES) == 80
    assert [t.format("dog") for t in templates.IMAGENET_TEMPLATES] == [f("dog") for f in OPENAI_IMAGENET_TEMPLATES]
