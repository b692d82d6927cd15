"""Image files to model inputs for a run: loading (unreadable files logged and listed), the report rows and
preprocessed inputs for a model spec, batches, and the model's outputs on them (the target checked)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from . import images
from .hooks import model_state
from .report import ImageRow
from .targets import make_target, parse_topk
from .zoo import ModelSpec

log = logging.getLogger("seewhy")

__all__ = ["load_inputs", "predict", "prepare", "stack_batches"]


def load_inputs(paths: Sequence[Any]) -> tuple[list[tuple[str, Image.Image]], list[tuple[str, str]]]:
    """The images that could be read, ``(path, image)``, and ``(path, reason)`` for the others (each logged)."""
    loaded, failures = images.load_images(paths)
    for path, reason in failures:
        log.warning("skipping: %s", reason if path in reason else f"{path}: {reason}")
    return loaded, failures


def prepare(named: Sequence[tuple[str, str, Any]], spec: ModelSpec
            ) -> tuple[list[ImageRow], list[Tensor], list[tuple[str, str]]]:
    """``(name, source, image)`` -> report rows (the crop as the model sees it), model inputs, and the images whose
    preprocessing failed, ``(source, reason)``."""
    rows, inputs, failures = [], [], []
    for name, source, img in named:
        try:
            crop = images.resize_crop(img, spec.resize, spec.crop, spec.interpolation)
            x = spec.preprocess(img)
        except (ValueError, TypeError, OSError) as err:
            log.warning("skipping %s: %s", source, err)
            failures.append((source, f"preprocessing failed: {err}"))
            continue
        rows.append(ImageRow(name=name, image=np.asarray(crop.convert("RGB"), dtype=np.uint8), source=source))
        inputs.append(x)
    return rows, inputs, failures


def stack_batches(inputs: Sequence[Tensor], size: int, device: torch.device) -> list[Tensor]:
    """Stack consecutive inputs of the same shape into batches of at most ``size`` images, on ``device``."""
    out: list[list[Tensor]] = []
    for x in inputs:
        if out and len(out[-1]) < size and out[-1][0].shape == x.shape:
            out[-1].append(x)
        else:
            out.append([x])
    return [torch.stack(b).to(device) for b in out]


def predict(model: nn.Module, batches: Sequence[Tensor], target: str,
            class_names: Sequence[str] | None) -> Tensor | None:
    """The model's outputs (N,K) on the CPU (None if not class scores); checks the target against them.

    Raises:
        ValueError: the target does not fit the outputs (a class index out of range, topK with fewer classes).
    """
    k = parse_topk(target)
    outputs = []
    with model_state(model), torch.no_grad():
        for x in batches:
            out = model(x)
            if k is None:
                make_target(target, x.shape[0], class_names).resolve(out).score(out)  # e.g. index out of range
            elif out.ndim != 2 or out.shape[1] < k:
                raise ValueError(f"--target {target} needs at least {k} class scores per image; the model returns "
                                 f"{tuple(out.shape)}")
            outputs.append(out.detach().cpu())
    return torch.cat(outputs) if all(o.ndim == 2 for o in outputs) else None
