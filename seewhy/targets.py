"""Targets: what score of the model an explanation explains.

A target spec is turned into a :class:`Target` that maps the model's output to one score per sample:

- ``None`` or ``"top1"``: the predicted class of each sample (resolved from the output on the inputs);
- an ``int``: the same class for every sample;
- a list / 1-D tensor of ints: one class per sample;
- a class-name string, when the model carries ``class_names`` (a list of strings);
- a callable ``f(output) -> (B,)``: any scalar per sample (segmentation masks, regression, similarity);
  it must work row by row, since methods evaluate it on sub-batches and expanded batches;
- a list of callables, one per sample, each ``f(output_row) -> scalar``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

TargetSpec = None | int | str | Sequence[int] | Tensor | Callable[[Tensor], Tensor] | Sequence[Callable]


@dataclass(frozen=True)
class Target:
    """A resolved or pending target for a batch of ``n`` samples.

    ``indices`` holds one class index per sample (``None`` for callables). ``rows`` maps the rows of a
    batch the target is applied to back to the original samples (``None``: row i is sample i).
    """

    n: int
    indices: Tensor | None = None
    fn: Callable[[Tensor], Tensor] | None = None
    per_sample: tuple[Callable, ...] | None = None
    pending: bool = False  # "top1" not yet resolved
    rows: Tensor | None = None

    @property
    def resolved(self) -> bool:
        return not self.pending

    def resolve(self, output: Tensor) -> Target:
        """Resolve "top1" from ``output``: the model's output on the original inputs (one row a sample)."""
        if not self.pending:
            return self
        _check_class_output(output, self.n)
        return Target(self.n, indices=output.detach().argmax(dim=1))

    def resolve_with(self, model: nn.Module, inputs: Tensor) -> tuple[Target, Tensor | None]:
        """Resolve with a forward pass without gradients if needed; returns (target, output or None)."""
        if not self.pending:
            return self, None
        with torch.no_grad():
            output = model(inputs)
        return self.resolve(output), output

    def select(self, rows: Tensor) -> Target:
        """The target for a batch whose row r holds (a variant of) original sample ``rows[r]``."""
        if self.pending:
            raise RuntimeError("resolve the target before selecting rows")
        base = rows if self.rows is None else self.rows[rows]
        return Target(self.n, self.indices, self.fn, self.per_sample, False, base)

    def take(self, rows: Tensor) -> Target:
        """The target of a new batch whose row r is (a copy of) original sample ``rows[r]``: the same classes or
        callables, for that batch on its own (what a method called on the copies is given)."""
        if self.pending:
            raise RuntimeError("resolve the target before taking rows")
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        base = rows if self.rows is None else self.rows.cpu()[rows]
        indices = None if self.indices is None else self.indices[base.to(self.indices.device)]
        per_sample = None if self.per_sample is None else tuple(self.per_sample[int(r)] for r in base)
        return Target(len(base), indices, self.fn, per_sample)

    def repeat(self, k: int) -> Target:
        """The target for a batch of k variants of each sample, laid out as ``inputs.repeat_interleave(k)``."""
        rows = torch.arange(self.n).repeat_interleave(k)
        return self.select(rows)

    def score(self, output: Tensor) -> Tensor:
        """One score per row of ``output``: shape (N,)."""
        if self.pending:
            raise RuntimeError("resolve the target before scoring")
        if self.fn is not None:
            scores = self.fn(output)
            if not isinstance(scores, Tensor) or scores.shape != (output.shape[0],):
                got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
                raise ValueError(
                    f"a callable target must return one score per sample, shape ({output.shape[0]},); "
                    f"got {got}"
                )
            return scores
        rows = self.rows if self.rows is not None else torch.arange(output.shape[0])
        if self.per_sample is not None:
            return torch.stack([self.per_sample[int(r)](output[i]).reshape(()) for i, r in enumerate(rows)])
        idx = self.indices.to(output.device)[rows.to(output.device)]
        _check_class_output(output, output.shape[0], idx)
        return output.gather(1, idx[:, None]).squeeze(1)


def _check_class_output(output: Tensor, n: int, idx: Tensor | None = None) -> None:
    if not isinstance(output, Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"class targets need a model output of shape (B, K); got {shape}. "
            "Pass a callable target f(output) -> (B,) for other outputs."
        )
    if output.shape[0] != n:
        raise ValueError(f"the model returned {output.shape[0]} rows for {n} inputs")
    if idx is not None and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= output.shape[1]):
        bad = idx[(idx < 0) | (idx >= output.shape[1])][0]
        raise ValueError(
            f"target class {int(bad)} is out of range: the model has {output.shape[1]} classes "
            f"(0..{output.shape[1] - 1})"
        )


def parse_topk(spec: str) -> int | None:
    """k for ``"top<k>"`` (``"top1"``, ``"top3"``, ...; case-insensitive), else None."""
    key = spec.strip().lower()
    if key.startswith("top") and key[3:].isdigit():
        k = int(key[3:])
        if k < 1:
            raise ValueError(f"target {spec!r}: k must be >= 1 (top1, top3, ...)")
        return k
    return None


def make_target(spec: TargetSpec, n: int, class_names: Sequence[str] | None = None) -> Target:
    """Turn a target spec into a :class:`Target` for ``n`` samples (see the module docstring)."""
    if isinstance(spec, Target):
        if spec.n != n:
            raise ValueError(f"the target is for {spec.n} samples, the inputs have {n}")
        return spec
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("top1", "pred", "predicted")):
        return Target(n, pending=True)
    if isinstance(spec, str) and parse_topk(spec) is not None:
        raise ValueError(f"target {spec!r} stands for several explanations per image: pass it to seewhy.explain "
                         "(or topk=), which returns one explanation per class")
    if isinstance(spec, bool):
        raise TypeError("target must be an int, a list of ints, 'top1', a class name or a callable; got a bool")
    if isinstance(spec, int):
        return Target(n, indices=torch.full((n,), spec, dtype=torch.long))
    if isinstance(spec, str):
        if spec.lstrip("-").isdigit():
            return make_target(int(spec), n, class_names)
        return Target(n, indices=torch.full((n,), class_index(spec, class_names), dtype=torch.long))
    if callable(spec):
        return Target(n, fn=spec)
    if isinstance(spec, Tensor):
        if spec.dtype.is_floating_point or spec.dtype == torch.bool:
            raise TypeError(f"a target tensor must hold integer class indices; got dtype {spec.dtype}")
        spec = spec.detach().cpu().reshape(-1).tolist()
    if isinstance(spec, Sequence):
        items = list(spec)
        if len(items) != n:
            raise ValueError(f"got {len(items)} targets for {n} inputs; give one per sample or a single int")
        if all(callable(t) for t in items):
            return Target(n, per_sample=tuple(items))
        idx = [class_index(t, class_names) if isinstance(t, str) else t for t in items]
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in idx):
            raise TypeError(f"a target list must hold ints (or class names); got {items!r}")
        return Target(n, indices=torch.tensor(idx, dtype=torch.long))
    raise TypeError(
        f"unsupported target {spec!r}: use None/'top1', an int, a list of ints, a class name or a callable"
    )


def class_index(name: str, class_names: Sequence[str] | None) -> int:
    """Index of a class name (case-insensitive; also matches a comma-separated synonym)."""
    if not class_names:
        raise ValueError(
            f"target {name!r} is a class name, but the model carries no class_names; pass an int index"
        )
    key = name.strip().lower()
    for i, label in enumerate(class_names):
        if key == label.lower() or key in (s.strip().lower() for s in label.split(",")):
            return i
    close = [class_names[i] for i in _similar(key, class_names)]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown class name {name!r}{hint} (or pass a class index)")


def parse_class(text: str, class_names: Sequence[str] | None, what: str = "class") -> int:
    """A class index from text: ``K`` (an index >= 0) or a class name (:func:`class_index`, close names suggested).
    ValueError, prefixed with ``what`` (e.g. ``--target``), naming the fix."""
    text = str(text).strip()
    if text.lstrip("-").isdigit():
        if int(text) < 0:
            raise ValueError(f"{what}: class {text} is negative; give an index >= 0 or a class name")
        return int(text)
    if not class_names:
        raise ValueError(f"{what}: {text!r} is a class name, but this model has no class names (the pretrained zoo "
                         "model has ImageNet's); give the class index instead")
    try:
        return class_index(text, class_names)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def _similar(key: str, class_names: Sequence[str], n: int = 5) -> list[int]:
    """Indices of the classes most like ``key``: those with ``key`` as a word of a name or synonym first ("cat" ->
    "tiger cat", "Persian cat"), then the closest spellings of any synonym ("tigre cat" -> "tiger cat")."""
    words = [[s.strip().lower() for s in label.split(",") if s.strip()] for label in class_names]
    out = [i for i, syn in enumerate(words) if any(key in s.replace("-", " ").split() for s in syn)][:n]
    lookup = {s: i for i, syn in enumerate(words) for s in syn}
    for s in difflib.get_close_matches(key, list(lookup), n=2 * n, cutoff=0.6):
        if lookup[s] not in out:
            out.append(lookup[s])
    return out[:n]
