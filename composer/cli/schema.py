"""print the JSON Schema of graph files (generated from the block registry): ptc schema"""
from __future__ import annotations

import argparse
import json

from composer.graph.schema import graph_schema


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args) -> int:
    print(json.dumps(graph_schema(), indent=2))
    return 0
