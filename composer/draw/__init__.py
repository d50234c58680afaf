"""Drawings and explanations of a checked graph: diagrams (render), pseudocode with shapes (explain), the
equations of each block kind, symbolic sizes, parameter counts and FLOPs (measure), and diagram diffs (diff).

It reads specs and builds nothing it trains.
"""
