"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, Eigen-CAM, Guided Grad-CAM and
fully-convolutional class maps (Score-CAM and Ablation-CAM live in :mod:`.cam_perturbation`).

Every CAM returns the raw, signed map at the layer's resolution, ``(B,1,h,w)`` (``kind = "map"``): no ReLU, no
upsampling, no normalisation. ``Explanation.heatmap()`` then applies ReLU, bilinear upsampling to the input size and a
per-image min-max (``CAMMethod.heatmap_convention``). The layer is ``layer=`` (dotted name or module; ``None``: the last
module with a spatial output, by a dry forward); token models (B,N,D) need ``reshape=`` (see :func:`to_grid`).

A new gradient variant is one :class:`GradientCAM` subclass with a short ``weights(acts, grads) -> (B,K)`` (or a
``combine(acts, grads) -> (B,1,h,w)`` for per-location weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Call, Cost, Method, register
from ..hooks import layer_outputs
from ..layers import default_layer, resolve_layer
from ..targets import Target
from .gradient import GuidedBackprop

Reshape = bool | int | Callable[[Tensor], Tensor] | None
LayerArg = str | nn.Module | Sequence[str | nn.Module] | None
_MAX_PREFIX = 16  # reshape=True looks for at most this many prefix (class / register) tokens


# --- layers, forwards and token grids -------------------------------------------------------------------------------


def forward_layers(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[tuple[str, nn.Module]],
    *,
    grad: bool,
    stop: Callable[[Tensor], bool] | None = None,
) -> tuple[dict[str, Tensor], Any]:
    """One forward recording the output of each layer (graph tensors with ``grad=True``): ``(acts, output)``.

    ``output`` is ``None`` when ``stop`` ended the forward after the (single) layer. Raises ValueError for a layer
    the forward did not reach or called more than once (a reused module, e.g. a shared ReLU).
    """
    acts, output, calls = layer_outputs(model, inputs, dict(layers), grad=grad, stop=stop or False)
    for name, n in calls.items():
        if n == 0 and output is not None:
            raise ValueError(f"layer {name!r} was not called during the forward pass; choose a layer the model uses")
        if n > 1:
            raise ValueError(
                f"layer {name!r} is called {n} times in one forward pass (a reused module, such as a shared ReLU); "
                "its output is ambiguous: choose a module that runs once (e.g. its parent block)"
            )
    return acts, output


def token_grid(n_tokens: int, size: tuple[int, int], prefix: int | None = None) -> tuple[int, int, int]:
    """``(prefix, h, w)`` for ``n_tokens`` tokens of an image of ``size`` (H, W): the grid has the image's aspect
    ratio (h*W == w*H), else is square; with ``prefix=None`` the fewest prefix tokens that allow such a grid."""
    H, W = size
    for p in [prefix] if prefix is not None else range(min(_MAX_PREFIX, n_tokens - 1) + 1):
        n = n_tokens - p
        if n <= 0:
            break
        h = max(1, round(math.sqrt(n * H / W)))
        if n % h == 0 and h * W == (n // h) * H:
            return p, h, n // h
        s = math.isqrt(n)
        if s * s == n:
            return p, s, s
    what = f"{n_tokens} tokens minus {prefix} prefix tokens" if prefix is not None else f"{n_tokens} tokens"
    raise ValueError(
        f"cannot arrange {what} into a grid for a {H}x{W} input; pass reshape=<number of prefix tokens> or a "
        "callable (B,N,D) -> (B,D,h,w)"
    )


def to_grid(act: Tensor, reshape: Reshape, name: str, size: tuple[int, int]) -> Tensor:
    """A layer output as a (B,C,h,w) grid. ``reshape``: ``None`` (the output must be 4-D), ``True`` (tokens (B,N,D):
    infer the grid and the number of prefix tokens), an int (that many prefix tokens, e.g. 1 for a class token)
    or a callable ``f(act) -> (B,C,h,w)`` (also applied to gradients, so it must be linear, e.g. a permutation)."""
    if callable(reshape) and not isinstance(reshape, bool):
        grid = reshape(act)
        if not isinstance(grid, Tensor) or grid.ndim != 4 or grid.shape[0] != act.shape[0]:
            got = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
            raise ValueError(f"reshape must map layer {name!r}'s output to (B,C,h,w); it returned {got}")
        return grid
    if act.ndim == 4:
        return act
    if act.ndim == 3 and reshape not in (None, False):
        p, h, w = token_grid(act.shape[1], size, None if reshape is True else int(reshape))
        return act[:, p:].transpose(1, 2).reshape(act.shape[0], act.shape[2], h, w)
    if act.ndim == 3:
        raise ValueError(
            f"layer {name!r} outputs tokens of shape {tuple(act.shape)}; pass reshape=True (infer the grid), "
            "reshape=<number of prefix tokens> or a callable (B,N,D) -> (B,D,h,w)"
        )
    raise ValueError(
        f"layer {name!r} has a non-spatial output of shape {tuple(act.shape)}; CAMs need a (B,C,h,w) feature map "
        "(or tokens with reshape=): choose an earlier layer (seewhy.layers.spatial_layers lists them)"
    )


# --- the base classes -----------------------------------------------------------------------------------------------


@dataclass
class CAMMethod(Method):
    """Base of the CAM family: a map at a layer, raw and signed, ``(B,1,h,w)``.

    ``exp.heatmap()`` follows ``heatmap_convention``: ReLU, bilinear upsampling to the input size, per-image min-max.
    """

    kind: ClassVar[str] = "map"
    family: ClassVar[str] = "cam"
    heatmap_convention: ClassVar[dict[str, Any]] = {
        "reduce": "none",
        "sign": "positive",
        "upsample": "bilinear",
        "normalize": "minmax",
    }
    multi_layer: ClassVar[bool] = False

    layer: LayerArg = None
    reshape: Reshape = None

    def _layers(self, model: nn.Module, inputs: Tensor, call: Call) -> list[tuple[str, nn.Module]]:
        specs = list(self.layer) if isinstance(self.layer, (list, tuple)) else [self.layer]
        if not specs:
            raise ValueError(f"{self.name}: layer= is an empty list")
        if len(specs) > 1 and not self.multi_layer:
            raise ValueError(f"{self.name} explains one layer, got {len(specs)}; use layercam to fuse several layers")
        layers = [resolve_layer(model, default_layer(model, inputs) if s is None else s) for s in specs]
        call.extras["layer"] = ", ".join(name for name, _ in layers)
        return layers

    def _grid(self, act: Tensor, name: str, inputs: Tensor) -> Tensor:
        return to_grid(act, self.reshape, name, tuple(inputs.shape[-2:]))


def _need_class_targets(call: Call, method: str) -> None:
    t = call.target
    if t.fn is not None or t.per_sample is not None:
        raise ValueError(
            f"{method} reads a linear head's class weights: it needs class targets, not a callable; "
            "use gradcam for other outputs"
        )


@dataclass
class GradientCAM(CAMMethod):
    """A CAM weighted by the gradient of the target score at the layer: one forward and one backward
    (``torch.autograd.grad`` with respect to the captured activation). Subclasses define :meth:`weights` or
    :meth:`combine`."""

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        """Channel weights (B,K) from activations and gradients (B,K,h,w)."""
        raise NotImplementedError

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        """The map (B,1,h,w); by default sum_k w_k A_k."""
        return (self.weights(acts, grads)[:, :, None, None] * acts).sum(1, keepdim=True)

    def layer_maps(self, model: nn.Module, inputs: Tensor, call: Call) -> list[Tensor]:
        """One map per layer; resolves a pending target from the same forward."""
        layers = self._layers(model, inputs, call)
        with torch.enable_grad():
            acts, out = forward_layers(model, inputs, layers, grad=True)
            score = call.resolve(out).score(out)
            if not score.requires_grad:
                raise RuntimeError(
                    "the target score does not depend on the layer through autograd: does the model run under "
                    "torch.no_grad(), detach its output, or convert to numpy inside forward()?"
                )
            tensors = [acts[name] for name, _ in layers]
            grads = torch.autograd.grad(score.sum(), tensors, allow_unused=True)
        maps = []
        for (name, _), a, g in zip(layers, tensors, grads, strict=True):
            if g is None:
                raise ValueError(f"the target score does not depend on layer {name!r}; choose a layer on its path")
            maps.append(self.combine(self._grid(a.detach(), name, inputs), self._grid(g, name, inputs)))
        return maps

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        return self.layer_maps(model, inputs, call)[0]


# --- gradient CAMs --------------------------------------------------------------------------------------------------


@register("gradcam")
@dataclass
class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391): M = sum_k w_k A_k, w_k = mean_ij dS/dA_kij.

    Raw and signed (the paper's ReLU is left to the heatmap)."""

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        return grads.mean(dim=(2, 3))


@register("gradcam_plus_plus")
@dataclass
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018, arXiv:1710.11063): w_k = sum_ij a_kij relu(g_kij),
    a_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3) (0 where g = 0), g = dS/dA.

    This is the paper's closed form, which assumes the explained output is exp(S) (so the higher derivatives are
    powers of g); the positive factor exp(S) of relu(dexp(S)/dA) is dropped, which only scales each map."""

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        g2 = grads * grads
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grads
        nonzero = denom != 0
        alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, torch.ones_like(denom)), torch.zeros_like(g2))
        return (alpha * grads.clamp(min=0)).sum(dim=(2, 3))


@register("xgradcam")
@dataclass
class XGradCAM(GradientCAM):
    """XGrad-CAM (Fu et al. 2020, arXiv:2008.02312): w_k = sum_ij (A_kij / sum_ab A_kab) dS/dA_kij.

    A channel whose activations sum to exactly 0 gets weight 0 (the paper assumes non-negative activations)."""

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        total = acts.sum(dim=(2, 3))
        num = (acts * grads).sum(dim=(2, 3))
        nonzero = total != 0
        return torch.where(nonzero, num / torch.where(nonzero, total, torch.ones_like(total)), torch.zeros_like(num))


@register("hirescam")
@dataclass
class HiResCAM(GradientCAM):
    """HiResCAM (Draelos & Carin 2020, arXiv:2011.08891): M_ij = sum_k dS/dA_kij * A_kij.

    Faithful for conv -> flatten -> linear heads: sum_ij M_ij + bias = S."""

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        return (grads * acts).sum(1, keepdim=True)


@register("layercam")
@dataclass
class LayerCAM(GradientCAM):
    """LayerCAM (Jiang et al. 2021, IEEE TIP 30:5875): M_ij = sum_k relu(dS/dA_kij) * A_kij, at one or more layers.

    Several layers (``layer=[...]``) are fused at the finest layer grid (bilinear upsampling): ``fuse="max"``
    scales each map by tanh(gamma * M / max|M|) (the paper's scaling, applied to every layer) and takes the
    elementwise maximum; ``fuse="sum"`` adds the raw maps. One layer gives the raw map."""

    multi_layer: ClassVar[bool] = True
    fuse: str = "max"
    gamma: float = 2.0

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        return (grads.clamp(min=0) * acts).sum(1, keepdim=True)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        if self.fuse not in ("max", "sum"):
            raise ValueError(f"unknown fuse {self.fuse!r}; use 'max' or 'sum'")
        maps = self.layer_maps(model, inputs, call)
        if len(maps) == 1:
            return maps[0]
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        up = [m if m.shape[-2:] == size else F.interpolate(m, size, mode="bilinear", align_corners=False) for m in maps]
        if self.fuse == "sum":
            return torch.stack(up).sum(0)
        tiny = torch.finfo(up[0].dtype).tiny
        scaled = [torch.tanh(self.gamma * m / m.abs().amax(dim=(2, 3), keepdim=True).clamp(min=tiny)) for m in up]
        return torch.stack(scaled).amax(0)


@register("guided_gradcam")
@dataclass
class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop (B,C,H,W) x relu(Grad-CAM) upsampled bilinearly
    (align_corners=False) to the input size, as in the paper. A pixel method: returns (B,C,H,W)."""

    kind: ClassVar[str] = "pixel"
    heatmap_convention: ClassVar[dict[str, Any]] = {"reduce": "max_abs", "sign": "abs", "normalize": "percentile"}

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        """Grad-CAM's pass to the layer, then guided backprop's to the input."""
        return Cost(backwards=2)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        cam = self.layer_maps(model, inputs, call)[0].clamp(min=0)
        cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        return GuidedBackprop().attribute(model, inputs, Call(call.target)) * cam


# --- Eigen-CAM ------------------------------------------------------------------------------------------------------


@register("eigencam")
@dataclass
class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad & Yeasin 2020, arXiv:2008.00299): the projection of the activations on their first
    principal direction, M = A v_1 with A the (hw, K) activation matrix and v_1 its first right singular vector.

    Class-agnostic (no gradient). As in the paper the activations are not centred (``center=True`` subtracts the
    per-channel mean, as pytorch-grad-cam does). The sign of v_1 is arbitrary; it is fixed so that the map's
    covariance with the channel-mean activation map is >= 0."""

    center: bool = False

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        return Cost(forwards=1)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        layers = self._layers(model, inputs, call)
        name = layers[0][0]
        with torch.no_grad():
            acts, out = forward_layers(model, inputs, layers, grad=False)
            call.resolve(out)
            a = self._grid(acts[name], name, inputs)
            b, _, h, w = a.shape
            x = a.flatten(2).transpose(1, 2)  # (B, hw, K)
            if self.center:
                x = x - x.mean(dim=1, keepdim=True)
            v1 = torch.linalg.svd(x, full_matrices=False).Vh[:, 0, :]  # (B, K)
            m = (x @ v1[:, :, None]).squeeze(-1)  # (B, hw)
            ref = a.mean(1).flatten(1)
            cov = (m * (ref - ref.mean(dim=1, keepdim=True))).sum(1)
            sign = torch.where(cov < 0, -1.0, 1.0).to(m)
            return (m * sign[:, None]).view(b, 1, h, w)


# --- linear heads: CAM and fully-convolutional class maps -----------------------------------------------------------


@dataclass(frozen=True)
class LinearHead:
    """A linear layer ``fc`` reading a (K,h,w) feature map: through global average pooling (``kernel=None``) or
    flattened (``kernel=(h,w)``, the training-time feature grid)."""

    name: str
    fc: nn.Linear
    kernel: tuple[int, int] | None

    def conv_weight(self, channels: int) -> Tensor:
        """The head as a convolution kernel (classes, K, kh, kw): 1x1 for GAP heads."""
        kh, kw = self.kernel or (1, 1)
        return self.fc.weight.reshape(self.fc.out_features, channels, kh, kw)

    def logits(self, a: Tensor) -> Tensor:
        return self.fc(a.mean(dim=(2, 3)) if self.kernel is None else a.flatten(1))

    def fits(self, a: Tensor) -> bool:
        return self.kernel is None or tuple(a.shape[-2:]) == self.kernel

    def check(self, a: Tensor, output: Any, method: str, layer: str) -> None:
        """Raise ValueError unless ``output`` equals the head applied to the feature map ``a``."""
        pred = self.logits(a)
        detail = ""
        if isinstance(output, Tensor) and output.shape == pred.shape:
            gap = float((pred.to(output) - output).abs().max())
            if gap <= 1e-4 * float(output.abs().max().clamp(min=1)):
                return
            detail = f" (max difference {gap:.3g})"
        kind = "linear(GAP(A))" if self.kernel is None else "linear(flatten(A))"
        raise ValueError(
            f"{method} needs a model whose output is {kind} with A = layer {layer!r} and linear = {self.name!r}; "
            f"this model's output differs{detail} (e.g. an activation or another layer after {layer!r}). "
            "Use method='gradcam' (equal to CAM on GAP+linear heads, and works with any head), pick the layer "
            "the head reads, or pass strict=False to use the weights of fc anyway"
        )


def find_head(
    model: nn.Module,
    fc: str | nn.Module | None,
    channels: int,
    kernel: tuple[int, int] | str | None,
    method: str,
    layer: str,
) -> LinearHead:
    """The linear layer reading ``channels`` pooled channels, or a flattened grid of ``kernel`` (``"square"``: any
    square grid). Without ``fc`` the last ``nn.Linear`` of the model that fits."""
    if fc is not None:
        name, module = resolve_layer(model, fc)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"fc={name!r} is a {type(module).__name__}, not an nn.Linear")
        candidates = [(name, module)]
    else:
        candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][::-1]
    for name, m in candidates:
        n_in = m.in_features
        if n_in == channels:
            return LinearHead(name, m, None)
        if kernel == "square" and n_in % channels == 0 and math.isqrt(n_in // channels) ** 2 == n_in // channels:
            s = math.isqrt(n_in // channels)
            return LinearHead(name, m, (s, s))
        if isinstance(kernel, tuple) and n_in == channels * kernel[0] * kernel[1]:
            return LinearHead(name, m, kernel)
    grid = f"{channels}x{kernel[0]}x{kernel[1]}" if isinstance(kernel, tuple) else f"{channels}xhxw"
    if fc is not None:
        what = f"fc={candidates[0][0]!r} has in_features={candidates[0][1].in_features}, which matches neither"
    else:
        what = "no nn.Linear of the model matches"
    raise ValueError(
        f"{method}: {what} the {channels} channels of layer {layer!r} (GAP + linear head) nor its {grid} values "
        "(flatten + linear head). Use method='gradcam' for other heads, or pass fc= (and train_size= for flatten "
        "heads)"
    )


@register("cam")
@dataclass
class CAM(CAMMethod):
    """CAM (Zhou et al. 2016, arXiv:1512.04150): M = sum_k w_ck A_k, w_c the class-c row of the linear head
    S = linear(GAP(A)); so mean_ij M + b_c = S_c.

    ``fc``: the linear layer (name or module; default: the last ``nn.Linear`` with K inputs). A flatten + linear
    head (K*h*w inputs) is also exact, with per-location weights: M_ij = h*w sum_k W_c[k,i,j] A_kij. With
    ``strict`` (default) a model whose output is not that head applied to the layer is an error that suggests
    gradcam; ``strict=False`` uses the weights anyway (TorchCAM's behaviour)."""

    fc: str | nn.Module | None = None
    strict: bool = True

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        return Cost(forwards=1)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        _need_class_targets(call, "cam")
        layers = self._layers(model, inputs, call)
        name = layers[0][0]
        with torch.no_grad():
            acts, out = forward_layers(model, inputs, layers, grad=False)
            target = call.resolve(out)
            a = self._grid(acts[name], name, inputs)
            k, h, w = a.shape[1:]
            head = find_head(model, self.fc, k, (h, w), "cam", name)
            if self.strict:
                head.check(a, out, "cam", name)
            weight = head.conv_weight(k)[target.indices.to(head.fc.weight.device)].to(a)  # (B, K, kh, kw)
            scale = 1 if head.kernel is None else h * w
            return scale * (weight * a).sum(1, keepdim=True)


def _pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class FullyConvolutional(nn.Module):
    """``model`` up to ``layer``, then its linear head re-expressed as a convolution over the feature map: a GAP +
    linear head becomes a 1x1 convolution, a flatten + linear head a convolution with the kernel of the training-time
    feature grid. ``forward(x)`` returns per-location class scores (B, classes, h', w') on inputs of any size.

    The model's weights are used live (no copy); the model is run as it is (call ``model.eval()`` first).
    ``train_size``: the training input size (H, W) of a flatten head (default: assume a square feature grid).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module,
        fc: str | nn.Module | None = None,
        train_size: int | Sequence[int] | None = None,
        reshape: Reshape = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.layer = resolve_layer(model, layer)[0]
        self.fc = None if fc is None else resolve_layer(model, fc)[0]
        self.train_size = _pair(train_size)
        self.reshape = reshape
        self._kernel: tuple[int, int] | None = None

    def features(self, x: Tensor, *, full: bool = False) -> tuple[Tensor, Any]:
        """(feature grid (B,K,h,w), model output or None). The forward stops after the layer unless ``full`` and
        the head can read this grid (the model's own head then runs and its output is returned)."""
        if self.train_size is not None and self._kernel is None:  # the training feature grid, by a dry forward
            with torch.no_grad():
                probe = x.new_zeros(1, x.shape[1], *self.train_size)
                self._kernel = tuple(self._run(probe, full=False)[0].shape[-2:])
        return self._run(x, full=full)

    def _run(self, x: Tensor, *, full: bool) -> tuple[Tensor, Any]:
        size = tuple(x.shape[-2:])
        module = self.model.get_submodule(self.layer)

        def stop(act: Tensor) -> bool:
            if not full:
                return True
            grid = to_grid(act, self.reshape, self.layer, size)
            return not self.head(grid).fits(grid)

        acts, out = forward_layers(self.model, x, [(self.layer, module)], grad=False, stop=stop)
        return to_grid(acts[self.layer], self.reshape, self.layer, size), out

    def head(self, a: Tensor) -> LinearHead:
        """The linear head for feature grids with ``a``'s channels."""
        if self.train_size is not None and self._kernel is None:
            raise RuntimeError("call features() first: the training feature grid is not known yet")
        kernel = self._kernel if self.train_size is not None else "square"
        return find_head(self.model, self.fc, a.shape[1], kernel, "class_map", self.layer)

    def class_maps(self, a: Tensor) -> Tensor:
        """Per-location class scores (B, classes, h', w') of a feature grid."""
        head = self.head(a)
        if head.kernel is not None and (a.shape[-2] < head.kernel[0] or a.shape[-1] < head.kernel[1]):
            raise ValueError(
                f"the feature grid {tuple(a.shape[-2:])} is smaller than the flatten head's {head.kernel}: "
                "use inputs at least as large as the training size"
            )
        bias = head.fc.bias.to(a) if head.fc.bias is not None else None
        return F.conv2d(a, head.conv_weight(a.shape[1]).to(a), bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.class_maps(self.features(x)[0])


def fully_convolutional(
    model: nn.Module,
    layer: str | nn.Module,
    fc: str | nn.Module | None = None,
    *,
    train_size: int | Sequence[int] | None = None,
    reshape: Reshape = None,
) -> FullyConvolutional:
    """``model``'s classifier as a fully-convolutional network over ``layer`` (see :class:`FullyConvolutional`)."""
    return FullyConvolutional(model, layer, fc, train_size, reshape)


@register("class_map")
@dataclass
class ClassMap(CAMMethod):
    """Fully-convolutional class map (Long et al. 2015, "FC layers into convolutions"): the linear head applied at
    every location of the feature map, M_ij = W_c . A[:, window(i,j)] + b_c, on inputs of any size.

    GAP + linear heads give a 1x1 convolution (mean_ij M = S_c at any size); flatten + linear heads a convolution
    with the kernel of the training feature grid (``train_size``: training input size; default: a square grid),
    so M is 1x1 and equals S_c at the training size and a larger grid on larger inputs. ``fc`` and ``strict`` as
    for ``cam``. When the model itself cannot run (a flatten head on a larger input), "top1" and the explained
    scores come from the mean of the class maps."""

    fc: str | nn.Module | None = None
    train_size: int | Sequence[int] | None = None
    strict: bool = True

    def cost(self, model: nn.Module | None = None, inputs: Tensor | None = None) -> Cost:
        return Cost(forwards=1)

    def attribute(self, model: nn.Module, inputs: Tensor, call: Call) -> Tensor:
        _need_class_targets(call, "class_map")
        name = self._layers(model, inputs, call)[0][0]
        fcn = fully_convolutional(model, name, self.fc, train_size=self.train_size, reshape=self.reshape)
        with torch.no_grad():
            a, out = fcn.features(inputs, full=True)
            maps = fcn.class_maps(a)
            if out is not None and self.strict:
                fcn.head(a).check(a, out, "class_map", name)
        target: Target = call.resolve(out if out is not None else maps.mean(dim=(2, 3)))
        idx = target.indices.to(maps.device).view(-1, 1, 1, 1).expand(-1, 1, *maps.shape[-2:])
        return maps.gather(1, idx)


__all__ = [
    "CAM",
    "CAMMethod",
    "ClassMap",
    "EigenCAM",
    "FullyConvolutional",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCAM",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "LinearHead",
    "XGradCAM",
    "forward_layers",
    "fully_convolutional",
    "to_grid",
    "token_grid",
]
