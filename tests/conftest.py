"""The tests mirror the packages (tests/graph, tests/train ...); the shared helpers stay here, importable by all."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
