"""The only code that changes a model temporarily. Everything here is a context manager that undoes
itself in ``finally``: no hook, flag or ``requires_grad`` change outlives a call."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


@contextmanager
def model_state(model: nn.Module, *, eval: bool = True, freeze: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and freeze its parameters for the duration; restore both exactly.

    Freezing (``requires_grad=False``) keeps autograd from tracking the weights, so input gradients are
    cheaper; every module's ``.training`` flag and every parameter's ``requires_grad`` come back as they were.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval:
            model.eval()
        if freeze:
            for p, _ in grads:
                p.requires_grad_(False)
        yield model
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)


@contextmanager
def capture(modules: Mapping[str, nn.Module], *, grad: bool | None = True) -> Iterator[dict[str, Tensor]]:
    """Record the output of each named module during forwards inside the block.

    With ``grad=True`` the recorded tensor is part of the graph (so ``torch.autograd.grad(score, acts[name])``
    works even for frozen models: the output is made to require grad); ``grad=False`` records it detached, ``None``
    as the layer returned it (a model cut at a layer, trained through it). The dict holds the latest output,
    as the layer returned it, even when a later in-place op changes the tensor the model goes on with.
    """
    acts: dict[str, Tensor] = {}

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            if not isinstance(output, Tensor):
                raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            if grad is None:
                acts[name] = output
            elif grad and torch.is_grad_enabled():
                if not output.requires_grad:
                    output = output.detach().requires_grad_(True)
                acts[name] = output
            else:
                acts[name] = output.detach()
            # the model goes on with a copy, so an in-place op after the layer (nn.ReLU(inplace=True))
            # cannot overwrite the recorded activation
            return output.clone()

        return hook

    with forward_hooks([(module, make_hook(name)) for name, module in modules.items()]):
        yield acts


class StopForward(Exception):
    """Raised by a :func:`watch` hook to end a forward pass once the layer of interest has run. It carries the token
    of the :func:`layer_outputs` call that stops, so nested ones (a method's inside a model cut at a layer) each
    end only their own forward."""

    def __init__(self, token: object = None) -> None:
        super().__init__("forward stopped after the layer of interest")
        self.token = token


@contextmanager
def watch(modules: Mapping[str, nn.Module], stop: Callable[[Tensor], bool] | None = None,
          token: object = None) -> Iterator[dict[str, int]]:
    """Count the calls of each module during the block; end the forward (raise ``StopForward(token)``) after a
    module whose output satisfies ``stop``. Hooks are removed on exit."""
    calls = dict.fromkeys(modules, 0)

    def make(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            calls[name] += 1
            if stop is not None and isinstance(out, Tensor) and stop(out):
                raise StopForward(token)

        return hook

    with forward_hooks([(m, make(name)) for name, m in modules.items()]):
        yield calls


def layer_outputs(
    model: nn.Module,
    inputs: Tensor,
    modules: Mapping[str, nn.Module],
    *,
    grad: bool | None,
    stop: Callable[[Tensor], bool] | bool = False,
) -> tuple[dict[str, Tensor], Any, dict[str, int]]:
    """One forward of ``model`` recording the output of each module (:func:`capture`) and counting its calls:
    ``(acts, output, calls)``. The one way to capture a layer and stop the forward: with ``stop`` (``True``, or a
    test of a module's output) the forward ends after the first module output that passes, and ``output`` is
    ``None``."""
    token = object()
    test = (lambda out: True) if stop is True else (stop or None)
    output = None
    with capture(modules, grad=grad) as acts, watch(modules, test, token) as calls:
        try:
            output = model(inputs)
        except StopForward as err:
            if err.token is not token:
                raise
    return acts, output, calls


def module_outputs(model: nn.Module, inputs: Tensor, keep: Callable[[str, Tensor], Any]) -> list[tuple[str, Any]]:
    """One dry forward (no gradients) with every named module watched: ``(name, keep(name, output))`` for each
    module call whose output is a tensor, in the order the calls finish."""
    found: list[tuple[str, Any]] = []

    def make(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            if isinstance(out, Tensor):
                found.append((name, keep(name, out.detach())))

        return hook

    with forward_hooks([(m, make(name)) for name, m in model.named_modules() if name]), torch.no_grad():
        model(inputs)
    return found


@contextmanager
def forward_hooks(hooks: Sequence[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register each (module, forward hook) pair for the block; every hook is removed on exit, even after an error."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def replace_output(module: nn.Module, value: Tensor) -> Iterator[None]:
    """During the block, ``module`` returns ``value`` instead of its output (same shape)."""

    def hook(m: nn.Module, args: tuple, out: Any) -> Tensor:
        if not isinstance(out, Tensor) or out.shape != value.shape:
            raise ValueError(f"the layer returned {getattr(out, 'shape', type(out))}, expected {tuple(value.shape)}")
        return value

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class ModuleCall:
    """One call of a module seen by :func:`record_calls`: ``parent`` is the index of the call it happened in (None
    for the outermost); ``arg`` the only positional argument when it is a tensor and no keyword is given (else None);
    the ``_version`` counters say whether a tensor was changed in place since it was recorded."""

    name: str
    module: nn.Module
    parent: int | None
    arg: Tensor | None
    arg_version: int
    output: Tensor | None = None
    output_version: int = -1


def tensor_version(t: Tensor) -> int:
    """``t``'s in-place version counter (-1 for an inference tensor, which has none and cannot change outside
    inference mode)."""
    return -1 if t.is_inference() else t._version


@contextmanager
def record_calls(model: nn.Module) -> Iterator[list[ModuleCall]]:
    """Record every module call during forwards inside the block, in call order, with who called it and the tensors
    it took and returned (references, not copies: keep the block to one small batch). Hooks are removed on exit."""
    calls: list[ModuleCall] = []
    stack: list[int] = []
    handles = []

    def make(name: str) -> tuple[Callable, Callable]:
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            arg = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], Tensor) else None
            version = tensor_version(arg) if arg is not None else -1
            calls.append(ModuleCall(name, module, stack[-1] if stack else None, arg, version))
            stack.append(len(calls) - 1)

        def post(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            call = calls[stack.pop()]
            if isinstance(out, Tensor):
                call.output, call.output_version = out, tensor_version(out)

        return pre, post

    try:
        for name, m in model.named_modules():
            pre, post = make(name)
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        yield calls
    finally:
        for h in handles:
            h.remove()


def count_hooks(model: nn.Module) -> int:
    """Number of hooks registered on any module of ``model`` (0 for a clean model)."""
    total = 0
    for m in model.modules():
        for d in (
            m._forward_hooks,
            m._forward_pre_hooks,
            m._backward_hooks,
            getattr(m, "_backward_pre_hooks", {}),
            getattr(m, "_state_dict_hooks", {}),
        ):
            total += len(d)
    return total


# --- rectifiers with a modified backward (guided backprop, deconvnet) ------------------------------

BackwardRule = Callable[[Tensor, Tensor], Tensor]  # (grad_out, pass_mask) -> grad_in


class _Rectifier(torch.autograd.Function):
    """clamp(x, lo, hi) forward; a given rule maps the output gradient to the input gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float | None, rule: BackwardRule) -> Tensor:  # type: ignore[override]
        mask = x > lo if hi is None else (x > lo) & (x < hi)
        ctx.save_for_backward(mask)
        ctx.rule = rule
        return x.clamp(min=lo) if hi is None else x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return ctx.rule(grad, mask), None, None, None


# what counts as a rectifier (ReLU-type call with lower bound 0), for every method that changes rectifiers
RECTIFIERS: frozenset = frozenset(
    (F.relu, torch.relu, Tensor.relu, torch.relu_, Tensor.relu_, F.relu6, F.hardtanh, F.hardtanh_)
)
_ALWAYS_INPLACE = frozenset((torch.relu_, Tensor.relu_, F.hardtanh_))


def rectifier_bounds(func: Callable, args: tuple, kwargs: dict) -> tuple[float, float | None, bool] | None:
    """(lo, hi, inplace) of a rectifier call, else None: ``F.relu``, ``torch.relu(_)``, ``Tensor.relu(_)``
    (0, None), ``F.relu6`` (0, 6) and ``F.hardtanh(_)`` with ``min_val == 0`` (0, max_val): what ``nn.ReLU``,
    ``nn.ReLU6`` and their in-place variants call. The one matcher of the package (guided backprop, LRP)."""
    if func not in RECTIFIERS:
        return None

    def arg(i: int, key: str, default: Any) -> Any:
        return kwargs.get(key, args[i] if len(args) > i else default)

    if func in (F.hardtanh, F.hardtanh_):
        if arg(1, "min_val", -1.0) != 0:
            return None
        return 0.0, float(arg(2, "max_val", 1.0)), func is F.hardtanh_ or bool(arg(3, "inplace", False))
    hi = 6.0 if func is F.relu6 else None
    inplace = func in _ALWAYS_INPLACE or (func in (F.relu, F.relu6) and bool(arg(1, "inplace", False)))
    return 0.0, hi, inplace


class _RectifierMode(TorchFunctionMode):
    def __init__(self, rule: BackwardRule) -> None:
        super().__init__()
        self.rule = rule
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bounds = rectifier_bounds(func, args, kwargs) if args and isinstance(args[0], Tensor) else None
        if bounds is None or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        lo, hi, inplace = bounds
        x = args[0]
        self.count += 1
        out = _Rectifier.apply(x, lo, hi, self.rule)
        if inplace:  # keep the in-place contract: x holds the result, its graph goes through the rule
            return x.copy_(out)
        return out


@contextmanager
def rectifier_backward(rule: BackwardRule) -> Iterator[_RectifierMode]:
    """Replace the backward pass of every ReLU / ReLU6 call during the block, module or functional.

    Intercepts ``F.relu``, ``torch.relu(_)``, ``Tensor.relu(_)``, ``F.relu6`` and ``F.hardtanh`` with a
    lower bound of 0 (what ``nn.ReLU``, ``nn.ReLU6`` and inplace variants call) through a
    ``TorchFunctionMode``; no module is touched. The mode's ``count`` says how many calls it changed.
    """
    mode = _RectifierMode(rule)
    with mode:
        yield mode
