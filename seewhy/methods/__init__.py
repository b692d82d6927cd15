"""Attribution methods; importing this package registers them all."""

from .cam import (
    CAM,
    CAMMethod,
    ClassMap,
    EigenCAM,
    FullyConvolutional,
    GradCAM,
    GradCAMPlusPlus,
    GradientCAM,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    fully_convolutional,
)
from .cam_perturbation import AblationCAM, ScoreCAM
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
    "AblationCAM",
    "CAM",
    "CAMMethod",
    "ClassMap",
    "Deconvnet",
    "EigenCAM",
    "fully_convolutional",
    "FullyConvolutional",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCAM",
    "GradientMethod",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputXGradient",
    "IntegratedGradients",
    "LayerCAM",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "XGradCAM",
]

from .perturbation import RISE, FeatureAblation, Occlusion, OcclusionMap, PerturbationMethod  # noqa: E402
from .surrogate import KernelShap, Lime, SurrogateMethod, top_features  # noqa: E402

__all__ += [
    "FeatureAblation",
    "KernelShap",
    "Lime",
    "Occlusion",
    "OcclusionMap",
    "PerturbationMethod",
    "RISE",
    "SurrogateMethod",
    "top_features",
]

from .lrp import LRP, Composite, MergeBatchNorm, ledger_table  # noqa: E402

__all__ += ["Composite", "LRP", "MergeBatchNorm", "ledger_table"]

from .controls import EdgeDetector, RandomAttribution  # noqa: E402,F401  (registers the controls)
from .protopnet import ProtoPNetSimilarity  # noqa: E402,F401  (registers "protopnet")
