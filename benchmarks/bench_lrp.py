"""Milliseconds per image for every LRP preset on efficientnet_lite0 at 224 px, next to one forward+backward.

Run:  python benchmarks/bench_lrp.py [--batch 4] [--repeat 3] [--threads 2]

Each preset runs twice: with the model's default canonizers ("auto": BatchNorms kept, pass rule) and with
every BatchNorm merged (``canonizers=[MergeBatchNorm()]``). The target is the issue's budget of 1.4x one
forward+backward (a training-style step: backward to the input and every parameter). Writes
benchmarks/results/lrp.md.
"""

from __future__ import annotations

from common import RESULTS, forward_backward_time, setup, timed, write_table

import seewhy
from seewhy.methods.lrp import PRESETS, MergeBatchNorm


def main() -> None:
    args, model, x, target = setup(__doc__)
    b = x.shape[0]

    ref = forward_backward_time(model, x, args.repeat)
    rows = [("forward+backward (reference)", ref, "")]
    sec = timed(lambda: seewhy.explain(model, x, "input_x_gradient", target=target), args.repeat) / b
    rows.append(("seewhy input_x_gradient", sec, ""))
    for canon in ("auto", "merged"):
        for name in PRESETS:
            params: dict = {"composite": name, "ledger": False}
            if canon == "merged":
                params["canonizers"] = [MergeBatchNorm()]
            sec = timed(lambda params=params: seewhy.explain(model, x, "lrp", target=target, **params),
                        args.repeat) / b
            rows.append((f"seewhy lrp {name}", sec, f"canonizers={canon}"))
    sec = timed(lambda: seewhy.explain(model, x, "lrp", target=target), args.repeat) / b
    rows.append(("seewhy lrp defaults + ledger", sec, "composite=auto (epsilon_gamma_box), canonizers=auto"))
    note = f"efficientnet_lite0, 224x224, batch {b}; median of {args.repeat} runs"
    write_table(rows, ref, "forward+backward", note, RESULTS / "lrp.md")


if __name__ == "__main__":
    main()
