"""Wall time of ``codesign build fqbert`` and the IR reference's speed against qonnx.

    python -m codesign.bench.build_fqbert [--config tiny|minilm|base] [--board zcu111] [--reps 3]

Runs the real build (quantize -> lower -> golden -> emit -> csim -> report) into a
temporary folder and prints each step's time (the issue's goal for ``--config base``:
<= 60 s including csim of a few golden vectors; reported, not asserted). Then times the
numpy IR executor (``codesign.sim.run_ir.run_reference``) against qonnx's
``execute_onnx`` on the same lowered graph (``accel.onnx`` in the build) for one input,
checks that both give the same logit codes, and prints the ratio (goal: >= 5x).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", choices=("tiny", "minilm", "base"))
    ap.add_argument("--board", default="zcu111")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the executor timing (best is kept)")
    args = ap.parse_args(argv)

    from codesign.accel import flow
    from codesign.sim.run_ir import run_reference

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "build"
        t0 = time.perf_counter()
        flow.build("fqbert", args.board, out=out, config=args.config, progress=lambda msg: print(msg, flush=True))
        wall = time.perf_counter() - t0
        report = json.loads((out / "report.json").read_text())
        print(f"\nbuild fqbert --config {args.config} --board {args.board}: {wall:.1f} s wall "
              f"(csim passed: {report['csim'].get('passed')}, cases: {report['csim'].get('cases')})")

        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx

        model = ModelWrapper(str(out / "accel.onnx"))
        x_name = model.graph.input[0].name
        y_name = model.graph.output[0].name
        golden = sorted((out / "golden").glob("in_*.npy"))[0]
        x = np.load(golden)[:1].astype(np.float32)

        def best(fn):
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                res = fn()
                times.append(time.perf_counter() - t)
            return min(times), res

        from codesign.accel import ir as irmod

        ir_in = irmod.load(out / "ir").inputs[0].onnx_name
        t_ref, ref = best(lambda: run_reference(out / "ir", {ir_in: x}))
        t_onnx, onnx_out = best(lambda: execute_onnx(model, {x_name: x})[y_name])
        ref_y = next(iter(ref.values()))
        same = np.array_equal(np.asarray(ref_y, np.float64), np.asarray(onnx_out, np.float64))
        print(f"IR reference executor: {t_ref * 1e3:.1f} ms/sample; qonnx execute_onnx: {t_onnx * 1e3:.1f} ms/sample; "
              f"{t_onnx / t_ref:.1f}x faster; same outputs: {same}")
        return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
