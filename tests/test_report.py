"""seewhy.report: a self-contained HTML report, manifest.json and attributions.npz, written atomically."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import seewhy
from seewhy import report, zoo
from seewhy.report import ImageRow, MethodRun, Table

N_IMAGES = 3
METHODS = ("saliency", "integrated_gradients")


class _Collector(HTMLParser):
    """Every tag with its attributes, the text of the page, and the cards in page order with the image section
    and the family group each one is in."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.cards: list[tuple[str | None, str | None, str | None]] = []  # (section image, family, method)
        self._section: str | None = None
        self._family: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section" and "data-image" in a:
            self._section, self._family = a["data-image"], None
        if "data-family" in a:
            self._family = a["data-family"]
        if "cell" in (a.get("class") or "").split():
            self.cards.append((self._section, self._family, a.get("data-method")))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path | str) -> _Collector:
    """The page at ``path``, or the HTML text given."""
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8") if isinstance(path, Path) else path)
    parser.close()
    return parser


def _cells(page: _Collector) -> list[dict[str, str | None]]:
    return [a for t, a in page.tags if t == "div" and "cell" in (a.get("class") or "").split()]


def _ids(page: _Collector) -> set[str]:
    return {a["id"] for _, a in page.tags if a.get("id")}


@pytest.fixture(scope="module")
def run_data() -> dict:
    """Three 32x32 images explained by two methods on tiny_cnn, in two batches (2 + 1 images)."""
    spec = zoo.get_spec("tiny_cnn")
    model = spec.build(False).eval()
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(N_IMAGES)]
    x = torch.stack([spec.preprocess(p) for p in pictures])
    with torch.no_grad():
        logits = model(x)
    runs = []
    for m in METHODS:
        params = {"n_steps": 4} if m == "integrated_gradients" else {}
        exps = [seewhy.explain(model, x[:2], m, **params), seewhy.explain(model, x[2:], m, **params)]
        runs.append(MethodRun(m, exps, [0.25, 0.125]))
    rows = [ImageRow(f"img{i}", p, source=f"/data/img{i}.png", output=logits[i]) for i, p in enumerate(pictures)]
    return {"rows": rows, "runs": runs, "failures": [("/data/broken.png", "cannot load image: truncated")]}


def _write(out: Path, data: dict, **kw) -> Path:
    return report.write_explain_report(
        out, data["rows"], data["runs"], model={"name": "tiny_cnn", "description": "a tiny net"},
        target="top1", failures=data["failures"], settings={"device": "cpu"}, command=["seewhy", "explain"],
        preprocessing={"resize": 32, "crop": 32}, **kw,
    )


@pytest.fixture(scope="module")
def written(run_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    index = _write(out, run_data, tables=[Table("Faithfulness", ["method", "deletion AUC"], [["saliency", 0.25]])])
    assert index == out / "index.html"
    return out


def test_files_written_and_no_temp_files_left(written: Path) -> None:
    assert sorted(p.name for p in written.iterdir()) == sorted(report.FILES)


def test_html_parses_and_is_self_contained(written: Path) -> None:
    page = _parse(written / "index.html")
    urls = [(t, k, v) for t, a in page.tags for k, v in a.items() if k in ("src", "href") and v is not None]
    assert urls, "the report embeds its images"
    for tag, key, value in urls:
        assert value.startswith(("data:image/png;base64,", "data:image/jpeg;base64,", "#")), \
            f"external {key}= in <{tag}>: {value[:60]}"
    assert not [t for t, a in page.tags if t in ("script", "link")]
    ids = _ids(page)
    for tag, key, value in urls:  # every link inside the page leads somewhere
        assert not value.startswith("#") or value[1:] in ids, f"dangling {key}={value} in <{tag}>"
    imgs = {a["alt"]: a["src"] for t, a in page.tags if t == "img"}
    overlays = [v for k, v in imgs.items() if "heatmap for" in k]
    assert len(overlays) == N_IMAGES * len(METHODS) and all(v.startswith("data:image/jpeg") for v in overlays)
    assert imgs["input img0"].startswith("data:image/jpeg")
    assert imgs["attribution colour scale"].startswith("data:image/png")  # exact colours
    text = " ".join(page.text)
    for word in ("tiny_cnn", seewhy.__version__, torch.__version__, "top1", "img0", *METHODS):
        assert word in text


def test_one_cell_per_image_and_method(written: Path) -> None:
    cells = _cells(_parse(written / "index.html"))
    assert len(cells) == N_IMAGES * len(METHODS)
    pairs = {(c["data-image"], c["data-method"]) for c in cells}
    assert pairs == {(f"img{i}", m) for i in range(N_IMAGES) for m in METHODS}


def test_html_shows_predictions_gap_timing_failures_and_tables(written: Path) -> None:
    html = (written / "index.html").read_text(encoding="utf-8")
    text = " ".join(_parse(written / "index.html").text)
    assert "top-5 predictions" in text and text.count("class ") >= 5 * N_IMAGES
    assert text.count("completeness gap") == N_IMAGES
    assert "0.12 s / image" in text  # (0.25 + 0.125) s over 3 images
    assert "n_steps=4" in text
    assert 'id="failures"' in html and "/data/broken.png" in text and "truncated" in text
    assert "Faithfulness" in text and "deletion AUC" in text


def test_manifest(written: Path, run_data: dict) -> None:
    m = json.loads((written / "manifest.json").read_text())
    assert m["model"] == {"name": "tiny_cnn", "description": "a tiny net"}
    assert m["target"] == "top1" and m["command"] == ["seewhy", "explain"]
    assert m["preprocessing"] == {"resize": 32, "crop": 32} and m["settings"] == {"device": "cpu"}
    assert set(m["versions"]) >= {"seewhy", "torch", "numpy", "python"}
    assert m["versions"]["seewhy"] == seewhy.__version__
    assert [im["name"] for im in m["images"]] == ["img0", "img1", "img2"]
    assert [im["key"] for im in m["images"]] == ["img0", "img1", "img2"]
    assert m["images"][0]["size"] == [32, 32] and len(m["images"][0]["top5"]) == 5
    assert abs(sum(p["prob"] for p in m["images"][0]["top5"])) <= 1.0 + 1e-9
    assert m["failures"] == [{"path": "/data/broken.png", "reason": "cannot load image: truncated"}]
    methods = {x["name"]: x for x in m["methods"]}
    assert list(methods) == list(METHODS)
    ig = methods["integrated_gradients"]
    assert ig["params"]["n_steps"] == 4 and ig["params"]["baseline"] == "zeros"
    assert ig["heatmap_steps"]["size"] == [32, 32] and "reduce" in ig["heatmap_steps"]
    assert ig["seconds"] == pytest.approx(0.375) and ig["seconds_per_image"] == pytest.approx(0.125)
    assert [b["images"] for b in ig["batches"]] == [["img0", "img1"], ["img2"]]
    exp = run_data["runs"][1].explanations[1]
    assert ig["per_image"]["img2"]["completeness_gap"] == pytest.approx(float(exp.extras["completeness_gap"][0]))
    assert ig["per_image"]["img2"]["target"] == int(exp.targets[0])
    assert m["tables"][0]["rows"] == [["saliency", 0.25]]
    assert m["attributions"]["file"] == "attributions.npz"


def test_attributions_round_trip_exactly(written: Path, run_data: dict) -> None:
    with np.load(written / "attributions.npz") as npz:
        assert sorted(npz.files) == sorted(f"{m}/img{i}" for m in METHODS for i in range(N_IMAGES))
        for run in run_data["runs"]:
            attr = torch.cat([e.attributions for e in run.explanations])
            for i in range(N_IMAGES):
                stored = torch.from_numpy(npz[f"{run.name}/img{i}"])
                assert stored.dtype == attr.dtype and torch.equal(stored, attr[i])


def test_existing_folder_refused_without_overwrite(written: Path, run_data: dict) -> None:
    before = (written / "index.html").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite"):
        _write(written, run_data)
    assert (written / "index.html").stat().st_mtime_ns == before
    _write(written, run_data, overwrite=True)
    assert sorted(p.name for p in written.iterdir()) == sorted(report.FILES)


def test_empty_existing_folder_is_fine(tmp_path: Path, run_data: dict) -> None:
    _write(tmp_path, run_data)
    assert (tmp_path / "index.html").is_file()


def test_interrupted_write_leaves_no_complete_looking_report(tmp_path: Path, run_data: dict,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, run_data)

    def boom(*args: object, **kw: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(report.np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, run_data, overwrite=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "index.html" not in names
    assert not [n for n in names if n.endswith(".tmp")]


def test_duplicate_names_get_unique_keys_and_failed_methods_are_listed(tmp_path: Path, run_data: dict) -> None:
    rows = [dataclasses.replace(r, name="cat") for r in run_data["rows"]]
    runs = [*run_data["runs"], MethodRun("gradcam", error="ValueError: no spatial layer")]
    report.write_explain_report(tmp_path, rows, runs, model={"name": "tiny_cnn"})
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [im["key"] for im in m["images"]] == ["cat", "cat-2", "cat-3"]
    assert m["methods"][-1] == {"name": "gradcam", "error": "ValueError: no spatial layer"}
    page = _parse(tmp_path / "index.html")
    assert len(_cells(page)) == N_IMAGES * len(METHODS)
    assert "no spatial layer" in " ".join(page.text)
    with np.load(tmp_path / "attributions.npz") as npz:
        assert "saliency/cat-3" in npz.files


def test_signed_heatmaps_get_a_signed_legend(tmp_path: Path, run_data: dict) -> None:
    run = run_data["runs"][1]
    signed = [dataclasses.replace(e, heatmap_convention={**e.heatmap_convention, "sign": "all"})
              for e in run.explanations]
    report.write_explain_report(tmp_path, run_data["rows"], [MethodRun(run.name, signed, run.seconds)],
                                model={"name": "tiny_cnn"})
    assert "signed attribution" in (tmp_path / "index.html").read_text(encoding="utf-8")
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["methods"][0]["heatmap_steps"]["sign"] == "all"


def test_mismatched_inputs_are_rejected(tmp_path: Path, run_data: dict) -> None:
    with pytest.raises(ValueError, match="explains 3 images, the report has 2"):
        report.write_explain_report(tmp_path, run_data["rows"][:2], run_data["runs"], model={"name": "m"})
    bad = dataclasses.replace(run_data["rows"][0], image=np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        report.write_explain_report(tmp_path, [bad, *run_data["rows"][1:]], run_data["runs"], model={"name": "m"})
    assert not any(tmp_path.iterdir())


def test_top_predictions() -> None:
    preds = report.top_predictions(torch.tensor([0.0, 3.0, 1.0]), ["a", "b", "c"], k=2)
    assert [(i, label) for i, label, _ in preds] == [(1, "b"), (2, "c")]
    assert preds[0][2] == pytest.approx(float(torch.softmax(torch.tensor([0.0, 3.0, 1.0]), 0)[1]))
    assert report.top_predictions(np.array([1.0, 2.0]))[0][1] == "class 1"


def test_single_image_with_class_names(tmp_path: Path, run_data: dict) -> None:
    runs = [MethodRun(r.name, r.explanations[1:], r.seconds[1:]) for r in run_data["runs"]]
    names = [f"label{k}" for k in range(10)]
    report.write_explain_report(tmp_path, run_data["rows"][2:], runs, model={"name": "tiny_cnn"},
                                class_names=names)
    page = _parse(tmp_path / "index.html")
    text = " ".join(page.text)
    assert "1 image × 2 methods" in text and "Failures" not in text
    target = int(runs[0].explanations[0].targets[0])
    assert f"label{target} ({target})" in text
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["images"][0]["top5"][0]["label"].startswith("label")


def test_lrp_runs_get_their_relevance_ledger_as_a_table(tmp_path: Path) -> None:
    spec = zoo.get_spec("tiny_cnn")
    model = spec.build(False).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    exps = [seewhy.explain(model, x[:2], "lrp"), seewhy.explain(model, x[2:], "lrp")]
    rows = [ImageRow(f"img{i}", (x[i].permute(1, 2, 0) * 255).to(torch.uint8).numpy()) for i in range(3)]
    report.write_explain_report(tmp_path, rows, [MethodRun("lrp", exps, [0.1, 0.1])], model={"name": "tiny_cnn"})
    m = json.loads((tmp_path / "manifest.json").read_text())
    (table,) = [t for t in m["tables"] if t["title"] == "Relevance ledger: lrp"]
    assert table["columns"][:3] == ["layer", "img0: relevance", "img0: / output"] and len(table["columns"]) == 7
    book = exps[1].extras["relevance_ledger"]
    assert [r[0] for r in table["rows"]] == list(book)  # output to input, every layer
    assert table["rows"][0][2] == pytest.approx(1.0)  # the output relevance is the reference
    assert table["rows"][-1][5] == pytest.approx(float(book["input"][0]))  # img2 comes from the second batch
    assert "Relevance ledger: lrp" in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_a_failed_write_leaves_no_partial_report(tmp_path: Path, run_data: dict,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.np, "savez", disk_full)
    out = tmp_path / "new"
    with pytest.raises(OSError, match="No space"):
        _write(out, run_data, files={"results.csv": b"a,b\n"})
    assert not out.exists()  # the extra file written before the failure is gone, and the folder this call made



# -- layout: sections, contents, families ------------------------------------------------------------------


def test_one_section_per_image_and_a_contents_list(tmp_path: Path, run_data: dict) -> None:
    written = tmp_path
    _write(written, run_data, tables=[Table("Faithfulness", ["method", "deletion AUC"], [["saliency", 0.25]])])
    page = _parse(written / "index.html")
    sections = [a for t, a in page.tags if t == "section" and "data-image" in a]
    assert [(a["id"], a["data-image"]) for a in sections] == [(f"image-img{i}", f"img{i}") for i in range(N_IMAGES)]
    assert page.cards == [(f"img{i}", "gradient", m) for i in range(N_IMAGES) for m in METHODS]
    assert all(c["data-image"] == image for c, (image, _, _) in zip(_cells(page), page.cards, strict=True))
    html = (written / "index.html").read_text(encoding="utf-8")
    contents = _parse(html[html.index('<nav class="toc" id="contents">'):html.index("</nav>")])
    links = [a["href"] for t, a in contents.tags if t == "a"]
    assert links == ["#images", *(f"#image-img{i}" for i in range(N_IMAGES)), "#methods", "#table-faithfulness",
                     "#failures"]
    assert {link[1:] for link in links} <= _ids(page)
    assert "Warnings" not in " ".join(page.text) and 'id="warnings"' not in html  # nothing to warn about


def test_cards_are_grouped_by_family_in_families_order(tmp_path: Path, run_data: dict) -> None:
    from seewhy.core import FAMILIES

    spec = zoo.get_spec("tiny_cnn")
    model = spec.build(False).eval()
    x = torch.stack([spec.preprocess(r.image) for r in run_data["rows"]])
    saliency = run_data["runs"][0]
    mystery = MethodRun("mystery", [dataclasses.replace(e, method="mystery") for e in saliency.explanations])
    runs = [mystery, MethodRun("random_attribution", [seewhy.explain(model, x, "random_attribution")]),
            MethodRun("gradcam", [seewhy.explain(model, x, "gradcam")]), saliency,
            MethodRun("occlusion", [seewhy.explain(model, x, "occlusion", window=8, stride=8)])]
    report.write_explain_report(tmp_path, run_data["rows"], runs, model={"name": "tiny_cnn"})
    page = _parse(tmp_path / "index.html")
    expected = [("gradient", "saliency"), ("cam", "gradcam"), ("perturbation", "occlusion"),
                ("control", "random_attribution"), ("other", "mystery")]
    assert [f for f, _ in expected] == sorted({f for f, _ in expected}, key=FAMILIES.index)
    assert page.cards == [(f"img{i}", f, m) for i in range(N_IMAGES) for f, m in expected]
    headings = [a["data-family"] for t, a in page.tags if "data-family" in a]
    assert headings == [f for f, _ in expected] * N_IMAGES
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [x["name"] for x in m["methods"]] == [r.name for r in runs]  # the manifest keeps the given order


def test_attributions_are_optional(tmp_path: Path, run_data: dict) -> None:
    _write(tmp_path, run_data)
    assert (tmp_path / "attributions.npz").is_file()
    _write(tmp_path, run_data, overwrite=True, save_attributions=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "manifest.json"]  # the old file is gone too
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["attributions"] is None
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "attributions.npz" not in html and "--save-attributions" in html
    assert "were not saved" in " ".join(_parse(tmp_path / "index.html").text)
    assert len(_cells(_parse(tmp_path / "index.html"))) == N_IMAGES * len(METHODS)


# -- top-k targets -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topk_data(run_data: dict) -> dict:
    """saliency explaining each image's 3 best classes (batches of 2 + 1), and integrated_gradients for top1."""
    spec = zoo.get_spec("tiny_cnn")
    model = spec.build(False).eval()
    x = torch.stack([spec.preprocess(r.image) for r in run_data["rows"]])
    top = torch.stack([r.output for r in run_data["rows"]]).topk(3, dim=1).indices  # the classes the rows rank best
    batches = [[seewhy.explain(model, x[sl], "saliency", target=top[sl, r].tolist()) for r in range(3)]
               for sl in (slice(0, 2), slice(2, 3))]
    return {"rows": run_data["rows"], "top": top, "batches": batches,
            "runs": [MethodRun("saliency", batches, [0.3, 0.15]), run_data["runs"][1]], "failures": []}


def test_topk_cards_show_one_map_per_class(tmp_path: Path, topk_data: dict) -> None:
    _write(tmp_path, topk_data)
    page = _parse(tmp_path / "index.html")
    cells = {(c["data-image"], c["data-method"]): c for c in _cells(page)}
    assert len(cells) == N_IMAGES * 2
    assert {c["data-ranks"] for (_, m), c in cells.items() if m == "saliency"} == {"3"}
    assert {c["data-ranks"] for (_, m), c in cells.items() if m == "integrated_gradients"} == {"1"}
    ranks = [a["data-rank"] for t, a in page.tags if t == "figure" and "data-rank" in a]
    assert ranks == (["0", "1", "2", "0"]) * N_IMAGES
    alts = [a["alt"] for t, a in page.tags if t == "img" and a.get("alt", "").startswith("saliency heatmap for img0")]
    top = topk_data["top"]
    assert alts == [f"saliency heatmap for img0, class {int(top[0, r])}" for r in range(3)]
    text = " ".join(page.text)
    assert "#1" in text and "#3" in text and "3 classes per image" in text


def test_topk_manifest_and_attributions(tmp_path: Path, topk_data: dict) -> None:
    _write(tmp_path, topk_data)
    m = json.loads((tmp_path / "manifest.json").read_text())
    sal, ig = m["methods"]
    assert sal["ranks"] == 3 and "ranks" not in ig
    top = topk_data["top"]
    for i in range(N_IMAGES):
        records = sal["per_image"][f"img{i}"]
        assert [r["rank"] for r in records] == [0, 1, 2]
        assert [r["target"] for r in records] == top[i].tolist()
        assert records[0]["prob"] >= records[1]["prob"] >= records[2]["prob"]
        assert isinstance(ig["per_image"][f"img{i}"], dict)  # one target: the format of before
    assert [b["images"] for b in sal["batches"]] == [["img0", "img1"], ["img2"]]
    assert "/<rank>" in m["attributions"]["key"]
    with np.load(tmp_path / "attributions.npz") as npz:
        assert sorted(k for k in npz.files if k.startswith("saliency/")) == sorted(
            f"saliency/img{i}/{r}" for i in range(N_IMAGES) for r in range(3))
        assert "integrated_gradients/img0" in npz.files
        second = topk_data["batches"][1][2]  # img2 is the first image of the second batch
        assert np.array_equal(npz["saliency/img2/2"], second.attributions[0].numpy())


def test_topk_ranks_must_cover_the_same_images(tmp_path: Path, topk_data: dict) -> None:
    (b0, b1) = topk_data["batches"]
    rows = topk_data["rows"]
    one = dataclasses.replace(b0[1], attributions=b0[1].attributions[:1], scores=b0[1].scores[:1])
    with pytest.raises(ValueError, match="class rank 1 explains 1 images, rank 0 explains 2"):
        report.write_explain_report(tmp_path, rows, [MethodRun("saliency", [[b0[0], one], b1[:2]])],
                                    model={"name": "m"})
    other = dataclasses.replace(b0[1], inputs=b0[1].inputs.flip(0))
    with pytest.raises(ValueError, match="other inputs than rank 0"):
        report.write_explain_report(tmp_path, rows, [MethodRun("saliency", [[b0[0], other], b1[:2]])],
                                    model={"name": "m"})
    with pytest.raises(ValueError, match=r"\[2, 3\] class ranks"):
        report.write_explain_report(tmp_path, rows, [MethodRun("saliency", [b0[:2], b1])], model={"name": "m"})
    with pytest.raises(TypeError, match="Explanation or a non-empty sequence"):
        report.write_explain_report(tmp_path, rows, [MethodRun("saliency", [[], b1])], model={"name": "m"})
    assert not any(tmp_path.iterdir())


# -- empty maps and warnings ---------------------------------------------------------------------------------


def _warned(run_data: dict) -> list[MethodRun]:
    """saliency with image 1 flagged empty (batch 0) and a warning on batch 0; integrated_gradients as is."""
    sal, ig = run_data["runs"]
    e0, e1 = sal.explanations
    msg = "saliency: 1 of 2 heatmaps is empty after rectification"
    e0 = dataclasses.replace(e0, extras={**e0.extras, "empty_heatmap": torch.tensor([False, True]), "warnings": [msg]})
    e1 = dataclasses.replace(e1, extras={**e1.extras, "empty_heatmap": torch.tensor([False])})
    return [MethodRun("saliency", [e0, e1], sal.seconds), ig]


def test_empty_maps_are_flagged_on_their_cards_and_in_a_warnings_section(tmp_path: Path, run_data: dict) -> None:
    _write(tmp_path, {**run_data, "runs": _warned(run_data)})
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    page = _parse(html)
    flagged = [(c["data-image"], c["data-method"]) for c in _cells(page) if "empty" in c["class"].split()]
    assert flagged == [("img1", "saliency")]
    badges = [a for t, a in page.tags if "badge" in (a.get("class") or "").split()]
    assert len(badges) == 1
    card = html[html.index('id="card-img1/saliency"'):]
    card = card[:card.index('<div class="cell', 10)]
    assert "empty map" in card and "1 of 2 heatmaps is empty" in card
    assert "1 of 2 heatmaps is empty" not in html[html.index('id="card-img0/saliency"'):html.index('id="card-img1')]
    section = html[html.index('<h2 id="warnings">'):]
    assert 'href="#card-img1/saliency"' in section and "1 of 2 heatmaps is empty" in section
    assert 'href="#warnings"' in html[html.index('id="contents"'):html.index("</nav>")]
    assert '<span class="num">empty heatmap' not in html and '<span class="num">warnings' not in html  # no numbers
    m = json.loads((tmp_path / "manifest.json").read_text())
    sal = m["methods"][0]
    assert sal["warnings"] == ["saliency: 1 of 2 heatmaps is empty after rectification"]
    assert sal["empty_heatmaps"] == ["img1"]
    assert [sal["per_image"][f"img{i}"]["empty_heatmap"] for i in range(N_IMAGES)] == [False, True, False]
    assert all("extras" not in b or not {"warnings", "empty_heatmap"} & set(b["extras"]) for b in sal["batches"])
    assert m["warnings"] == [{"method": "saliency", "message": sal["warnings"][0]}]
    assert "empty_heatmap" not in m["methods"][1]["per_image"]["img0"] and m["methods"][1].get("warnings") is None


def test_bad_empty_flags_are_rejected(tmp_path: Path, run_data: dict) -> None:
    sal = run_data["runs"][0]
    e0 = dataclasses.replace(sal.explanations[0], extras={"empty_heatmap": torch.tensor([True])})
    with pytest.raises(ValueError, match=r"empty_heatmap.*shape \(2,\)"):
        report.write_explain_report(tmp_path, run_data["rows"], [MethodRun("saliency", [e0, sal.explanations[1]])],
                                    model={"name": "m"})
    assert not any(tmp_path.iterdir())
