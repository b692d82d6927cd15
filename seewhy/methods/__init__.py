"""Attribution methods; importing this package registers them all."""

from .gradient import (
    Deconvnet,
    GradientMethod,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)

__all__ = [
    "Deconvnet",
    "GradientMethod",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "Saliency",
    "SmoothGrad",
]
