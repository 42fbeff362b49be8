"""``codesign build`` and ``codesign predict``: the end-to-end flow.

:func:`build` runs the stages in order, each announced through ``progress`` as
``[k/6] step: what (seconds)``:

1. **quantize** (zoo model ``fqbert``: build the FQ-BERT config, seed torch, calibrate on
   synthetic sentiment sentences, export QONNX) or **import** (a ``.onnx`` file: read it);
2. **lower**: QONNX → integer IR (``ir/``); the cleaned QONNX model → ``model.onnx``;
3. **golden**: :func:`~codesign.sim.run_ir.run_reference` on a few deterministic inputs
   → ``golden/`` (inputs and outputs as ``.npy``, ``golden.json``);
4. **emit**: HLS C++ project → ``hls/`` (``codesign.hls.emit``; skipped, and said so in
   the report, where the emitter is not installed yet). CNN / MLP / BNN builds first run
   the dataflow folding search (:func:`codesign.accel.folding.plan`; ``target_fps``: the
   fewest LUTs meeting that rate) and emit every matmul / conv2d kernel with the chosen
   (PE, SIMD) (or the nearest folding the kernel accepts); the report shows the same search
   and, per layer, the folding actually emitted (``dataflow.emitted_folding``);
5. **csim**: g++ C-simulation of the project against the golden vectors (``csim=False``
   skips it); any mismatch fails the build (:class:`CsimMismatchError`, exit 1);
6. **report**: ``report.json`` and ``report.md`` (:mod:`codesign.accel.report`).

Everything is written into :func:`~codesign.accel.outdir.atomic_output_dir`: a failed or
interrupted build leaves no output folder (and an existing one untouched). The artefacts
``model.onnx``, ``ir/``, ``golden/`` and ``hls/`` are deterministic: the same command
gives byte-identical files; timings live only in ``report.json`` (``seconds``) and
``report.md``.

FQ-BERT's split follows the paper: the embeddings (table gathers, sums, LayerNorm) run on
the host and are not lowered; the IR starts at the embedding LayerNorm's int8 output
(graph input ``embeddings``, float32 values ``code·scale``, quantized by an exact ``Quant``)
and ends at the classifier's integer logit codes (``logit_codes``; the logits are
``logit_codes · acc_scale``, a host multiply). ``model.onnx`` is the whole cleaned graph,
``accel.onnx`` the lowered part.

Heavy modules (torch, onnx, qonnx) are imported inside the functions.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from codesign.accel.boards import Board, get_board

__all__ = ["build", "predict", "BuildResult", "FlowError", "CsimMismatchError", "EngineUnavailableError",
           "ZOO", "CONFIGS", "DEFAULT_CLOCK_MHZ", "STEPS", "default_out", "hls_emitter"]

#: Zoo models ``build`` knows by name.
ZOO: tuple[str, ...] = ("fqbert", "bnn", "mpcnn")
#: FQ-BERT configurations (``codesign.quantize.fqbert.PRESETS``).
CONFIGS: tuple[str, ...] = ("tiny", "minilm", "base")
#: configurations per zoo model (the first is the default where ``tiny`` is not given)
ZOO_CONFIGS: dict[str, tuple[str, ...]] = {"fqbert": CONFIGS, "bnn": ("tiny", "resnet18"), "mpcnn": ("tiny",)}
#: ``build bnn`` / ``build mpcnn`` without --weights: training epochs of the quick model
CNN_BUILD_EPOCHS = 5
#: golden cases of the CNN zoo models: the first test digits
CNN_CASES = 8
#: FQ-BERT's clock on both boards (Liu et al., DATE 2021).
DEFAULT_CLOCK_MHZ = 214.0
STEPS = ("quantize", "lower", "golden", "emit", "csim", "report")

#: golden cases per build
FQBERT_CASES = 4
USER_CASES = 8
#: calibration: batches x sentences of synthetic sentiment data
CALIB_BATCHES, CALIB_BATCH = 4, 8

EXIT_FAILURE = 1
EXIT_USAGE = 2


class FlowError(Exception):
    """A build/predict failure to report as one line, with the CLI exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(" ".join(str(message).split()))
        self.code = code


class CsimMismatchError(FlowError):
    """C-simulation disagrees with the reference (exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAILURE)


class EngineUnavailableError(FlowError):
    """The requested engine does not exist yet (exit 2)."""


@dataclass
class BuildResult:
    out: Path
    report: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def _quiet(_msg: str) -> None:
    pass


def hls_emitter():
    """The ``codesign.hls.emit`` module, or None while it does not exist."""
    try:
        import importlib
        return importlib.import_module("codesign.hls.emit")
    except ModuleNotFoundError as e:
        if e.name in ("codesign.hls.emit",):
            return None
        raise


# --------------------------------------------------------------------------------------
# arguments


@dataclass(frozen=True)
class _Source:
    kind: str  # "zoo" | "file"
    name: str  # zoo name or file stem
    path: Path | None = None


def _source(model: str | os.PathLike) -> _Source:
    text = os.fspath(model)
    if text.strip().lower() in ZOO and not Path(text).is_file():
        return _Source("zoo", text.strip().lower())
    p = Path(text)
    if p.is_file():
        return _Source("file", p.stem, p)
    if p.exists():
        raise FlowError(f"model '{text}' is not a file (give a zoo model: {', '.join(ZOO)}; or a .onnx file)")
    if p.suffix.lower() == ".onnx" or os.sep in text:
        raise FlowError(f"model file '{text}' does not exist")
    raise FlowError(f"unknown model {text!r} (zoo models: {', '.join(ZOO)}; or the path of a .onnx file)")


def default_out(model: str | os.PathLike, board: str | Board) -> Path:
    """``build/<model>-<board>`` (a file: its stem)."""
    src = _source(model)
    b = board if isinstance(board, Board) else get_board(board)
    return Path("build") / f"{src.name}-{b.name}"


def _write_model(mw, path: Path) -> None:
    path.write_bytes(mw.model.SerializeToString(deterministic=True))


# --------------------------------------------------------------------------------------
# step 1: quantize / import


@dataclass
class _Front:
    full: Any  # ModelWrapper of the whole QONNX graph
    accel: Any  # ModelWrapper (or ModelProto) to lower
    summary: str
    params: dict | None = None  # FQ-BERT integer params
    dataset: Any = None
    config: str | None = None
    samples: np.ndarray | None = None  # golden inputs (float32, batch first), else seeded random
    lower_kw: dict | None = None  # options of codesign.accel.lower.lower


def _fqbert_model(config: str, seed: int, weights: str | os.PathLike | None):
    """The eval FQBert to build and a description of its weights.

    ``weights``: a ``codesign train`` checkpoint (its own calibrated scales). Otherwise
    ``minilm`` loads the pretrained all-MiniLM-L6-v2 when the optional package is
    installed, and every config falls back to seeded random weights; both are calibrated
    on synthetic sentences.
    """
    import torch

    from codesign.quantize.data import SyntheticSentiment
    from codesign.quantize.fqbert import FQBert, FQBertConfig

    if weights is not None:
        from codesign.quantize.train import load_checkpoint

        p = Path(weights)
        if not p.is_file():
            raise FlowError(f"--weights '{p}' does not exist")
        try:
            model = load_checkpoint(p)
        except Exception as e:  # a damaged or foreign file: one line, exit 2
            raise FlowError(f"--weights '{p}' is not a checkpoint written by 'codesign train' "
                            f"({type(e).__name__})") from None
        shape = ("vocab_size", "hidden", "layers", "heads", "ffn", "max_seq", "type_vocab", "weight_bits")
        want = FQBertConfig.preset(config).as_dict()
        if any(model.cfg.as_dict()[k] != want[k] for k in shape):
            raise FlowError(f"--weights '{p}' holds a model that is not the '{config}' config "
                            f"({model.cfg.layers} layers, hidden {model.cfg.hidden}, seq {model.cfg.max_seq}); "
                            f"pass the matching --config")
        return model, f"weights from {p.name} (trained, calibrated)"
    torch.manual_seed(seed)
    model, what = None, "random weights"
    if config == "minilm":
        from codesign.quantize import minilm

        try:
            import copy

            model, tok = minilm.load_minilm()
            # post-training quantization on generated text (about 2 minutes on 2 cores);
            # `codesign train fqbert --config minilm` distils further, --weights builds it
            minilm.ptq_minilm(model, copy.deepcopy(model), minilm.SyntheticText(tok, seed=seed))
            return model, "pretrained all-MiniLM-L6-v2 weights, PTQ (GPTQ, calibrated ranges) on generated text"
        except minilm.MiniLMUnavailable:
            what = f"random weights (pretrained MiniLM not installed: {minilm.INSTALL_HINT})"
    if model is None:
        model = FQBert(FQBertConfig.preset(config))
    cfg = model.cfg
    ds = SyntheticSentiment(seq_len=cfg.max_seq, vocab_size=cfg.vocab_size)
    ids, _ = ds.sample(CALIB_BATCHES * CALIB_BATCH, seed=seed)
    model.calibrate([torch.from_numpy(ids[i:i + CALIB_BATCH]) for i in range(0, len(ids), CALIB_BATCH)])
    return model, f"{what}, calibrated on {len(ids)} synthetic sentences"


def _fqbert_front(config: str, seed: int, weights: str | os.PathLike | None = None) -> _Front:
    from codesign.quantize.data import SyntheticSentiment
    from codesign.quantize.export import build_qonnx

    model, what = _fqbert_model(config, seed, weights)
    cfg = model.cfg
    ds = SyntheticSentiment(seq_len=cfg.max_seq, vocab_size=cfg.vocab_size)
    params = model.integer_params()
    full = build_qonnx(params)
    accel = _fqbert_accel_graph(full, params)
    summary = (f"FQ-BERT {config} ({cfg.layers} layers, hidden {cfg.hidden}, seq {cfg.max_seq}, "
               f"{cfg.weight_bits}-bit weights), seed {seed}, {what}")
    return _Front(full, accel, summary, params=params, dataset=ds, config=config)


FQBERT_ACCEL_INPUT = "embeddings"


def _fqbert_accel_graph(full, params: dict):
    """The lowered part of FQ-BERT: from the embedding LayerNorm's output (a float graph
    input ``embeddings`` holding ``code·s`` values, quantized by an exact int8 ``Quant``)
    to the classifier's logit codes (the final host ``Mul`` by the logit scale dropped)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from qonnx.core.modelwrapper import ModelWrapper

    from codesign.quantize.export import CODES_NAME, OUTPUT_NAME, QONNX_DOMAIN

    g = full.graph
    nodes = list(g.node)
    cut = [i for i, n in enumerate(nodes) if "emb_out" in n.output]
    if len(cut) != 1:
        raise FlowError("internal: FQ-BERT graph has no unique 'emb_out' tensor", EXIT_FAILURE)
    keep = [n for n in nodes[cut[0] + 1:] if OUTPUT_NAME not in n.output]
    s = np.float32(params["embeddings"]["ln"]["out_scale"])
    consts = {"embeddings_scale": s, "embeddings_zeropt": np.float32(0), "embeddings_bitwidth": np.float32(8)}
    q = helper.make_node("Quant", [FQBERT_ACCEL_INPUT, *consts], ["emb_out"], name="Quant_embeddings",
                         domain=QONNX_DOMAIN, signed=1, narrow=0, rounding_mode="ROUND")
    used = {i for n in keep for i in n.input}
    inits = [t for t in g.initializer if t.name in used]
    inits += [numpy_helper.from_array(np.asarray(v), name=k) for k, v in consts.items()]
    produced = {o for n in keep for o in n.output} | {"emb_out"}
    vi = [v for v in g.value_info if v.name in produced and v.name != CODES_NAME]
    cfg = params["config"]
    shape = [1, int(cfg["max_seq"]), int(cfg["hidden"])]
    graph = helper.make_graph([q, *keep], "fqbert_accel",
                              [helper.make_tensor_value_info(FQBERT_ACCEL_INPUT, TensorProto.FLOAT, shape)],
                              [o for o in g.output if o.name == CODES_NAME], initializer=inits, value_info=vi)
    proto = helper.make_model(graph, opset_imports=list(full.model.opset_import),
                              producer_name="codesign.accel.flow")
    proto.ir_version = full.model.ir_version
    onnx.checker.check_model(proto)
    return ModelWrapper(proto)


def _onnx_front(path: Path, summary: str, samples, config: str) -> _Front:
    from qonnx.core.modelwrapper import ModelWrapper

    mw = ModelWrapper(str(path))
    # thresholds for every quantizer: exact against QONNX's rounding (ties to even), as
    # FINN lowers activations; docs/ir.md "exactness"
    return _Front(mw, mw, summary, config=config, samples=samples, lower_kw={"threshold_all": True})


def _bnn_front(config: str, seed: int, weights: str | os.PathLike | None) -> _Front:
    """The Bi-Real BNN (:mod:`codesign.quantize.bnn`): ``tiny`` trained for
    :data:`CNN_BUILD_EPOCHS` epochs on digits with the latent branch (or ``--weights``, a
    ``codesign train bnn`` checkpoint); ``resnet18`` with seeded random weights."""
    import tempfile

    import torch

    from codesign.quantize import bnn

    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise FlowError(f"--weights '{p}' does not exist")
        try:
            model = bnn.load_checkpoint(p, latent_branch=False)
        except Exception as e:
            raise FlowError(f"--weights '{p}' is not a checkpoint written by 'codesign train bnn' "
                            f"({type(e).__name__})") from None
        if model.config.name != config:
            raise FlowError(f"--weights '{p}' holds the '{model.config.name}' BNN; pass --config "
                            f"{model.config.name}")
        what = f"weights from {p.name}"
    elif config == "tiny":
        model, acc = bnn.train_one("tiny", seed, latent_branch=True, epochs=CNN_BUILD_EPOCHS)
        what = (f"trained {CNN_BUILD_EPOCHS} epochs with the latent branch, test accuracy {100 * acc:.2f} % "
                "(codesign train bnn trains longer)")
    else:
        model = bnn.build_bnn(config, seed)
        what = "random weights (build/estimate only)"
    model.eval()
    if config == "tiny":
        samples = bnn.digits()[2][:CNN_CASES].numpy().astype(np.float32)
    else:
        cfg = model.config
        g = torch.Generator().manual_seed(seed)
        samples = torch.rand((2, cfg.in_channels, cfg.input_size, cfg.input_size), generator=g).numpy()
    with tempfile.TemporaryDirectory() as td:
        bnn.export_bnn(model, Path(td) / "bnn.onnx")
        return _onnx_front(Path(td) / "bnn.onnx", f"Bi-Real BNN {config}, seed {seed}, {what}", samples, config)


#: ``build mpcnn`` without --weights: a mixed-precision assignment (an exact-MCKP answer of
#: ``codesign quantize mpcnn --budget avg-bits=3.5``), kept fixed so builds are reproducible
MPCNN_BUILD_BITS = {"conv1": 8, "b1c1": 4, "b1c2": 3, "down": 4, "b2c1": 3, "fc": 8}


def _mpcnn_front(config: str, seed: int, weights: str | os.PathLike | None) -> _Front:
    """The mixed-precision digits CNN (:mod:`codesign.quantize.mpcnn`): ``--weights`` (the
    ``model.pt`` of ``codesign quantize mpcnn``) or :data:`MPCNN_BUILD_BITS` trained for
    :data:`CNN_BUILD_EPOCHS` epochs."""
    import tempfile

    import torch

    from codesign.quantize import mpcnn as M

    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise FlowError(f"--weights '{p}' does not exist")
        try:
            ck = torch.load(str(p), map_location="cpu", weights_only=True)
            model = M.build_mpcnn(ck["bits"], ck["act_bits"], seed=seed)
            model.load_state_dict(ck["state_dict"])
        except Exception as e:
            raise FlowError(f"--weights '{p}' is not a model.pt written by 'codesign quantize mpcnn' "
                            f"({type(e).__name__})") from None
        what = f"weights from {p.name}"
    else:
        model = M.build_mpcnn(MPCNN_BUILD_BITS, seed=seed)
        r = M.train_mpcnn(model, epochs=CNN_BUILD_EPOCHS, seed=seed)
        what = f"trained {CNN_BUILD_EPOCHS} epochs, test accuracy {100 * r.test_acc:.2f} %"
    model.eval()
    bits = ", ".join(f"{n} {model.bits[n]}" for n in M.LAYERS)
    samples = M.digits()[2][:CNN_CASES].numpy().astype(np.float32)
    with tempfile.TemporaryDirectory() as td:
        M.export_mpcnn(model, Path(td) / "mpcnn.onnx")
        return _onnx_front(Path(td) / "mpcnn.onnx", f"mpcnn {config} (weight bits {bits}), seed {seed}, {what}",
                           samples, config)


def _zoo_front(name: str, config: str, seed: int, weights) -> _Front:
    if name == "bnn":
        return _bnn_front(config, seed, weights)
    if name == "mpcnn":
        return _mpcnn_front(config, seed, weights)
    return _fqbert_front(config, seed, weights)


def _file_front(path: Path) -> _Front:
    from codesign.accel.lower import _read  # OnnxReadError for missing/truncated/garbage files
    from qonnx.core.modelwrapper import ModelWrapper

    proto, _ = _read(str(path))
    mw = ModelWrapper(proto)
    n = len(mw.graph.node)
    return _Front(mw, mw, f"read '{path.name}' ({n} nodes)")


# --------------------------------------------------------------------------------------
# step 3: golden vectors


def _user_inputs(ir, seed: int, cases: int) -> dict[str, np.ndarray]:
    """Seeded uniform floats over each input quantizer's range (a little beyond, so that
    clipping is exercised), float32, ``cases`` on the batch axis."""
    from codesign.accel.ir import Scale

    rng = np.random.default_rng(seed)
    xs = {}
    for b in ir.inputs:
        shape = (cases, *ir.tensors[b.name].shape[1:])
        qs = [op for op in ir.consumers(b.name) if op.op == "quantize"]
        if qs:
            a = qs[0].attrs
            s = Scale.from_json(a, "quantize").array(len(shape), np.float64)
            from codesign.accel.ir import CodeType
            t = CodeType(a["bits"], a["signed"], a["narrow"])
            lo, hi = t.lo * s * 1.1, t.hi * s * 1.1
        else:
            lo, hi = -1.0, 1.0
        u = rng.random(shape)
        xs[b.name] = (lo + u * (hi - lo)).astype(np.float32)
    return xs


def _golden(front: _Front, ir, seed: int, gdir: Path) -> tuple[dict, dict, dict, str]:
    from codesign.sim.run_ir import run_reference

    extra: dict[str, np.ndarray] = {}
    if front.params is not None:
        from codesign.quantize import fqbert_ref
        from codesign.quantize.export import CODES_NAME

        tokens, labels = front.dataset.sample(FQBERT_CASES, seed=seed + 1)
        trace: dict = {}
        codes, logits = fqbert_ref.reference_forward(front.params, tokens, trace=trace)
        s = np.float32(front.params["embeddings"]["ln"]["out_scale"])
        emb = (trace["embeddings"].astype(np.float32) * s).astype(np.float32)
        inputs = {ir.inputs[0].name: emb}
        outs = run_reference(ir, inputs)
        # the IR (lowered from QONNX) against FQ-BERT's own integer reference
        if not np.array_equal(outs[CODES_NAME], codes.astype(np.float32)):
            raise FlowError("IR reference differs from FQ-BERT's integer reference (fqbert_ref) on the "
                            "golden sentences", EXIT_FAILURE)
        extra = {"tokens": tokens, "labels": labels, "logits": logits}
        what = f"{FQBERT_CASES} synthetic sentences (IR == fqbert_ref on the logit codes)"
    elif front.samples is not None:
        inputs = {ir.inputs[0].name: np.ascontiguousarray(front.samples, dtype=np.float32)}
        outs = run_reference(ir, inputs)
        what = f"{len(front.samples)} samples of the model's data"
    else:
        inputs = _user_inputs(ir, seed, USER_CASES)
        outs = run_reference(ir, inputs)
        what = f"{USER_CASES} seeded random inputs over the input quantizer's range"
    outputs = {b.name: outs[b.onnx_name] for b in ir.outputs}
    gdir.mkdir()
    manifest: dict[str, Any] = {"cases": int(next(iter(inputs.values())).shape[0]), "inputs": {}, "outputs": {},
                                "extra": {}}
    for kind, arrays, bounds in (("inputs", inputs, ir.inputs), ("outputs", outputs, ir.outputs)):
        for b in bounds:
            a = np.ascontiguousarray(arrays[b.name])
            np.save(gdir / f"{b.name}.npy", a, allow_pickle=False)
            manifest[kind][b.name] = {"onnx_name": b.onnx_name, "file": f"{b.name}.npy",
                                      "shape": list(a.shape), "dtype": str(a.dtype)}
    for k, a in extra.items():
        a = np.ascontiguousarray(a)
        np.save(gdir / f"{k}.npy", a, allow_pickle=False)
        manifest["extra"][k] = {"file": f"{k}.npy", "shape": list(a.shape), "dtype": str(a.dtype)}
    (gdir / "golden.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return inputs, outputs, manifest, what


# --------------------------------------------------------------------------------------
# build


def build(model: str | os.PathLike, board: str | Board, out: str | os.PathLike | None = None,
          config: str = "tiny", force: bool = False, csim: bool = True, seed: int = 0,
          clock_mhz: float = DEFAULT_CLOCK_MHZ, progress: Callable[[str], None] | None = None,
          weights: str | os.PathLike | None = None, sparse: tuple[int, int] | None = None,
          target_fps: float | None = None) -> BuildResult:
    """Build ``model`` (a zoo name or a ``.onnx`` path) for ``board`` into ``out``.

    ``target_fps``: (CNN / MLP / BNN builds) fold for this frame rate at the fewest LUTs
    instead of the smallest II (``codesign.accel.dataflow.search``); a rate no folding
    reaches within the resource limit is a :class:`FlowError` (exit 2, one line).

    Raises :class:`FlowError` (exit code in ``.code``) for bad arguments and failed
    checks, ``OnnxReadError``/``UnsupportedOpError``/``LoweringError`` from the lowering,
    ``OutputExistsError`` for an existing ``out`` without ``force``. Nothing is left
    behind on failure.
    """
    from codesign.accel.outdir import atomic_output_dir

    progress = progress or _quiet
    try:
        b = board if isinstance(board, Board) else get_board(board)
    except ValueError as e:
        raise FlowError(str(e)) from None
    src = _source(model)
    if src.kind == "zoo" and config not in ZOO_CONFIGS[src.name]:
        raise FlowError(f"unknown config {config!r} for {src.name} (supported: {', '.join(ZOO_CONFIGS[src.name])})")
    if weights is not None and src.kind != "zoo":
        raise FlowError("--weights applies to zoo models; a QONNX file carries its own weights")
    if not (isinstance(clock_mhz, (int, float)) and 0 < clock_mhz < 1000):
        raise FlowError(f"clock {clock_mhz!r} MHz out of range (0, 1000)")
    if target_fps is not None:
        if isinstance(target_fps, bool) or not isinstance(target_fps, (int, float)) or not 0 < target_fps < math.inf:
            raise FlowError(f"--target-fps {target_fps!r} must be a positive number")
        if src.kind == "zoo" and src.name == "fqbert":
            raise FlowError("--target-fps applies to CNN / MLP / BNN builds (the dataflow folding search); "
                            "fqbert's folding comes from the engine's search")
    out = Path(out) if out is not None else default_out(model, b)
    parent_existed = out.parent.exists()
    seconds: dict[str, float] = {}
    n = len(STEPS)

    def step(k: int, name: str, fn):
        t0 = time.perf_counter()
        detail = fn()
        seconds[name] = round(time.perf_counter() - t0, 3)
        progress(f"[{k}/{n}] {name}: {detail} ({seconds[name]:.2f} s)")

    state: dict[str, Any] = {}
    try:
        with atomic_output_dir(out, force) as stage:
            def s_front():
                state["front"] = f = (_zoo_front(src.name, config, seed, weights) if src.kind == "zoo"
                                      else _file_front(src.path))
                return f.summary

            step(1, "quantize" if src.kind == "zoo" else "import", s_front)
            if src.kind != "zoo":  # keep the report's step names stable
                seconds["quantize"] = seconds.pop("import")

            def s_lower():
                from qonnx.util.cleanup import cleanup_model

                from codesign.accel import ir as irm
                from codesign.accel.lower import lower

                f = state["front"]
                ir = lower(f.accel, name=src.name, **(f.lower_kw or {}))
                if sparse is not None:
                    from codesign.accel.passes import mark_sparse

                    ir = mark_sparse(ir, *sparse)
                irm.save(ir, stage / "ir")
                _write_model(cleanup_model(f.full), stage / "model.onnx")
                if f.params is not None:
                    from codesign.accel.host import HOST_DIR, write_fqbert_host

                    _write_model(cleanup_model(f.accel), stage / "accel.onnx")
                    write_fqbert_host(f.params, stage / HOST_DIR)
                state["ir"] = ir
                return f"{len(ir.ops)} IR ops, {len(ir.constants)} constants -> ir/, model.onnx"

            step(2, "lower", s_lower)

            def s_golden():
                inputs, outputs, manifest, what = _golden(state["front"], state["ir"], seed, stage / "golden")
                state.update(golden_inputs=inputs, golden_outputs=outputs, golden=manifest)
                return f"{what} -> golden/"

            step(3, "golden", s_golden)

            def s_emit():
                from codesign.accel import report as rp

                fold, fold_what = None, None  # FQ-BERT: the engine's folding, not the emitter's
                if rp.uses_dataflow(src.name, state["front"].params):
                    from codesign.accel import folding as F

                    state["plan"] = plan = F.plan(state["ir"], b, float(clock_mhz), limit=rp.DATAFLOW_LIMIT,
                                                  target_fps=target_fps)
                    if target_fps is not None and not plan.ok:
                        raise FlowError(f"--target-fps {target_fps:g}: {plan.error}")
                    fold = plan.hls_folding(state["ir"])
                    fold_what = (f"search's folding of {len(fold)} layers" if fold is not None
                                 else "PE = SIMD = 1 (the dataflow search chose no folding)")
                emit = hls_emitter()
                if emit is None:
                    state["hls"] = {"emitted": False, "reason": "HLS emission not available (codesign.hls.emit "
                                                                "does not exist yet)"}
                    state["emitted"] = {"folding": None, "note": "no HLS project (HLS emission not available)"}
                    return "skipped: HLS emission not available (codesign.hls.emit does not exist yet)"
                kw = {}
                if fold is not None and _takes_folding(emit):
                    kw["folding"] = fold
                proj = emit.emit_project(state["ir"], stage / "hls", b, float(clock_mhz),
                                         state["golden_inputs"], top="codesign_top", **kw)
                state["project"] = Path(proj)
                state["hls"] = {"emitted": True, "dir": "hls", "top": "codesign_top"}
                if "folding" in kw:
                    state["emitted"] = {"folding": [f.as_dict() for f in emit.resolve_folding(state["ir"], fold)],
                                        "note": None}
                elif fold is not None:
                    state["emitted"] = {"folding": None, "note": "the HLS emitter takes no folding: the search's "
                                                                "folding was not emitted"}
                    fold_what = "PE = SIMD = 1 (the HLS emitter takes no folding)"
                else:
                    state["emitted"] = {"folding": None, "note": "the dataflow search chose no folding: every "
                                                                "kernel emitted with PE = SIMD = 1"}
                nfiles = sum(1 for p in (stage / "hls").rglob("*") if p.is_file())
                return f"{nfiles} files -> hls/" + (f" ({fold_what})" if fold_what else "")

            step(4, "emit", s_emit)

            def s_csim():
                cases = state["golden"]["cases"]
                if not csim:
                    state["csim"] = {"passed": None, "cases": 0, "mismatches": None, "skipped": "--no-csim"}
                    return "skipped (--no-csim)"
                if "project" not in state:
                    state["csim"] = {"passed": None, "cases": 0, "mismatches": None,
                                     "skipped": "HLS emission not available"}
                    return "skipped: HLS emission not available"
                rep = hls_emitter().run_project_csim(state["project"])
                state["csim"] = {"passed": bool(rep.passed), "cases": int(rep.cases),
                                 "mismatches": int(rep.mismatches), "seconds": round(float(rep.seconds), 3)}
                if not rep.passed or rep.mismatches:
                    raise CsimMismatchError(f"csim mismatch: {rep.mismatches} of {rep.cases} case(s) differ "
                                            f"from the reference; first: {rep.first_mismatch}")
                if rep.cases < cases:
                    raise CsimMismatchError(f"csim ran {rep.cases} case(s), the golden set has {cases}")
                return f"{rep.cases} case(s) == reference (g++ {rep.seconds:.2f} s)"

            step(5, "csim", s_csim)

            def s_report():
                from codesign.accel import report as rp

                doc = rp.make_report(
                    ir=state["ir"], model=src.name, source=src.kind, board=b, clock_mhz=float(clock_mhz),
                    config=config if src.kind == "zoo" else None, seed=seed, csim=state["csim"],
                    hls=state["hls"], golden=state["golden"], seconds=seconds, params=state["front"].params,
                    folding_plan=state.get("plan"), emitted=state.get("emitted"))
                state["report"] = doc
                rp.write(doc, stage)
                from codesign.accel.verify import write_build_rtl

                # FQ-BERT: the engine RTL + engine.json; other models: mvau.v + dataflow.json
                write_build_rtl(stage / "rtl", doc, state["ir"])
                return "report.json, report.md, rtl/"

            # the report records its own time too: measure, then rewrite with it
            step(6, "report", s_report)
            from codesign.accel import report as rp
            state["report"]["seconds"] = dict(seconds, total=round(sum(seconds.values()), 3))
            rp.write(state["report"], stage)
    except BaseException:
        if not parent_existed:
            try:
                out.parent.rmdir()  # only if empty
            except OSError:
                pass
        raise
    return BuildResult(out, state["report"], seconds)


def _takes_folding(emit) -> bool:
    """Whether the HLS emitter module's ``emit_project`` takes a ``folding`` (and it has
    ``resolve_folding``); a stand-in emitter may not."""
    import inspect

    try:
        params = inspect.signature(emit.emit_project).parameters
    except (TypeError, ValueError):
        return False
    return "folding" in params and hasattr(emit, "resolve_folding")


def _build_folding(rep: dict) -> dict[str, tuple[int, int]] | None:
    """The folding a build passed to the emitter, from its report: each layer's
    ``requested`` (PE, SIMD) in ``dataflow.emitted_folding`` (the HLS form of the search's
    folding, ``FoldingPlan.hls_folding``: a bipolar padded conv's SIMD is halved there, so
    ``dataflow.folding`` itself would emit different C++); ``None`` (PE = SIMD = 1) when no
    HLS project was emitted with a folding, e.g. for builds made before the emitter took one."""
    rows = (rep.get("dataflow") or {}).get("emitted_folding")
    if not rows:
        return None
    return {r["name"]: (int(r["requested"]["PE"]), int(r["requested"]["SIMD"])) for r in rows
            if r.get("kernel") is not None}


# --------------------------------------------------------------------------------------
# predict


ENGINES = ("reference", "csim")


def predict(build_dir: str | os.PathLike, x: np.ndarray, engine: str = "reference") -> dict[str, np.ndarray]:
    """Run a built model on ``x`` (batch first): ``{output name: dequantized outputs}``.

    For a user's QONNX model ``x`` holds the graph input's float values and the result is
    ``{onnx output name: float32}``. For a zoo model with host stages (``DIR/host``,
    :mod:`codesign.accel.host`; FQ-BERT) ``x`` holds what the QONNX model takes, token ids
    ``(batch, T)``, and the result is ``{"logits": float64}``: host front → IR → host back.

    ``engine="reference"`` runs the IR in ``build_dir/ir`` with the numpy reference;
    ``"csim"`` runs the emitted HLS project's C++ and returns its outputs only when they
    equal the reference's for every sample.
    """
    from codesign.accel import ir as irm
    from codesign.accel.host import HostError, load_host
    from codesign.sim.run_ir import run_reference

    d = Path(build_dir)
    if engine not in ENGINES:
        raise FlowError(f"unknown engine {engine!r} (supported: {', '.join(ENGINES)})")
    if not (d / "ir" / "ir.json").is_file():
        raise FlowError(f"'{d}' is not a build folder (no ir/ir.json)")
    ir = irm.load(d / "ir")
    if len(ir.inputs) != 1:
        raise FlowError(f"the model has {len(ir.inputs)} inputs; predict takes one --input")
    b = ir.inputs[0]
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise FlowError(f"input dtype {x.dtype} is not numeric")
    try:
        host = load_host(d)
        if host is not None:
            _, x = host.front(x)
    except HostError as e:
        raise FlowError(str(e)) from None
    want = ir.tensors[b.name].shape[1:]
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != tuple(want):
        raise FlowError(f"input shape {tuple(x.shape)} does not match the model's (batch, "
                        f"{', '.join(map(str, want))})")
    x = x.astype(np.float32)
    if engine == "csim":
        _predict_csim(d, ir, b, x)
    if host is None:
        return run_reference(ir, {b.onnx_name: x})
    # the exact int64 logit accumulators feed the host's float64 multiply
    outs, env = run_reference(ir, {b.onnx_name: x}, trace=True)
    (ob,) = [o for o in ir.outputs if o.onnx_name == host.codes_name]
    deq = ir.producer(ob.name)
    return {host.output: host.back(env[deq.inputs[0]])}


def _predict_csim(d: Path, ir, b, x: np.ndarray) -> None:
    """Run the build's HLS C++ (g++ C-simulation) on ``x`` (IR input values).

    The emitter's testbench reads its cases from ``golden/inputs.bin`` and checks every
    output code against ``golden/outputs.bin``; it does not write its outputs. So the
    project is re-emitted into a temporary folder with ``x`` as its golden inputs (and the
    build's folding, :func:`_build_folding`), its
    sources are checked byte for byte against ``DIR/hls`` (all but ``golden/`` and the README, which
    counts the cases: the
    C++ that runs is the build's), and the testbench runs: it returns only when the C++
    produced exactly the reference's codes for every sample (else exit 1, naming the
    first mismatch), and the caller returns the reference's outputs.
    """
    import shutil
    import tempfile

    emit = hls_emitter()
    if emit is None or not (d / "hls").is_dir():
        raise EngineUnavailableError("engine 'csim' is not available: this build has no HLS project "
                                     "(HLS emission was not available when it was built); use --engine reference")
    rep = json.loads((d / "report.json").read_text(encoding="utf-8"))
    board = get_board(rep["board"])
    tmp = Path(tempfile.mkdtemp(prefix="codesign-predict-"))
    try:
        fold = _build_folding(rep)
        kw = {"folding": fold} if fold is not None else {}
        proj = Path(emit.emit_project(ir, tmp / "hls", board, float(rep["clock_mhz"]), {b.name: x},
                                      top=rep.get("hls", {}).get("top", "codesign_top"), **kw))

        def sources(root: Path) -> dict[str, bytes]:
            return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                    if p.is_file() and p.relative_to(root).parts[0] not in ("golden", "README.md")}

        if sources(proj) != sources(d / "hls"):
            raise FlowError(f"'{d / 'hls'}' differs from what the emitter writes for '{d / 'ir'}' now "
                            "(rebuild with --force)", EXIT_FAILURE)
        r = emit.run_project_csim(proj)
        if not r.passed or r.mismatches or r.cases != x.shape[0]:
            raise CsimMismatchError(f"csim differs from the reference: {r.mismatches} mismatch(es) in {r.cases} "
                                    f"case(s); first: {r.first_mismatch}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
