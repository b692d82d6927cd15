"""The page of :func:`seewhy.report.write_explain_report`: the cards, their grouping and the HTML.

The report is laid out for reading: a header, a contents list, then one section per image (the input as the
model saw it, its top-5 predictions, and one card per method, grouped by method family in a grid that wraps),
then the methods, the tables, the figures, the warnings and the failures. Overlays and inputs are embedded as
JPEG (photos and smooth heatmaps: a tenth of the PNG size); colour scales and figures stay PNG (exact pixels,
text). Everything here takes plain data; :mod:`seewhy.report` gathers it.
"""

from __future__ import annotations

import base64
import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

#: JPEG quality of the embedded overlays and inputs
JPEG_QUALITY = 85
#: displayed width (CSS px) of one map on a card, by the number of class ranks the card shows
MAP_WIDTH = {1: 224, 2: 176, 3: 160}
EMPTY_MAP = "empty map: the heatmap is zero, or nearly, after rectification; it highlights nothing"


@dataclass
class MapView:
    """One overlay on a card: the map of one class rank (rank 0 is the best class)."""

    uri: str
    label: str
    score: float
    prob: float | None
    rank: int = 0
    empty: bool = False
    notes: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Card:
    """One method on one image: its maps (one per class rank), the time per image, the batch's warnings."""

    method: str
    image: str
    maps: list[MapView]
    seconds: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return any(m.empty for m in self.maps)

    @property
    def width(self) -> int:
        return MAP_WIDTH.get(len(self.maps), 128)

    @property
    def anchor(self) -> str:
        """The card's id: ``card-<image key>/<method>`` (the key of its raw arrays, the other way round)."""
        return f"card-{self.image}/" + re.sub(r"\s+", "_", self.method)


@dataclass
class MethodView:
    """A method's row in the methods table."""

    name: str
    family: str
    params: list[tuple[str, str]]
    layer: str | None
    per_image: float
    signed: bool
    steps: dict[str, Any]
    ranks: int = 1
    warnings: list[str] = field(default_factory=list)


def family_of(method: str) -> str:
    """The family of a registered method (``"other"`` for unknown names)."""
    from .core import METHODS

    cls = METHODS.get(method)
    return str(getattr(cls, "family", "other")) if cls is not None else "other"


def group_by_family(cards: Iterable[Card]) -> list[tuple[str, list[Card]]]:
    """Cards grouped by their method's family, the groups in the order of :data:`seewhy.core.FAMILIES` (unknown
    families last, in order of appearance), the cards in their given order within a group."""
    from .core import FAMILIES

    groups: dict[str, list[Card]] = {}
    for card in cards:
        groups.setdefault(family_of(card.method), []).append(card)
    order = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(groups.items(), key=lambda kv: order.get(kv[0], len(order)))


def render_page(
    *,
    images: Sequence[Mapping[str, Any]],
    cards: Mapping[str, Sequence[Card]],
    methods: Sequence[MethodView],
    tables: Sequence[Any],
    figures: Sequence[Any],
    **context: Any,
) -> str:
    """The report's HTML. ``images``: ``{name, key, source, image (uint8), predictions}`` in order; ``cards``: the
    cards of each image key; ``tables``/``figures``: :class:`~seewhy.report.Table` / ``Figure`` records; other
    keywords go to the template as they are."""
    sections = [
        {**{k: v for k, v in im.items() if k != "image"}, "uri": jpeg_uri(im["image"]),
         "groups": group_by_family(cards.get(im["key"], ()))}
        for im in images
    ]
    ids: set[str] = {"contents", "images", "methods", "warnings", "failures"}
    table_views = [{"id": _anchor("table", t.title, ids), "title": t.title, "columns": t.columns, "rows": t.rows,
                    "note": t.note} for t in tables]
    figure_views = [{"id": _anchor("figure", f.title, ids), "title": f.title, "caption": f.caption,
                     "uri": png_uri(f.image)} for f in figures]
    warnings = [
        {"method": m.name, "messages": m.warnings,
         "empty": [c for im in images for c in cards.get(im["key"], ()) if c.method == m.name and c.empty]}
        for m in methods
    ]
    warnings = [w for w in warnings if w["messages"] or w["empty"]]
    env = template_env()
    env.filters["value"] = fmt_value
    env.filters["setting"] = fmt_setting
    env.filters["secs"] = lambda x: f"{x:.3f}" if x < 0.1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"
    return env.get_template("report.html").render(
        images=sections, methods=methods, tables=table_views, figures=figure_views, warnings=warnings,
        legends=legends(any(m.signed for m in methods)), empty_text=EMPTY_MAP, **context,
    )


def template_env() -> Any:
    """The jinja2 environment of seewhy's report templates (autoescaped, strict), with the ``num`` (4
    significant digits, "-" for None, "n/a" for NaN), ``pct`` and ``setting`` (:func:`fmt_setting`) filters."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("seewhy", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_num
    env.filters["pct"] = lambda p: f"{100 * p:.1f}%"
    env.filters["setting"] = fmt_setting
    return env


def legends(signed: bool) -> list[dict[str, str]]:
    """Colour scales: unsigned (0 -> 1) and, if ``signed``, signed (-max -> 0 -> +max); PNG (exact colours)."""
    from . import viz

    ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (12, 1))
    out = [{"title": "attribution", "low": "low", "high": "high", "uri": png_uri(viz.heat_to_image(ramp))}]
    if signed:
        out.append({"title": "signed attribution", "low": "negative", "high": "positive",
                    "uri": png_uri(viz.heat_to_image(ramp, signed=True))})
    return out


def jpeg_uri(image: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """A uint8 RGB image as an inline JPEG, ``"data:image/jpeg;base64,..."`` (for photos and overlays).

    Without chroma subsampling (4:4:4): halving the colour resolution washes out the colours of speckled maps
    (saliency, guided backprop), and in a heatmap the colour is the information."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).convert("RGB").save(buf, format="JPEG", quality=quality,
                                                                      subsampling=0, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_uri(image: np.ndarray) -> str:
    """An image as an inline PNG (for colour scales, plots and grids with text)."""
    from . import viz

    return viz.data_uri(np.ascontiguousarray(image))


def notes(extras: Mapping[str, float], score: float) -> list[tuple[str, str]]:
    """Per-image extras as caption lines; the IG completeness gap also relative to f(x) - f(baseline)."""
    out = []
    for key, value in extras.items():
        text = fmt_num(value)
        if key == "completeness_gap" and "baseline_scores" in extras:
            delta = score - extras["baseline_scores"]
            if abs(delta) > 1e-12:
                text += f" ({100 * abs(value) / abs(delta):.1f}% of f(x) - f(x'))"
        label = {"baseline_scores": "baseline score"}.get(key, key.replace("_", " "))
        out.append((label, text))
    return out


def short_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(k, fmt_value(v)) for k, v in params.items()]


def fmt_value(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"tensor{tuple(v.shape)}"
    if isinstance(v, float):
        return f"{v:g}"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def fmt_setting(v: Any) -> str:
    """A header value: text as is, mappings as ``k=v, ...``, sequences comma-separated."""
    if isinstance(v, str):
        return v
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={fmt_setting(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(fmt_setting(x) for x in v) + ")"
    return fmt_value(v)


def fmt_num(x: float | None) -> str:
    return "-" if x is None else "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.4g}"


def _anchor(prefix: str, title: str, taken: set[str]) -> str:
    """A unique, URL-safe id such as ``table-leaderboard`` (``-2``, ``-3`` ... on repeats)."""
    base = f"{prefix}-" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "untitled")
    key, i = base, 1
    while key in taken:
        i += 1
        key = f"{base}-{i}"
    taken.add(key)
    return key


# -- shared by every report (explain, evaluate, ProtoPNet, inside) -------------------------------------


def enlarge(img: np.ndarray, min_side: int) -> tuple[np.ndarray, int]:
    """Nearest-neighbour upscaling by the integer factor that brings the shorter side to at least ``min_side``:
    ``(image, factor)``."""
    f = max(1, -(-min_side // max(1, min(img.shape[:2]))))
    return (np.repeat(np.repeat(img, f, 0), f, 1) if f > 1 else img), f


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """A CSV file (``\n`` line ends, UTF-8) with ``header`` and ``rows``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def plural(n: int, word: str) -> str:
    """``1 image``, ``3 images``."""
    return f"{n} {word}" + ("" if n == 1 else "s")
