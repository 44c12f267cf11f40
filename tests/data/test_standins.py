"""The stand-in writers (abn.data.standins) serve tests and benchmarks only."""

from __future__ import annotations

import subprocess
import sys


def test_production_code_never_imports_the_stand_in_writers():
    code = "import sys, abn.data, abn.train, abn.explain.run; print('abn.data.standins' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
