"""`p2d verify ARTIFACT_DIR`: hashes, ONNX checker, encoder sparsity, reference outputs.

Returns the first mismatch (None when all checks pass); the CLI exits 1 naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import hash_dir, read_json, sha256_file

def reference_for(manifest: dict, runtime: str) -> tuple[str, float]:
    """(the key prefix of `runtime`'s reference outputs in the samples file, its tolerance): its
    own where the artifact has one, else ONNX Runtime's with the cross-runtime tolerance the
    manifest states (artifacts made before per-runtime references: the one `atol`)."""
    ref = manifest.get("reference") or {}
    per = (ref.get("runtimes") or {}).get(runtime)
    if per:
        return per["key"], float(per["atol"])
    cross = (ref.get("cross_runtime_atol") or {}).get(runtime)
    return "output", float(cross if cross is not None else ref.get("atol", 1e-4))


def manifest_digest(path: Path) -> str:
    """sha256 of manifest.json: it lists the sha256 of every other file, so pinning this one
    digest pins the whole artifact (`p2d serve/verify --expect-manifest-sha256`)."""
    return sha256_file(Path(path) / "manifest.json")


def check_pin(path: Path, expected: str | None) -> str | None:
    if not expected:
        return None
    got = manifest_digest(path)
    if got == expected.lower():
        return None
    return f"manifest.json sha256 {got[:16]}... is not the pinned {expected[:16]}..."


def check_files(path: Path, manifest: dict) -> str | None:
    """The first file that differs from the manifest's sha256 list (missing, changed, extra), or
    None. Light (stdlib): the model server runs it before it loads an artifact."""
    files = {k: v for k, v in hash_dir(path).items() if k != "manifest.json"}
    want = manifest.get("files") or {}
    for rel, sha in want.items():
        if rel not in files:
            return f"missing file: {rel}"
        if files[rel] != sha:
            return f"hash mismatch: {rel}"
    extra = sorted(set(files) - set(want))
    if extra:
        return f"unexpected file: {extra[0]}"
    return None


def reference_samples(
    path: Path, manifest: dict, key: str = "output"
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The artifact's stored inputs by name, and its reference outputs (ONNX Runtime's, or those
    stored under `key`) in the manifest's order."""
    with np.load(Path(path) / manifest["reference"]["file"], allow_pickle=False) as data:
        inputs = {k.split(".", 1)[1]: data[k] for k in data.files if k.startswith("input.")}
        expected = [data[f"{key}.{o['name']}"] for o in manifest["outputs"]]
    return inputs, expected


def verify_artifact(path: Path, pin: str | None = None) -> tuple[str | None, list[str]]:
    """(first failure or None, the checks that passed)."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise UserError(f"{path}: not a p2d artifact (no manifest.json)")
    try:
        manifest = read_json(mpath)
    except ValueError:
        return "manifest.json is not valid JSON", []
    passed: list[str] = []
    bad = check_pin(path, pin)
    if bad:
        return bad, passed
    if pin:
        passed.append("manifest.json has the pinned sha256")
    bad = check_files(path, manifest)
    if bad:
        return bad, passed
    want = manifest.get("files") or {}
    passed.append(f"sha256 of {len(want)} files (manifest.json {manifest_digest(path)})")

    import onnx
    from onnx import numpy_helper

    if manifest.get("model") not in want:
        return f"manifest model {manifest.get('model')!r} is not one of its hashed files", passed
    model_path = path / manifest["model"]
    try:
        onnx.checker.check_model(str(model_path))
        model = onnx.load(str(model_path))
    except Exception as e:  # noqa: BLE001
        return f"ONNX checker: {str(e).splitlines()[0][:200]}", passed
    passed.append("onnx.checker")

    inits = {t.name: t for t in model.graph.initializer}
    zeros = total = 0
    for torch_name, rec in (manifest.get("onnx_initializers") or {}).items():
        onnx_name = (rec.get("onnx_name") or "").split("[")[0]
        if onnx_name not in inits:
            return f"initializer {onnx_name or '?'} ({torch_name}) missing from the graph", passed
        arr = numpy_helper.to_array(inits[onnx_name])
        z = int((arr == 0).sum()) if "[" not in (rec.get("onnx_name") or "") else rec["zeros"]
        if z != rec["zeros"]:
            return f"sparsity of {torch_name} ({onnx_name}): {z} zeros, manifest says {rec['zeros']}", passed
        zeros += z
        total += rec["numel"]
    if total and abs(zeros / total - manifest["encoder_sparsity"]) > 1e-9:
        return f"encoder sparsity {zeros / total:.6f} != manifest {manifest['encoder_sparsity']:.6f}", passed
    passed.append(
        f"encoder sparsity {manifest['encoder_sparsity']:.4f} over {len(manifest.get('onnx_initializers') or {})} tensors"  # noqa: E501 - one message/literal
    )

    from ..runtimes import onnxruntime as ort_rt

    ref = manifest["reference"]
    inputs, expected = reference_samples(path, manifest)
    b = len(inputs["input_ids"])
    got = ort_rt.load(model_path, 1)(inputs)
    for o, e, g in zip(manifest["outputs"], expected, got):
        diff = float(np.abs(e - g).max())
        if diff > ref["atol"]:
            return f"output {o['name']} differs from the reference by {diff:.2e} > {ref['atol']:g}", passed
    passed.append(f"outputs match the reference on {b} stored inputs")
    return None, passed
