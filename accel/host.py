"""Host stages of a build: what runs on the ARM CPU around the accelerated IR.

FQ-BERT splits as in the paper: the embedding front (table gathers, two §7 adds, the §6
LayerNorm) and the last multiply of the logit codes by their float scale run on the host;
everything in between is the IR (``ir/``). So that ``codesign predict DIR`` takes what a
user has, token ids, and returns what the QONNX model returns, logits, a build writes its
host stages into ``DIR/host/``:

``host/host.json``
    ``{"format": "codesign-host/1", "front": {...}, "back": {...}}`` with
    ``front = {"kind": "fqbert_embeddings", "input": "input_ids", "shape": [T],
    "dtype": "int64", "config": {FQ-BERT config}, "scalars": {...}, "arrays": {key: file}}``
    and ``back = {"kind": "scale", "output": "logits", "codes": "logit_codes",
    "scale": "logit_scale.npy"}``.
``host/*.npy``
    The integer embedding tables and LayerNorm parameters, one ``.npy`` per array (no
    zip archive: the files are byte-identical from build to build), and the float64
    logit scale.

The front is :func:`codesign.quantize.fqbert_ref.reference_embeddings` (numpy only), fed
the saved parameters; its int8 codes enter the IR as ``code·s`` float32 values, which
the IR's input ``Quant`` maps back to the same codes exactly. The back multiplies the
IR's exact int64 logit accumulators by the float64 scale, as the QONNX graph's final
``Mul`` (in double) does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HostStages", "write_fqbert_host", "load_host", "HOST_DIR", "HostError"]

HOST_DIR = "host"
FORMAT = "codesign-host/1"


class HostError(ValueError):
    """Bad input for, or a damaged description of, a host stage."""


def _flatten(tree: Any, prefix: str, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
    if isinstance(tree, dict):
        for k in sorted(tree):
            _flatten(tree[k], f"{prefix}.{k}" if prefix else str(k), arrays, scalars)
    elif isinstance(tree, np.ndarray) and tree.ndim > 0:
        arrays[prefix] = tree
    elif isinstance(tree, (tuple, list)):
        scalars[prefix] = [v.item() if isinstance(v, np.generic) else v for v in tree]
    else:
        scalars[prefix] = tree.item() if isinstance(tree, (np.generic, np.ndarray)) else tree


def _unflatten(flat: dict[str, Any]) -> dict:
    root: dict = {}
    for key, v in flat.items():
        *path, last = key.split(".")
        d = root
        for p in path:
            d = d.setdefault(p, {})
        d[last] = v
    return root


def write_fqbert_host(params: dict, out_dir: Path) -> None:
    """Write FQ-BERT's host stages (``params``: ``FQBert.integer_params()``) into ``out_dir``."""
    out_dir.mkdir()
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    _flatten(params["embeddings"], "", arrays, scalars)
    files = {}
    for k, a in arrays.items():
        files[k] = f"embeddings.{k}.npy"
        np.save(out_dir / files[k], np.ascontiguousarray(a), allow_pickle=False)
    np.save(out_dir / "logit_scale.npy", np.asarray(params["classifier"]["acc_scale"], dtype=np.float64),
            allow_pickle=False)
    cfg = params["config"]
    doc = {"format": FORMAT,
           "front": {"kind": "fqbert_embeddings", "input": "input_ids", "shape": [int(cfg["max_seq"])],
                     "dtype": "int64", "config": cfg, "scalars": scalars, "arrays": files},
           "back": {"kind": "scale", "output": "logits", "codes": "logit_codes", "scale": "logit_scale.npy"}}
    (out_dir / "host.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")


class HostStages:
    """The host front and back of a build folder (see the module docstring)."""

    def __init__(self, d: Path, doc: dict):
        self.dir, self.doc = d, doc
        front = doc["front"]
        if front.get("kind") != "fqbert_embeddings" or doc["back"].get("kind") != "scale":
            raise HostError(f"'{d / 'host.json'}': unknown host stage kinds "
                            f"{front.get('kind')!r}/{doc['back'].get('kind')!r} (supported: fqbert_embeddings/scale)")
        flat = dict(front["scalars"])
        for k, f in front["arrays"].items():
            flat[k] = np.load(d / f, allow_pickle=False)
        self.params = {"config": front["config"], "embeddings": _unflatten(flat)}
        self.seq = int(front["shape"][0])
        self.vocab = int(front["config"]["vocab_size"])
        self.scale = np.load(d / doc["back"]["scale"], allow_pickle=False)
        self.output = doc["back"]["output"]
        self.codes_name = doc["back"]["codes"]

    @property
    def input_description(self) -> str:
        return f"token ids (batch, {self.seq}) integers in 0..{self.vocab - 1}"

    def front(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``(B, T)`` → (int8 embedding codes, float32 values ``code·s`` for the IR input)."""
        from codesign.quantize.fqbert_ref import reference_embeddings

        x = np.asarray(ids)
        if x.dtype.kind not in "iu" or x.ndim != 2 or x.shape[1] != self.seq:
            raise HostError(f"input {x.shape} {x.dtype} is not {self.input_description}")
        if x.size and (int(x.min()) < 0 or int(x.max()) >= self.vocab):
            raise HostError(f"token ids outside 0..{self.vocab - 1} (min {int(x.min())}, max {int(x.max())})")
        _, codes = reference_embeddings(self.params, x.astype(np.int64))
        s = np.float32(self.params["embeddings"]["ln"]["out_scale"])
        return codes, (codes.astype(np.float32) * s).astype(np.float32)

    def back(self, codes: np.ndarray) -> np.ndarray:
        """int64 logit codes ``(B, classes)`` → float64 logits ``codes · scale``."""
        return np.asarray(codes, dtype=np.int64).astype(np.float64) * self.scale


def load_host(build_dir: Path) -> HostStages | None:
    """The host stages of ``build_dir``, or None when the build has none (a user's QONNX model)."""
    d = Path(build_dir) / HOST_DIR
    if not (d / "host.json").is_file():
        return None
    try:
        doc = json.loads((d / "host.json").read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise HostError(f"'{d / 'host.json'}': format {doc.get('format')!r}, expected {FORMAT!r}")
        return HostStages(d, doc)
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise HostError(f"'{d}': damaged host stage description ({type(e).__name__}: {e})") from None
