"""What a method call costs, in model evaluations per image: printed (with seconds) before a long run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    """What one call of a method costs per image, in model evaluations (printed before a run, with seconds).

    ``forwards``: inference passes; ``backwards``: forward+backward passes; ``per_channel``: more forwards per
    channel K of the method's layer (Score-CAM, Ablation-CAM), ``tail`` when they run only the model's part after
    the layer (then ``tail_fraction``, when measured, is the cost of one such evaluation relative to a forward);
    ``lower``: the hyperparameter that lowers the cost, for the hint ``--set method.<lower>=...``.
    """

    forwards: float = 0.0
    backwards: float = 0.0
    per_channel: float = 0.0
    tail: bool = False
    tail_fraction: float | None = None
    lower: str | None = None
    note: str = ""

    def evaluations(self, channels: int | None = None) -> float | None:
        """Model evaluations per image (None when it depends on an unknown channel count)."""
        if self.per_channel and channels is None:
            return None
        return self.forwards + self.backwards + self.per_channel * (channels or 0)

    def describe(self, channels: int | None = None) -> str:
        """E.g. ``"50 forward+backward"``, ``"1000 forward"``, ``"K + 1 forward (K: channels at the layer)"``."""
        parts = []
        if self.backwards:
            parts.append(f"{_count(self.backwards)} forward+backward")
        fwd = self.forwards
        if self.per_channel and channels is not None and not self.tail:
            fwd += self.per_channel * channels
        if self.per_channel and channels is None:
            k = "K" if self.per_channel == 1 else f"{_count(self.per_channel)} K"
            what = "tail forward" if self.tail else "forward"
            parts.append(f"{k}{f' + {_count(fwd)}' if fwd else ''} {what} (K: channels at the layer)")
        elif fwd:
            parts.append(f"{_count(fwd)} forward")
        if self.per_channel and channels is not None and self.tail:
            parts.append(f"{_count(self.per_channel * channels)} tail forward (of the model after the layer)")
        text = " + ".join(parts) or "no model evaluation"
        return f"{text} ({self.note})" if self.note else text

    def seconds(self, forward: float, forward_backward: float, channels: int | None = None) -> float | None:
        """Estimated seconds per image from the measured seconds of one ``forward`` and one ``forward_backward``."""
        if self.per_channel and channels is None:
            return None
        per = forward * (self.tail_fraction if self.tail and self.tail_fraction is not None else 1.0)
        return self.forwards * forward + self.backwards * forward_backward + self.per_channel * (channels or 0) * per


def _count(v: float) -> str:
    return f"{v:g}"
