"""The MLServer custom runtime that serves a `p2d package` artifact over the KServe V2 / Open
Inference Protocol (the protocol Triton speaks), on ONNX Runtime, OpenVINO or DeepSparse.

It runs inside MLServer's own environment (.venv-serve: MLServer pins protobuf 6, our main
stack has 7; for DeepSparse, .venv-deepsparse with MLServer added), so it imports only the
standard library, numpy, MLServer and the runtime named; `p2d serve` (prune2deploy/ship/serve.py)
writes the settings that point MLServer here and starts it through ship/mlserver_main.py.

- load: every file is checked against the manifest's sha256 list; the files it then uses (the
  graph, config.json, tokenizer.json) are read once, hashed again from those bytes and loaded
  from them (DeepSparse, which needs a path, gets a private copy of the hashed bytes); the
  manifest's paths must stay inside the artifact. It compiles what it needs (DeepSparse: one
  engine per sequence bucket), then answers the manifest's reference sample through the same path
  a request takes and compares it with the stored reference: ready means it answers correctly.
- predict: token ids as Triton's ONNX backend takes them (the graph's inputs by name, INT64,
  [batch, seq]) or raw text (BYTES `text`, and `text_pair` for question/context tasks), checked
  before any work (served_inputs.py): counts, shapes, dtypes, token id ranges. Anything else is
  a 400 with one line; the server keeps serving. Tokenizing runs off the event loop. Checked
  requests are padded to a sequence bucket and batched (batcher.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse

from ..errors import UserError
from ..files import inside
from .batcher import Batcher
from .served_inputs import (
    BadRequest,
    Limits,
    check_ids,
    check_rows,
    check_shape,
    encode_text,
    limits,
    pad_to_bucket,
    unpad,
)
from .verify import check_files, reference_for

TEXT_INPUTS = ("text", "text_pair")
V2_TYPES = {"TYPE_INT64": "INT64", "TYPE_INT32": "INT32", "TYPE_FP32": "FP32"}
EVALUATION_ONLY = "evaluation licence (DeepSparse Community License: not for production)"
LICENCES = {"onnxruntime": "MIT", "openvino": "Apache-2.0", "openvino-bf16": "Apache-2.0",
            "deepsparse": EVALUATION_ONLY}


class ArtifactRefused(MLServerError):
    pass


def _onnxruntime(model: bytes, threads: int, lim: Limits, names: list[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in session.get_outputs()]
    return lambda feed: session.run(outs, feed)


def _openvino(model: bytes, threads: int, lim: Limits, names: list[str], precision: str = "f32"):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(core.read_model(model), "CPU", config)
    request = compiled.create_infer_request()

    def run(feed):
        result = request.infer(feed)
        return [np.asarray(result[o]) for o in compiled.outputs]

    return run


def _deepsparse(model: bytes, threads: int, lim: Limits, names: list[str]):
    """DeepSparse compiles an engine for one input shape: one engine per sequence bucket at
    batch 1, compiled here at load (a merged batch runs row by row, as DeepSparse is fastest at
    batch 1), so no request ever compiles, and no shape is ever refused."""
    import atexit
    import shutil

    from deepsparse import Engine

    # DeepSparse needs a path and rewrites the ONNX file it compiles (its input shapes): a private
    # copy of the bytes that were hashed; the artifact stays as its manifest hashed it
    tmp = Path(tempfile.mkdtemp(prefix="p2d-serve-deepsparse-"))
    atexit.register(shutil.rmtree, tmp, True)
    engines = {}
    for length in lim.buckets:
        copy = tmp / f"model-{length}.onnx"
        copy.write_bytes(model)
        engines[length] = Engine(model=str(copy), batch_size=1, num_cores=threads,
                                 input_shapes=[[1, length]] * len(names))

    def run(feed):
        arrays = [feed[n] for n in names]
        engine = engines[arrays[0].shape[1]]
        rows = [engine.run([a[i:i + 1] for a in arrays]) for i in range(arrays[0].shape[0])]
        return [np.concatenate([r[k] for r in rows]) for k in range(len(rows[0]))]

    return run


def _openvino_bf16(model, threads, lim, names):
    return _openvino(model, threads, lim, names, precision="bf16")


# runtime name -> session factory; `p2d serve --runtime` offers these names (serve.RUNTIMES)
SESSIONS = {"onnxruntime": _onnxruntime, "openvino": _openvino, "openvino-bf16": _openvino_bf16,
            "deepsparse": _deepsparse}


def _hashed(root: Path, manifest: dict, rel: str) -> bytes:
    """The bytes of one file of the artifact, inside it and as its manifest hashed them."""
    try:
        path = inside(root, rel, "manifest path")
    except UserError:
        raise ArtifactRefused(f"artifact {root}: '{rel}' points outside it") from None
    want = (manifest.get("files") or {}).get(rel)
    if want is None:
        raise ArtifactRefused(f"artifact {root}: '{rel}' is not one of its hashed files")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != want:
        raise ArtifactRefused(f"artifact {root} refused: hash mismatch: {rel} (the manifest's sha256 differs)")
    return data


def _batch_metrics():
    """Two Prometheus histograms beside MLServer's own on its /metrics: requests and rows per
    inference. In prometheus_client's default registry, the one MLServer 1.7.1 exposes when it
    runs inference in its own process (`mlserver.register` writes to another, never exposed)."""
    try:
        from prometheus_client import REGISTRY, Histogram
    except ImportError:
        return None
    buckets = (1, 2, 4, 8, 16, 32, 64)
    made = []
    for name, what in (("p2d_batch_requests", "requests merged into one inference"),
                       ("p2d_batch_rows", "rows of one inference")):
        try:
            made.append(Histogram(name, what, buckets=buckets))
        except ValueError:  # loaded again in this process: the one registered before
            made.append(REGISTRY._names_to_collectors[name])
    return made


class P2DModel(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = dict(params.extra or {})
        root = Path(params.uri)
        try:
            raw = (root / "manifest.json").read_bytes()
            manifest = json.loads(raw)
        except (OSError, ValueError) as e:
            raise ArtifactRefused(f"artifact {root}: no readable manifest.json ({e})") from None
        pinned = extra.get("manifest_sha256")
        if pinned and hashlib.sha256(raw).hexdigest() != pinned:
            raise ArtifactRefused(f"artifact {root} refused: manifest.json's sha256 is not the pinned {pinned[:16]}...")
        bad = check_files(root, manifest)
        if bad:
            raise ArtifactRefused(f"artifact {root} refused: {bad} (the manifest's sha256 differs)")
        runtime = extra.get("runtime", "onnxruntime")
        if runtime not in SESSIONS:
            raise ArtifactRefused(f"unknown serving runtime '{runtime}' (known: {', '.join(SESSIONS)})")
        files = manifest.get("files") or {}
        config = json.loads(_hashed(root, manifest, "config.json")) if "config.json" in files else {}
        self._inputs = [i["name"] for i in manifest["inputs"]]
        self._in_types = {i["name"]: V2_TYPES.get(i["dtype"], i["dtype"]) for i in manifest["inputs"]}
        self._outputs = [o["name"] for o in manifest["outputs"]]
        # an output whose second axis is dynamic runs along the sequence (cut back after padding)
        self._seq_axis = [len(o.get("dims", [])) > 1 and o["dims"][1] == -1 for o in manifest["outputs"]]
        self._limits = limits(manifest, config)
        # a classification head with named classes: answers carry the names too (output "label")
        id2label = config.get("id2label") or {}  # config.json keeps no num_labels: the head's size is this
        names = [str(id2label.get(str(i), "")) for i in range(len(id2label))]
        named = names and not all(n.startswith("LABEL_") or not n for n in names) and "logits" in self._outputs
        self._label_names = np.array([n.encode() for n in names], dtype=object) if named else None
        self._tokenizer, self._no_text = None, "this artifact has no tokenizer.json: send token ids"
        if "tokenizer.json" in files:
            try:
                from tokenizers import Tokenizer

                self._tokenizer = Tokenizer.from_str(_hashed(root, manifest, "tokenizer.json").decode())
                self._tokenizer.enable_truncation(self._limits.max_seq)
                self._tokenizer.no_padding()
            except ImportError:
                self._no_text = "raw text needs the tokenizers package in the serving environment: send token ids"
        threads = int(extra.get("threads", 2))
        graph = _hashed(root, manifest, manifest["model"])
        run = SESSIONS[runtime](graph, threads, self._limits, self._inputs)
        # a dynamically quantized graph scales activations over the whole batch: its requests
        # are not merged (each would change the others' outputs)
        dynamic = (manifest.get("quantize") or {}).get("quantize") == "int8" and manifest.get("precision") == "int8"
        rows = 1 if dynamic else int(extra.get("max_batch_rows", 16))
        self._batcher = Batcher(run, max(rows, 1), float(extra.get("max_batch_time_s", 0.0)), self._count_batch)
        self._metrics = _batch_metrics()
        self.runtime = runtime
        self._self_test(root, manifest, run)
        return True

    def _count_batch(self, requests: int, rows: int) -> None:
        if self._metrics:
            self._metrics[0].observe(requests)
            self._metrics[1].observe(rows)

    def _self_test(self, root: Path, manifest: dict, run) -> None:
        """The first stored sample through padding and the runtime, against this runtime's
        reference: the model is not ready until it answers it correctly."""
        ref = manifest.get("reference") or {}
        if not ref.get("file"):
            return
        key, atol = reference_for(manifest, self.runtime)
        from io import BytesIO

        with np.load(BytesIO(_hashed(root, manifest, ref["file"])), allow_pickle=False) as data:
            feed = {n: data[f"input.{n}"][:1] for n in self._inputs}
            expected = [data[f"{key}.{o}"][:1] for o in self._outputs]
        padded, length = pad_to_bucket(feed, self._limits)
        got = unpad(run(padded), self._seq_axis, length)
        diff = max(float(np.abs(np.asarray(g, dtype=np.float32) - e).max()) for g, e in zip(got, expected))
        if diff > atol:
            raise ArtifactRefused(
                f"artifact {root}: {self.runtime} answers the reference sample {diff:.3g} off (> {atol:g}); "
                "not serving it"
            )

    async def _text_feed(self, given: dict) -> dict[str, np.ndarray]:
        if self._tokenizer is None:
            raise BadRequest(self._no_text)
        for name in given:
            if name not in TEXT_INPUTS:
                raise BadRequest(f"unknown input '{name}' beside text (send text and text_pair, or token ids)")
            if given[name].datatype != "BYTES" or len(given[name].shape) != 1:
                raise BadRequest(f"input '{name}' must be BYTES of shape [batch]")
            check_rows(given[name].shape[0], self._limits)  # before any decoding or tokenizing
        try:
            text = StringCodec.decode_input(given["text"])
            pair = StringCodec.decode_input(given["text_pair"]) if "text_pair" in given else None
        except Exception as e:  # noqa: BLE001 - data that does not fit its shape
            raise BadRequest(f"text: {str(e).splitlines()[0][:200]}") from None
        if pair is not None and len(pair) != len(text):
            raise BadRequest(f"text has {len(text)} rows and text_pair {len(pair)}")
        check_rows(len(text), self._limits)
        return await asyncio.to_thread(encode_text, self._tokenizer, text, pair, self._inputs, self._limits)

    def _id_feed(self, given: dict) -> dict[str, np.ndarray]:
        unknown = sorted(set(given) - set(self._inputs))
        if unknown:
            raise BadRequest(f"unknown input '{unknown[0]}' (this model takes {', '.join(self._inputs)})")
        feed = {}
        for name in self._inputs:
            if name not in given:
                raise BadRequest(f"missing input '{name}' (this model takes {', '.join(self._inputs)})")
            want = self._in_types[name]
            if given[name].datatype != want:
                raise BadRequest(f"input '{name}' must be {want}, got {given[name].datatype}")
            check_shape(name, list(given[name].shape), self._limits)  # before decoding its data
            try:
                feed[name] = NumpyCodec.decode_input(given[name])
            except Exception as e:  # noqa: BLE001 - data that does not fit its shape
                raise BadRequest(f"input '{name}': {str(e).splitlines()[0][:200]}") from None
        shapes = {tuple(a.shape) for a in feed.values()}
        if len(shapes) != 1:
            raise BadRequest(f"inputs must share one shape [batch, seq], got {sorted(shapes)}")
        check_ids(feed, self._limits)
        return feed

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        given = {i.name: i for i in payload.inputs}
        try:
            feed = await self._text_feed(given) if "text" in given else self._id_feed(given)
        except BadRequest as e:
            raise InferenceError(str(e)) from None
        padded, length = pad_to_bucket(feed, self._limits)
        outs = unpad(await self._batcher.submit(padded), self._seq_axis, length)
        encoded = [NumpyCodec.encode_output(n, np.asarray(o)) for n, o in zip(self._outputs, outs)]
        if self._label_names is not None:  # the class (or each token's tag) by name
            best = np.asarray(outs[self._outputs.index("logits")]).argmax(-1)  # [batch] or [batch, seq]
            encoded.append(NumpyCodec.encode_output("label", self._label_names[best]))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=encoded,
            parameters={"runtime": self.runtime, "licence": LICENCES[self.runtime]},
        )
