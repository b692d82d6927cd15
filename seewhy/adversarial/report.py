"""The report of ``seewhy attack``: one self-contained ``index.html`` (images embedded, CSS inline), ``manifest.json``
with every number shown, the adversarial images as PNG files and the exact float images in ``adversarial.npz``.

Per image: the original, the adversarial image, the perturbation magnified, the predictions before and after, the
perturbation's L-inf / L2 norms and PSNR, and each method's explanation before and after side by side with their
Spearman rank correlation and top-10% overlap; optionally the robustness curve. Written atomically, ``index.html``
last (:func:`seewhy.report_files.write_page_report`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .. import viz
from ..images import image_name
from ..progress import format_seconds
from ..report_files import write_page_report
from ..report_layout import jpeg_uri, plural, png_uri

__all__ = ["magnified", "write_attack"]

#: size (inches) of the robustness curve
CURVE_SIZE = (5.2, 3.2)


def _picture(x: Tensor) -> np.ndarray:
    """(3,H,W) in [0, 1] -> uint8 (H,W,3)."""
    return viz.tensor_to_image(x.detach().float().cpu(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def magnified(perturbation: Tensor, eps: float, norm: str) -> tuple[np.ndarray, float]:
    """The perturbation (3,H,W) as a picture ``0.5 + delta / (2 r)`` (mid-grey is zero) with ``r = eps`` for L-inf
    (so +-eps spans black to white), else the largest |delta|; returns (uint8 (H,W,3), r)."""
    d = perturbation.detach().double().cpu()
    r = float(eps) if norm == "linf" and eps > 0 else float(d.abs().max())
    r = r if r > 0 else 1.0
    return _picture((0.5 + d / (2 * r)).clamp(0, 1)), r


def _label(k: int, names: Sequence[str] | None) -> str:
    return f"{k} {names[k]}" if names and 0 <= k < len(names) else str(k)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def write_attack(out_dir: str | os.PathLike, header: Mapping[str, Any], sources: Sequence[str],
                 batches: Sequence[Tensor], results: Sequence[Any], explanations: Mapping[str, Sequence[Any]], *,
                 curve: Any = None, class_names: Sequence[str] | None = None,
                 failures: Sequence[tuple[str, str]] = (), overwrite: bool = False) -> Path:
    """The report of an attack on ``batches`` (images in [0, 1]) with one :class:`~seewhy.adversarial.Attack` per
    batch; ``explanations[method]`` one dict per batch (``before``/``after`` heatmaps and overlays, ``spearman``,
    ``top_overlap``, from :mod:`seewhy.adversarial.cli`); ``curve`` a :class:`~seewhy.adversarial.RobustnessCurve`.
    Returns the path of ``index.html``."""
    files: dict[str, bytes] = {}
    rows, records = [], []
    arrays: dict[str, list[np.ndarray]] = {"original": [], "adversarial": [], "perturbation": []}
    i = 0
    taken: set[str] = set()
    for j, (x, r) in enumerate(zip(batches, results, strict=True)):
        linf, l2, psnr = r.linf.cpu().tolist(), r.l2.cpu().tolist(), r.psnr.cpu().tolist()
        for b in range(x.shape[0]):
            source = sources[i]
            name = image_name(source)
            stem = f"{i + 1:02d}_{Path(name).stem}"
            while stem in taken:
                stem += "_"
            taken.add(stem)
            adv_pic = _picture(r.adversarial[b])
            pert_pic, scale = magnified(r.perturbation[b], r.eps, r.norm)
            files[f"{stem}_adversarial.png"] = viz.png_bytes(adv_pic)
            for key, t in (("original", x[b]), ("adversarial", r.adversarial[b]), ("perturbation", r.perturbation[b])):
                arrays[key].append(t.detach().float().cpu().numpy())
            before, after = int(r.before[b]), int(r.after[b])
            rec = {"image": source, "name": name, "file": f"{stem}_adversarial.png", "label": int(r.labels[b]),
                   "before": before, "before_label": _label(before, class_names),
                   "before_prob": float(r.before_prob[b]), "after": after,
                   "after_label": _label(after, class_names), "after_prob": float(r.after_prob[b]),
                   "success": bool(r.success[b]), "linf": linf[b], "linf_255": linf[b] * 255, "l2": l2[b],
                   "psnr": _finite(psnr[b]), "target": None, "target_label": None, "target_prob_before": None,
                   "target_prob_after": None, "final_loss": float(r.losses[-1]) if r.losses.numel() else None,
                   "methods": {}}
            if r.target is not None:
                t = int(r.target[b])
                rec.update(target=t, target_label=_label(t, class_names),
                           target_prob_before=float(r.target_prob_before[b]),
                           target_prob_after=float(r.target_prob_after[b]))
            shown = []
            for method, per_batch in explanations.items():
                e = per_batch[j]
                rho, top = float(e["spearman"][b]), float(e["top_overlap"][b])
                rec["methods"][method] = {"spearman": rho, "top_overlap": top}
                shown.append({"method": method, "before": jpeg_uri(e["before"]["overlay"][b]),
                              "after": jpeg_uri(e["after"]["overlay"][b]), "spearman": rho, "top_overlap": top})
            records.append(rec)
            rows.append({**rec, "id": f"image-{i + 1}", "original_uri": png_uri(_picture(x[b])),
                         "adversarial_uri": png_uri(adv_pic), "perturbation_uri": png_uri(pert_pic),
                         "scale": scale, "explanations": shown})
            i += 1
    buf = io.BytesIO()
    np.savez_compressed(buf, names=np.array([str(s) for s in sources[:i]]),
                        **{k: np.stack(v) if len({a.shape for a in v}) == 1 else np.array(v, dtype=object)
                           for k, v in arrays.items()})
    files["adversarial.npz"] = buf.getvalue()

    first = results[0]
    n = len(records)
    succeeded = sum(rec["success"] for rec in records)
    targeted = first.target is not None
    curve_view, curve_record = _curve(curve, first.norm) if curve is not None else (None, None)
    methods = list(explanations)
    mean_sim = {m: {"spearman": float(np.mean([rec["methods"][m]["spearman"] for rec in records])),
                    "top_overlap": float(np.mean([rec["methods"][m]["top_overlap"] for rec in records]))}
                for m in methods}
    seconds = sum(float(r.seconds) for r in results)
    eps = float(first.eps)
    budget = f"eps {eps * 255:.3g}/255" if first.norm == "linf" else f"eps {eps:.3g} (L2)"
    summary = [plural(n, "image"), f"{first.params['attack']}", budget,
               f"{succeeded}/{n} {'reach the target' if targeted else 'predictions changed'}",
               f"attack {format_seconds(seconds)}", *([f"{len(failures)} failure(s)"] if failures else [])]
    record = {"attack": {k: v for k, v in first.params.items() if k not in ("target",)}, "targeted": targeted,
              "success_rate": succeeded / n if n else None, "seconds": seconds, "images": records,
              "similarity_mean": mean_sim, "losses": [r.losses.tolist() for r in results],
              "robustness_curve": curve_record, "files": sorted(files)}
    page = {"rows": rows, "methods": methods, "targeted": targeted, "norm": first.norm, "eps": eps,
            "eps_255": eps * 255, "curve": curve_view, "mean_sim": mean_sim, "top_share": 0.1}
    estimate = header.get("estimate") or {}
    cost = f"about {format_seconds(estimate['seconds'])} for the attack" if estimate.get("seconds") else ""
    settings = {k: v for k, v in header["settings"].items()
                if v is not None and v is not False and v != [] and v != {} and k != "method_params"}
    return write_page_report(out_dir, "attack.html", "seewhy attack", header, summary, record, page, cost=cost,
                             settings=settings, failures=list(failures), overwrite=overwrite, files=files)


def _curve(curve: Any, norm: str) -> tuple[dict[str, Any], dict[str, Any]]:
    eps = curve.eps.double().cpu().numpy()
    acc = curve.accuracy.double().cpu().numpy()
    succ = curve.success_rate.double().cpu().numpy()
    targeted = bool(curve.params.get("targeted"))
    x = eps * 255 if norm == "linf" else eps
    series = {"predictions kept": acc}
    if targeted:
        series["target reached"] = succ
    plot = viz.line_plot(x, series, xlabel="eps (x 1/255)" if norm == "linf" else "eps (L2)",
                         ylabel="share of images", size=CURVE_SIZE)
    points = [{"eps": float(e), "eps_255": float(e * 255), "accuracy": float(a), "success": float(s)}
              for e, a, s in zip(eps, acc, succ, strict=True)]
    view = {"uri": png_uri(plot), "points": points, "targeted": targeted}
    record = {"attack": curve.attack, "params": curve.params, "points": points,
              "correct": curve.correct.int().tolist(), "success": curve.success.int().tolist()}
    return view, record
