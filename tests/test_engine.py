"""The shared perturbation engine: chunking, inference mode, channels_last, several targets, baselines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seewhy import engine
from seewhy.engine import (
    batch_size_for,
    default_batch_size,
    evaluate,
    evaluate_masks,
    generator,
    make_baseline,
    prefers_channels_last,
    resolve_score,
)
from seewhy.targets import make_target


class Recorder(nn.Module):
    """A small conv net that records, for every forward, the batch size, inference mode and memory format."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self.calls.append((x.shape[0], torch.is_inference_mode_enabled(), cl))
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def _rows(n: int = 23, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_scores_match_a_plain_forward_for_any_batch_size() -> None:
    model = Recorder().double()
    rows = _rows(dtype=torch.float64)
    sample = torch.arange(23) % 4
    target = make_target([0, 3, 1, 4], 4)
    expected = model(rows).gather(1, torch.tensor([0, 3, 1, 4])[sample][:, None]).squeeze(1)
    for size in (1, 7, 64):
        model.calls.clear()
        got = evaluate(model, rows, sample, target, like=rows[:1], batch_size=size)
        torch.testing.assert_close(got, expected.detach())
        assert [c[0] for c in model.calls] == [min(size, 23 - i) for i in range(0, 23, size)]


def test_runs_in_inference_mode_and_returns_a_normal_tensor() -> None:
    model, rows = Recorder(), _rows()
    out = evaluate(model, rows, torch.zeros(23, dtype=torch.long), make_target(2, 1), like=rows[:1], batch_size=8)
    assert all(c[1] for c in model.calls)
    assert not out.is_inference() and out.shape == (23,)
    out.add_(1)  # usable outside inference mode


def test_channels_last_for_conv_models_unless_told_otherwise() -> None:
    model, rows = Recorder(), _rows()
    assert prefers_channels_last(model, rows)
    assert not prefers_channels_last(model, rows.double())
    assert not prefers_channels_last(nn.Sequential(nn.Flatten(), nn.Linear(108, 2)), rows)
    t, s = make_target(0, 1), torch.zeros(23, dtype=torch.long)
    auto = evaluate(model, rows, s, t, like=rows[:1], batch_size=8)
    assert all(c[2] for c in model.calls)
    model.calls.clear()
    plain = evaluate(model, rows, s, t, like=rows[:1], batch_size=8, channels_last=False)
    assert not any(c[2] for c in model.calls)
    torch.testing.assert_close(auto, plain, rtol=1e-5, atol=1e-6)


def test_several_targets_share_the_forward_passes() -> None:
    model, rows = Recorder(), _rows()
    sample = torch.arange(23) % 2
    targets = [make_target([0, 1], 2), make_target(4, 2), make_target(lambda out: out.sum(1), 2)]
    both = evaluate(model, rows, sample, targets, like=rows[:1], batch_size=5)
    assert both.shape == (3, 23) and len(model.calls) == 5
    for i, t in enumerate(targets):
        torch.testing.assert_close(both[i], evaluate(model, rows, sample, t, like=rows[:1], batch_size=5))


def test_probability_scores_and_score_modes() -> None:
    model, rows = Recorder(), _rows()
    s, t = torch.zeros(23, dtype=torch.long), make_target(3, 1)
    p = evaluate(model, rows, s, t, like=rows[:1], score="probability")
    torch.testing.assert_close(p, model(rows).softmax(1)[:, 3].detach())
    assert resolve_score("auto", t) == "probability"
    assert resolve_score("auto", make_target(lambda o: o[:, 0], 1)) == "logit"
    with pytest.raises(ValueError, match="callable target"):
        resolve_score("probability", make_target(lambda o: o[:, 0], 1))
    with pytest.raises(ValueError, match="unknown score"):
        resolve_score("softmax", t)
    with pytest.raises(ValueError, match="score must be"):
        evaluate(model, rows, s, t, like=rows[:1], score="softmax")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, rows, s, t, like=rows[:1], batch_size=0)


def test_masks_keep_exact_pixels_or_blend() -> None:
    x = _rows(2)
    base = torch.full_like(x, -7.0)
    seen: list[torch.Tensor] = []

    def model(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.clone())
        return z.flatten(1)[:, :3]

    keep = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    sample = torch.tensor([0, 1, 1, 0])
    evaluate_masks(model, x, base, lambda idx: keep[idx], sample, make_target(0, 2), batch_size=3)
    rows = torch.cat(seen)
    assert torch.equal(rows, torch.where(keep, x[sample], base[sample]))
    seen.clear()
    soft = keep.float() * 0.25
    evaluate_masks(model, x, base, lambda idx: soft[idx], sample, make_target(0, 2), batch_size=4)
    torch.testing.assert_close(torch.cat(seen), x[sample] * soft + base[sample] * (1 - soft))


def test_default_batch_size_follows_a_memory_budget() -> None:
    assert default_batch_size(torch.zeros(1, 3, 224, 224)) == 5
    assert default_batch_size(torch.zeros(1, 3, 32, 32)) == 256
    assert default_batch_size(torch.zeros(1, 3, 2048, 2048)) == 1


class Timed(nn.Module):
    """A model whose calls advance a clock: a fixed cost per call plus a penalty above 8 rows, so that the cost per
    image is lowest at batch 8."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 6 * 6, 5)
        self.sizes: list[int] = []
        self.now = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        self.now += 2.0 + (0.5 * (x.shape[0] - 8) if x.shape[0] > 8 else 0.0)
        return self.fc(x.flatten(1))


def test_long_runs_take_the_batch_size_measured_fastest_on_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model, like = Timed(), _rows(1)
    monkeypatch.setattr(engine, "_clock", lambda: model.now)
    assert batch_size_for(model, like, engine.MEASURE_MIN_ROWS - 1) == default_batch_size(like)  # short: no timing
    assert model.sizes == []
    assert batch_size_for(model, like, engine.MEASURE_MIN_ROWS) == 8
    measured = len(model.sizes)
    assert measured > 0 and max(model.sizes) <= 4 * default_batch_size(like)
    assert batch_size_for(model, like, 10_000) == 8 and len(model.sizes) == measured  # measured once per model
    assert batch_size_for(model, like, 3) == 8  # and then used for short runs too
    rows = _rows(300)
    sample = torch.arange(300)
    model.sizes.clear()
    got = evaluate(model, rows, sample, make_target(1, 300), like=rows[:1])
    assert set(model.sizes) == {8, 300 % 8}  # the run itself used the measured size
    torch.testing.assert_close(got, model(rows)[:, 1])  # and every row's score is its own


def test_baselines() -> None:
    x = _rows(2)
    assert torch.equal(make_baseline(x, 0.0), torch.zeros_like(x))
    assert torch.equal(make_baseline(x, 1.5), torch.full_like(x, 1.5))
    m = make_baseline(x, "mean")
    torch.testing.assert_close(m[:, :, 2, 3], x.mean(dim=(2, 3)))
    assert make_baseline(x, "blur", blur_sigma=1.0).shape == x.shape
    t = torch.arange(3.0).view(3, 1, 1)
    assert torch.equal(make_baseline(x, t)[1, 2], torch.full((6, 6), 2.0))
    with pytest.raises(ValueError, match="does not broadcast"):
        make_baseline(x, torch.zeros(4, 6, 6))
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline(x, "grey")


def test_generator_is_seeded() -> None:
    g1, s1 = generator(3)
    g2, _ = generator(3)
    assert s1 == 3 and torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    _, drawn = generator(None)
    assert isinstance(drawn, int)
    with pytest.raises(TypeError, match="seed"):
        generator(1.5)  # type: ignore[arg-type]


def test_progress_bar_can_be_forced() -> None:
    model, rows = Recorder(), _rows()
    evaluate(model, rows, torch.zeros(23, dtype=torch.long), make_target(0, 1), like=rows[:1], progress=True)


def test_derive_seed_is_a_pure_function_of_the_seed_and_keys() -> None:
    from seewhy.engine import derive_seed, row_generator

    assert derive_seed(3, 1, 2) == derive_seed(3, 1, 2)
    assert len({derive_seed(3, 1, 2), derive_seed(3, 2, 1), derive_seed(4, 1, 2), derive_seed(3, 1)}) == 4
    assert torch.equal(torch.rand(3, generator=row_generator(3, 7)), torch.rand(3, generator=row_generator(3, 7)))
