"""What the dataset tests share: the tiny model, a folder of tiny photos (with one unreadable file), a store's rows
as a DataFrame and the comparison of two stores' rows (strings and integers exactly, floats to rtol 1e-5)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from seewhy import images, zoo
from seewhy.dataset import read_results


def tiny_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny_cnn ships no weights
        return zoo.load("tiny_cnn")


def photo_folder(root: Path, counts: dict[str, int] | int, step: tuple[int, int] = (6, 4)) -> Path:
    """32-px crops of a bundled photo: ``counts`` images in ``root`` (an int) or per class folder (a dict; the
    second class's crops flipped), and one unreadable ``broken.png`` (in the last class folder)."""
    photo = images.bundled_image("chelsea").resize((96, 64))
    dx, dy = step
    groups = {"": counts} if isinstance(counts, int) else counts
    last = root
    for i, (name, n) in enumerate(groups.items()):
        folder = root / name if name else root
        folder.mkdir(exist_ok=True)
        for k in range(n):
            im = photo.crop((dx * k, dy * k % 24, dx * k + 48, dy * k % 24 + 40)).resize((32, 32))
            (im.transpose(0) if i == 1 else im).save(folder / f"{k}.png")
        last = folder
    (last / "broken.png").write_bytes(b"this is not a PNG")
    return root


def frame(store):
    return read_results(store).drop(["seconds"]).to_pandas()


def same(a, b, floats) -> None:
    """The two stores' rows are the same: no duplicate (path, method, rank), the same values."""
    assert len(a) == len(b)
    assert not a.duplicated(["path", "method", "rank"]).any()
    exact = [c for c in a.columns if c not in floats]
    assert a[exact].equals(b[exact])
    for c in [c for c in floats if c in a.columns]:
        np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-5, atol=1e-7)
