"""The tiny CNN/BNN models of issue 5 side by side: accuracy and accelerator estimates.

    python -m codesign.bench.cnn_models [--quick]

Accuracy on scikit-learn's digits (first 1400 train, 397 test; one torch thread, seed 0):

* mpcnn fp32 (plain torch twin), and through ``codesign quantize mpcnn --budget
  avg-bits=B`` for B in 3, 3.5, 4, 5: the mixed-precision allocation (Hessian HVP
  sensitivity + exact MCKP) next to uniform 4- and 8-bit weights and the widest uniform
  width within the budget, all fine-tuned alike from the same 8-bit baseline;
* ``codesign prune mpcnn``: ALCS (SIMD-group ADMM under latency budgets) against
  unstructured magnitude pruning at the same density;
* the Bi-Real BNN with and without the latent-weight branch (``codesign train bnn``; three
  seeds each).

Estimates (``codesign build mpcnn|bnn --board zcu102|zcu111 --no-csim``, report.json's
``dataflow``: Yosys-calibrated MVAU model, exact folding search within 85 %): latency,
throughput, power, LUT/FF/DSP/BRAM18. These are the cost model's estimates at the assumed
clock, not measurements on a board.

``--quick`` shortens every training (for a smoke run; the numbers are then not the ones
to quote).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _pct(x: float) -> str:
    return f"{100 * x:6.2f} %"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short trainings (smoke run)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from codesign.accel import flow
    from codesign.accel.mp_flow import quantize_mpcnn
    from codesign.accel.prune_flow import prune_mpcnn
    from codesign.quantize import bnn
    from codesign.quantize import mpcnn as M

    ep = 4 if args.quick else 20
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        print("== mpcnn (tiny, digits)")
        fp = M.build_mpcnn_fp32(0)
        r = M.train_mpcnn(fp, epochs=ep, seed=0)
        print(f"  fp32 (torch twin)                {_pct(r.test_acc)}")
        print("  mixed precision vs uniform widths, by average-bits budget (MCKP exact; all rows fine-tuned alike)")
        for budget in ((3.5,) if args.quick else (3.0, 3.5, 4.0, 5.0)):
            q = quantize_mpcnn(f"avg-bits={budget}", td / f"q{budget}", epochs=ep,
                               finetune_epochs=1 if args.quick else 4).result
            for c in q["configs"]:
                b = ", ".join(str(c["bits"][n]) for n in M.LAYERS)
                print(f"    {budget:4.1f} bits  {c['name']:15s} [{b}]  {_pct(c['test_acc'])}  {c['cost']:>9,.0f} weight "
                      f"bits ({'within' if c['within_budget'] else 'over'} budget)")
            g = [q["allocation"]["greedy"]["choice"][n] for n in M.LAYERS]
            print(f"    {'':9s}  (greedy MCKP: {g}, Omega {q['allocation']['greedy']['omega']:.4g} vs exact "
                  f"{q['allocation']['exact']['omega']:.4g})")
        print(f"  (8-bit baseline before fine-tuning {_pct(q['baseline_test_acc'])})")
        p = prune_mpcnn("0.05,0.1,0.15,0.2", td / "p", epochs=ep, admm_iters=2 if args.quick else 4,
                        finetune_epochs=1 if args.quick else 5).result
        print(f"  pruning (sparse MVAU {p['pe']}x{p['simd']} at {p['clock_mhz']:g} MHz; dense "
              f"{p['dense_latency_ms']:.4g} ms, {_pct(p['dense_test_acc'])})")
        print("    budget ms   ALCS ms  ALCS acc   density | magnitude ms  magnitude acc")
        for b in p["budgets"]:
            a, m = b["alcs"], b["magnitude"]
            print(f"    {b['budget_ms']:9.3g} {a['exact_latency_ms']:9.4g}  {_pct(a['test_acc'])} {100 * a['density']:7.1f} % |"
                  f" {m['latency_ms']:12.4g}  {_pct(m['test_acc'])}")

        print("\n== Bi-Real BNN (tiny, digits), 3 seeds")
        bt = bnn.train_bnn("tiny", latent_branch=True, seeds=(0, 1, 2), epochs=3 if args.quick else 15)
        for k, label in (("with_branch", "with the latent branch"), ("without_branch", "without")):
            v = bt[k]
            print(f"  {label:24s} {' / '.join(_pct(a) for a in v['acc'])}   mean {_pct(v['mean'])} "
                  f"± {100 * v['std']:.2f}")

        print("\n== Estimates (dataflow cost model; Yosys-calibrated MVAU; 85 % limit; 214 MHz assumed)")
        print("  model  board    latency_ms        fps   power_W    LUT        FF       DSP  BRAM18   II")
        for model in ("mpcnn", "bnn"):
            for board in ("zcu102", "zcu111"):
                out = td / f"{model}-{board}"
                flow.build(model, board, out=out, csim=False)
                rep = json.loads((out / "report.json").read_text())
                res = rep["resources"]
                print(f"  {model:6s} {board:7s} {rep['latency_ms']:10.4g} {rep['fps']:10,.0f} {rep['power_w']:9.2f} "
                      f"{res['lut']:>9,} {res['ff']:>9,} {res['dsp']:>5,} {res['bram18']:>7,} "
                      f"{rep['cycles']['ii'] if isinstance(rep.get('cycles'), dict) and 'ii' in rep['cycles'] else '-'}")
    print(f"\n(total {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
