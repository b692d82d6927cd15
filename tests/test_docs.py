"""docs/architecture.md shows each example of docs/examples/ verbatim, and every example runs (its asserts hold)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
NEEDED = {"add_cam_variant.py", "add_lrp_rule.py", "add_canonizer.py", "add_metric.py", "add_perturbation_method.py"}


def test_every_needed_example_exists_and_the_page_shows_it_verbatim() -> None:
    assert NEEDED <= {p.name for p in EXAMPLES}
    page = (ROOT / "docs" / "architecture.md").read_text()
    for path in EXAMPLES:
        assert f"```python\n{path.read_text()}```" in page, f"docs/architecture.md does not show {path.name} as it is"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    # a fresh process: an example registers a method or metric, which must not leak into the other tests
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{path.name} failed:\n{done.stderr[-3000:]}"
