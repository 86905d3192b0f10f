"""The layering contracts in pyproject.toml hold (import-linter), so `make test` enforces them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_layers_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    proc = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_public_api_resolves_every_exported_name():
    import spark_scoring

    for name in spark_scoring.__all__:
        assert getattr(spark_scoring, name) is not None, name
    assert spark_scoring.run.__module__ == "spark_scoring.pipeline"
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        spark_scoring.nope  # noqa: B018
