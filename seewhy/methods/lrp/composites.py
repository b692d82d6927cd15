"""Composites: which LRP rule applies to which layer (by name, first layer, then by type).

The presets follow Kohlbrenner et al. 2020 ("Towards best practice in explaining neural network decisions
with LRP"): epsilon at dense layers, a z+ / gamma / alpha-beta rule at convolutions, an input rule (flat,
box) at the first layer. BatchNorm layers that no canonizer merged get the epsilon rule. ``epsilon`` is the
stabilizer of every rule in a preset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .rules import AlphaBeta, Epsilon, Flat, Gamma, Rule, ZBox, ZPlus

CONV: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR: tuple[type[nn.Module], ...] = (nn.Linear,)
BATCHNORM: tuple[type[nn.Module], ...] = (_BatchNorm,)


@dataclass
class Composite:
    """Assigns a rule to each layer call: ``names`` (fnmatch patterns on module names) first, then ``first``
    for the first convolution/linear layer the forward runs, then ``types`` (in order, ``isinstance``).

    A layer that gets no rule (``None``) keeps its plain gradient, which is LRP-0 under seewhy's convention.
    """

    types: Sequence[tuple[type[nn.Module] | tuple[type[nn.Module], ...], Rule | None]] = ()
    names: Mapping[str, Rule | None] = field(default_factory=dict)
    first: Rule | None = None

    def rule_for(self, name: str, module: nn.Module, first: bool) -> Rule | None:
        for pattern, rule in self.names.items():
            if fnmatchcase(name, pattern):
                return rule
        if first and self.first is not None:
            return self.first
        for types, rule in self.types:
            if isinstance(module, types):
                return rule
        return None


def _base(conv: Rule, epsilon: float, first: Rule | None, batchnorm: Rule | None) -> Composite:
    bn = Epsilon(epsilon) if batchnorm is None else batchnorm
    return Composite(types=[(CONV, conv), (LINEAR, Epsilon(epsilon)), (BATCHNORM, bn)], first=first)


def epsilon_plus(epsilon: float = 1e-6, batchnorm: Rule | None = None, **_: object) -> Composite:
    """z+ at convolutions, epsilon at linear layers; unmerged BatchNorms get ``batchnorm`` (default epsilon)."""
    return _base(ZPlus(epsilon), epsilon, None, batchnorm)


def epsilon_plus_flat(epsilon: float = 1e-6, batchnorm: Rule | None = None, **_: object) -> Composite:
    """``epsilon_plus`` with the flat rule at the first layer."""
    return _base(ZPlus(epsilon), epsilon, Flat(), batchnorm)


def epsilon_gamma_box(
    epsilon: float = 1e-6, gamma: float = 0.25, low: float | Tensor | None = None,
    high: float | Tensor | None = None, batchnorm: Rule | None = None, **_: object,
) -> Composite:
    """gamma at convolutions, epsilon at linear layers, the box rule (inputs in [low, high]) at the first layer."""
    return _base(Gamma(gamma=gamma, epsilon=epsilon), epsilon, ZBox(low=low, high=high), batchnorm)


def epsilon_alpha2_beta1(epsilon: float = 1e-6, batchnorm: Rule | None = None, **_: object) -> Composite:
    """alpha2-beta1 at convolutions, epsilon at linear layers."""
    return _base(AlphaBeta(2.0, 1.0, epsilon=epsilon), epsilon, None, batchnorm)


def epsilon_alpha2_beta1_flat(epsilon: float = 1e-6, batchnorm: Rule | None = None, **_: object) -> Composite:
    """``epsilon_alpha2_beta1`` with the flat rule at the first layer."""
    return _base(AlphaBeta(2.0, 1.0, epsilon=epsilon), epsilon, Flat(), batchnorm)


def epsilon(epsilon: float = 1e-6, batchnorm: Rule | None = None, **_: object) -> Composite:
    """epsilon everywhere (epsilon -> 0 on a bias-free ReLU network: input x gradient)."""
    return Composite(types=[(CONV + LINEAR, Epsilon(epsilon)),
                            (BATCHNORM, Epsilon(epsilon) if batchnorm is None else batchnorm)])


PRESETS: dict[str, Callable[..., Composite]] = {
    "epsilon_plus": epsilon_plus,
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_gamma_box": epsilon_gamma_box,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
    "epsilon_alpha2_beta1_flat": epsilon_alpha2_beta1_flat,
    "epsilon": epsilon,
}


def get_composite(spec: str | Composite, **params: object) -> Composite:
    """A preset by name (built with ``params``: epsilon, gamma, low, high, batchnorm) or a :class:`Composite`."""
    if isinstance(spec, Composite):
        return spec
    if spec not in PRESETS:
        raise ValueError(f"unknown composite {spec!r}; use one of {', '.join(PRESETS)} or a Composite object")
    return PRESETS[spec](**params)
