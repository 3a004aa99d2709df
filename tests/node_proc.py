"""Run a node in its own process (for the kill -9 tests) with the test analysis stand-in.

Usage: python tests/node_proc.py CONFIG.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l3node.config import load_config  # noqa: E402
from l3node.logs import configure  # noqa: E402
from l3node.service import serve  # noqa: E402
from tests.node_helpers import small_analysis  # noqa: E402

if __name__ == "__main__":
    config = load_config(sys.argv[1])
    configure(json=True, level="INFO")
    serve(config, analyse=small_analysis)
