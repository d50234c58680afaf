"""Evaluation of learned representations: frozen-feature probes (kNN, linear), the embedding of a graph as an
image → vector function, zero-shot classification and grounding, and export to timm weights.

Used by the trainer (the online kNN probe) and by ``ptc eval`` / ``ptc zeroshot`` / ``ptc export``.
"""
