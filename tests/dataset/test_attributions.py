"""``--save-attributions`` of explain-dataset: the saved maps equal direct ``seewhy.explain`` attributions (float32
exactly, float16 within its precision); a run interrupted between an attributions file and its part, resumed,
equals an uninterrupted run (the leftover file is overwritten); the Ray engine saves the same maps as the local one;
the CLI flags."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from dataset_helpers import photo_folder, tiny_model

from seewhy import explain  # noqa: E402
from seewhy.data import as_data  # noqa: E402
from seewhy.dataset import Store, explain_dataset, image_seed, read_attributions, read_results  # noqa: E402
from seewhy.dataset import store as store_module  # noqa: E402

METHODS = ["gradcam", "integrated_gradients"]
PARAMS = {"gradcam": {"layer": "features"}, "integrated_gradients": {"n_steps": 4}}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Eight 32-px crops of a bundled photo and one unreadable file."""
    return photo_folder(tmp_path_factory.mktemp("data"), 8)


def _run(data, out, model, **kw):
    kw = {"method_params": PARAMS, "batch_size": 2, "chunk_size": 2, "estimate": False, "progress": False,
          "html_summary": False, "save_attributions": True, **kw}
    return explain_dataset(data, model, METHODS, [], out=out, **kw)


def _all_maps(out):
    """{(path, method, rank): map} of every result row of the store."""
    t = read_results(out).to_pandas()
    t = t[t.error.isna()]
    return {(p, m, int(r)): read_attributions(out, p, m, int(r)) for p, m, r in zip(t.path, t.method, t["rank"],
                                                                                       strict=True)}


@pytest.fixture(scope="module")
def reference(folder, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    _run(folder, out, model)
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_saved_maps_equal_direct_explain(folder, model, reference, tmp_path, dtype):
    out = reference if dtype == "float16" else tmp_path / "s"
    paths = [str(folder / "1.png"), str(folder / "6.png")]
    if dtype == "float32":  # the two images only (their keys, hence seeds, stay the same: relative to the folder)
        _run(paths, out, model, attributions_dtype="float32", target="top2")
    store = Store(out, [])
    assert [store.attributions_of(p).is_file() for p in store.parts()] == [True] * len(store.parts())
    x, _ = as_data(paths, model).load([0, 1])
    for m in METHODS:
        for j, p in enumerate(paths):
            params = {**PARAMS[m], **({"seed": image_seed(Path(p).name, 0)} if m != "gradcam" else {})}
            exp = explain(model, x[j : j + 1], m, target="top1" if dtype == "float16" else "top2", **params)
            for rank, e in enumerate(exp if isinstance(exp, list) else [exp]):
                want = e.attributions[0].detach().numpy()
                got = read_attributions(out, p, m, rank)
                assert got.dtype == np.dtype(dtype) and got.shape == want.shape
                if dtype == "float32":
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
                else:
                    np.testing.assert_array_equal(got, want.astype(np.float16))
    assert read_attributions(out, folder / "1.png", "gradcam").shape[0] == 1  # a CAM map: (1,h,w)
    if dtype == "float16":
        with pytest.raises(KeyError):
            read_attributions(out, folder / "broken.png", "gradcam")  # error rows have no map


def test_a_resumed_run_equals_an_uninterrupted_one(folder, model, reference, tmp_path, monkeypatch):
    real = store_module.atomic_write

    def crash_on_third_part(path):
        if Path(path).name == "part-00002.parquet":
            raise KeyboardInterrupt  # after part-00002.npz, before its part
        return real(path)

    monkeypatch.setattr(store_module, "atomic_write", crash_on_third_part)
    with pytest.raises(KeyboardInterrupt):
        _run(folder, tmp_path / "s", model)
    monkeypatch.setattr(store_module, "atomic_write", real)
    store = Store(tmp_path / "s", [])
    assert len(store.parts()) == 2 and (store.attributions / "part-00002.npz").is_file()  # a leftover map file
    _run(folder, tmp_path / "s", model, resume=True, batch_size=3, chunk_size=3)
    got, want = _all_maps(tmp_path / "s"), _all_maps(reference)
    assert got.keys() == want.keys() and len(got) == 8 * len(METHODS)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert sorted(p.name for p in store.attributions.iterdir()) == [p.stem + ".npz" for p in store.parts()]


def test_no_maps_by_default(folder, model, tmp_path):
    _run([str(folder / "1.png")], tmp_path / "s", model, save_attributions=False)
    assert not (tmp_path / "s" / "attributions").exists()
    with pytest.raises(KeyError):
        read_attributions(tmp_path / "s", folder / "1.png", "gradcam")
    with pytest.raises(ValueError, match="float16 or float32"):
        _run(folder, tmp_path / "t", model, attributions_dtype="float64")


def test_ray_saves_the_same_maps(folder, model, reference, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Ray Data's own settings
            _run(folder, tmp_path / "s", model, engine="ray", ray_options={"actors": 1}, chunk_size=3)
    finally:
        ray.shutdown()
    got, want = _all_maps(tmp_path / "s"), _all_maps(reference)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    a, b = read_results(tmp_path / "s").drop(["seconds"]), read_results(reference).drop(["seconds"])
    assert a.drop(["score"]).equals(b.drop(["score"]))
