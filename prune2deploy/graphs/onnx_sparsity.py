"""Count zeros per ONNX initializer and verify them, tensor by tensor, against PyTorch masks.

Exporters rename weights (`onnx::MatMul_123`) and store Linear weights transposed, as
(in, out) MatMul initializers; graph optimizers may concatenate Q/K/V into one tensor. So a
torch weight is found by content (itself or its transpose), else by shape among the
remaining tensors (and reported as a mismatch), else inside a concatenated tensor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError, VerificationError


def load_initializers(path: str | Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types on garbage
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def matmul_weights(path: str | Path) -> dict[str, tuple[str, bool]]:
    """Module path (as in torch, `bert.encoder.layer.0.attention.self.query`) -> the initializer its
    MatMul multiplies by, read from the exporter's node names (`/bert/encoder/layer.0/.../MatMul`).
    This follows each weight through the graph, so identical initializers the exporter merged
    (fully pruned matrices are all zeros: one shared tensor) still map to every weight using them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    # the exporter shares one initializer among identical weights through Identity nodes
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input}

    def source(name: str) -> str:
        seen = set()
        while name in alias and name not in inits and name not in seen:
            seen.add(name)
            name = alias[name]
        return name

    out = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.name.endswith(f"/{node.op_type}"):
            if len(node.input) < 2 or source(node.input[1]) not in inits:
                continue
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            scope = node.name.removesuffix(f"/{node.op_type}").lstrip("/")
            out[scope.replace("/", ".")] = (source(node.input[1]), not trans_b)  # MatMul: x @ Wᵀ stored (in, out)
    return out


def _digest(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


@dataclass
class TensorCheck:
    torch_name: str
    onnx_name: str | None
    numel: int
    mask_zeros: int
    onnx_zeros: int
    ok: bool
    detail: str = ""


def verify(onnx_path: str | Path, weights: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict:
    """Check every masked torch weight against its ONNX initializer.

    `weights` are the torch weights (name -> (out, in) array) after masking; `masks` the bool
    masks. A tensor passes when its ONNX twin has zeros exactly where the torch weight has, and
    every masked position is zero. Returns a report; `ok` is False on any mismatch.
    """
    inits = load_initializers(onnx_path)
    by_module = matmul_weights(onnx_path)
    by_digest: dict[tuple, str] = {}
    for name, arr in inits.items():
        if arr.dtype.kind == "f" and arr.ndim == 2:
            by_digest.setdefault(_digest(arr), name)
    used: set[str] = set()
    checks: list[TensorCheck] = []
    for tname, w in weights.items():
        mask = masks[tname].astype(bool)
        mask_zeros = int((~mask).sum())
        found, view = None, None
        node_weight = by_module.get(tname.removesuffix(".weight"))
        if node_weight is not None:  # through the graph (shared initializers allowed)
            name, transposed = node_weight
            stored = inits[name].T if transposed else inits[name]
            if stored.shape == w.shape:
                found, view = name, stored
        for cand in (w, w.T) if found is None else ():
            key = _digest(cand)
            if key in by_digest and by_digest[key] not in used:
                found, view = by_digest[key], inits[by_digest[key]]
                view = view if cand is w else view.T
                break
        if found is None:  # fused into a larger tensor (QKV concat)?
            found, view = _find_in_concat(inits, w)
        if found is None:  # content differs: pair by shape and closeness to report the mismatch
            best, best_err = None, np.inf
            for name, arr in inits.items():
                if name in used or arr.ndim != 2 or arr.dtype.kind != "f":
                    continue
                for cand, transposed in ((arr, False), (arr.T, True)):
                    if cand.shape == w.shape:
                        err = float(np.abs(cand - w).mean())
                        if err < best_err:
                            best, best_err, view = name, err, cand
            found = best
        if found is not None:
            used.add(found)
        if view is None:
            checks.append(
                TensorCheck(tname, None, w.size, mask_zeros, -1, False, "no ONNX initializer matches this weight")
            )
            continue
        onnx_zero = view == 0
        onnx_zeros = int(onnx_zero.sum())
        masked_nonzero = int((~mask & ~onnx_zero).sum())
        pattern_ok = bool(np.array_equal(onnx_zero, w == 0))
        ok = masked_nonzero == 0 and pattern_ok
        detail = (
            ""
            if ok
            else f"{masked_nonzero} masked weights are non-zero in ONNX; zeros {onnx_zeros} vs torch {int((w == 0).sum())}"  # noqa: E501 - one message/literal
        )
        checks.append(TensorCheck(tname, found, w.size, mask_zeros, onnx_zeros, ok, detail))
    total = sum(c.numel for c in checks)
    onnx_zeros = sum(max(c.onnx_zeros, 0) for c in checks)
    mask_zeros = sum(c.mask_zeros for c in checks)
    return {
        "ok": all(c.ok for c in checks) and bool(checks),
        "encoder_sparsity": onnx_zeros / total if total else 0.0,
        "mask_sparsity": mask_zeros / total if total else 0.0,
        "tensors": [c.__dict__ for c in checks],
    }


def _find_in_concat(inits: dict[str, np.ndarray], w: np.ndarray) -> tuple[str | None, np.ndarray | None]:
    """A weight fused into a larger tensor (e.g. ORT's QKV concat along the output axis)."""
    wt = w.T  # (in, out) as stored by MatMul
    for name, arr in inits.items():
        if arr.ndim != 2 or arr.shape[0] != wt.shape[0] or arr.shape[1] <= wt.shape[1] or arr.shape[1] % wt.shape[1]:
            continue
        for k in range(arr.shape[1] // wt.shape[1]):
            part = arr[:, k * wt.shape[1] : (k + 1) * wt.shape[1]]
            if np.array_equal(part, wt):
                return f"{name}[:, {k}]", part.T
    return None, None


def require_ok(report: dict, what: str) -> None:
    if not report["ok"]:
        bad = next((t for t in report["tensors"] if not t["ok"]), None)
        why = f"{bad['torch_name']}: {bad['detail']}" if bad else "no prunable tensors found"
        raise VerificationError(f"{what}: ONNX sparsity does not match the torch masks ({why})")


def zeros_per_initializer(path: str | Path, min_numel: int = 1024) -> dict[str, float]:
    return {
        n: float((a == 0).mean())
        for n, a in load_initializers(path).items()
        if a.size >= min_numel and a.dtype.kind == "f"
    }
