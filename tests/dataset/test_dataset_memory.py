"""Memory of the local engine of explain-dataset stays flat as the folder grows: tiny_cnn, gradcam and no metric over
200 and 2,000 tiny images, each run in a fresh process; peak resident memory (VmHWM) measured after the run minus the
resident memory before it, as tests/inside/test_memory.py measures it (a fixed glibc mmap threshold, see there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pyarrow")

CHILD = r"""
import json, sys, warnings
from pathlib import Path
import torch
torch.manual_seed(0)
torch.set_num_threads(1)
from seewhy import zoo
from seewhy.dataset import explain_dataset

def kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])

folder, out = sys.argv[1], sys.argv[2]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # tiny_cnn ships no weights
    model = zoo.load("tiny_cnn")
run = lambda data, store: explain_dataset(data, model, ["gradcam"], [], out=store, batch_size=16, chunk_size=256,
                                          workers=0, estimate=False, progress=False, html_summary=False)
# warm up on a few images so one-time allocations (thread pools, kernels, pyarrow) are not counted
run(sorted(str(p) for p in Path(folder).iterdir())[:40], out + "-warm")
before = kb("VmRSS")
try:
    Path("/proc/self/clear_refs").write_text("5")
except OSError:
    pass
summary = run(folder, out)
print(json.dumps({"before": before, "peak": kb("VmHWM"), "done": summary.done}))
"""


def _folder(root: Path, n: int) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:05d}.png")
    return root


def _peak_mb(folder: Path, out: Path, n: int) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["done"] == n
    return (got["peak"] - got["before"]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_local_engine_memory_is_flat_from_200_to_2000_images(tmp_path: Path):
    small, large = _folder(tmp_path / "small", 200), _folder(tmp_path / "large", 2000)
    a, b = _peak_mb(small, tmp_path / "s200", 200), _peak_mb(large, tmp_path / "s2000", 2000)
    # ten times the images: the extra peak may grow by allocator noise only, not with the number of images (measured
    # once on 2 shared cores: 6.9 MB at 200 images, 9.7 MB at 2,000)
    assert b - a < max(16.0, 0.15 * a), f"extra peak RSS: {a:.1f} MB at 200 images, {b:.1f} MB at 2,000"
