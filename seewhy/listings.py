"""The registries as text: what ``seewhy methods``, ``seewhy metrics`` and ``seewhy models`` print."""

from __future__ import annotations

import dataclasses
import inspect

from . import zoo
from .core import FAMILIES, METHODS

#: what a metric needs besides the image and the map, in words
NEEDS = {"mask": "object masks (--masks/--boxes)", "method": "re-runs the method"}


def methods_listing(verbose: bool = False) -> str:
    """The registered methods by family with their cost per image (at 224x224 with the defaults) and summary;
    ``verbose``: the whole description and every parameter with its default."""
    rows = sorted(METHODS.items(), key=lambda kv: FAMILIES.index(kv[1].family) if kv[1].family in FAMILIES
                  else len(FAMILIES))
    width = max(map(len, METHODS), default=0)
    lines: list[str] = []
    family = None
    for name, cls in rows:
        cost = cls().cost()
        if cls.family != family:
            family = cls.family
            lines += [*([""] if lines else []), family]
        if not verbose:
            lines.append(f"  {name:<{width}}  {cost.describe():<34}  {summary(cls, 90)}")
            continue
        named = "" if cls.in_all else "; run only when named"
        kind = cls.kind if isinstance(cls.kind, str) else "its base method's"  # a wrapper's kind is its base's
        lines.append(f"  {name}  ({cls.__name__}; {kind} attributions{named})")
        lines.append(f"    cost per image: {cost.describe()}"
                     + (f"; lower it with --set {name}.{cost.lower}=..." if cost.lower else ""))
        lines += [f"    {line}".rstrip() for line in (inspect.getdoc(cls) or "").splitlines()]
        fields = dataclasses.fields(cls)
        if fields:
            lines.append("    parameters:")
            lines += [f"      {f.name} = {_default(f)}" for f in fields]
    return "\n".join(lines)


def metrics_listing(verbose: bool = False) -> str:
    """The registered metrics: family, the better direction, cost per image and method (at 224x224 with the
    defaults), what they need, summary; ``verbose``: the whole description and every parameter."""
    from .estimate import cost_unit
    from .metrics import METRICS

    rows = []
    for name in sorted(METRICS, key=lambda n: (METRICS[n].family, n)):
        spec = METRICS[name]
        arrow = {True: "higher", False: "lower", None: "-"}[spec.higher_is_better]
        n = int(spec.cost({"input_size": (224, 224)}))
        unit = cost_unit(name)
        cost = f"{n} {unit[:-1] if n == 1 and unit == 'explanations' else unit}" if n else "none"
        if name == "model_randomization":
            cost = "1 explanation per layer group"
        rows.append((spec, (name, spec.family, arrow, cost, ", ".join(NEEDS.get(x, x) for x in spec.needs) or "-")))
    if not verbose:
        head = ("metric", "family", "better", "cost per image (224x224)", "needs")
        widths = [max(len(c) for c in col) for col in zip(head, *(cells for _, cells in rows), strict=True)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  "
                         + ("what" if spec is None else summary(spec.fn, 70)) for spec, cells in [(None, head), *rows])
    lines: list[str] = []
    for spec, (name, family, arrow, cost, needs) in rows:
        lines += [f"{name}  ({family}; {arrow} is better)",
                  f"    cost per image and method: {cost} (at 224x224 with the default settings)",
                  f"    needs: {needs}",
                  *(f"    {line}".rstrip() for line in (inspect.getdoc(spec.fn) or "").splitlines())]
        params = [p for p in inspect.signature(spec.fn).parameters.values()
                  if p.name not in ("model", "inputs", "attributions", "target", "kwargs")]
        if params:
            lines.append("    parameters:")
            lines += [f"      {p.name} = {'(required)' if p.default is inspect.Parameter.empty else repr(p.default)}"
                      for p in params]
        lines.append("")
    return "\n".join(lines)


def models_listing() -> str:
    """The zoo models: name, whether weights ship, description."""
    width = max(map(len, zoo.MODELS), default=0)
    return "\n".join(f"{name:<{width}}  {'pretrained' if spec.has_weights else 'no weights':<10}  {spec.description}"
                     for name, spec in zoo.MODELS.items())


def summary(obj: object, limit: int = 100) -> str:
    """The first paragraph of a docstring on one line (the summary often wraps), shortened to ``limit``."""
    doc = inspect.getdoc(obj) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "(required)"
