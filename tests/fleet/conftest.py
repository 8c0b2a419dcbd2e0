"""Fleet tests: tests/pg.py and tests/sshd.py importable (the stores are tests/conftest.py's)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/pg.py, tests/sshd.py
