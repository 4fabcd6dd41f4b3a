"""The MLServer custom runtime that serves a `p2d package` artifact over the KServe V2 / Open
Inference Protocol (the protocol Triton speaks), on ONNX Runtime, OpenVINO or DeepSparse.

It runs inside MLServer's own environment (.venv-serve: MLServer pins protobuf 6, our main
stack has 7; for DeepSparse, .venv-deepsparse with MLServer added), so it imports only the
standard library, numpy, MLServer and the runtime named;
`p2d serve` (prune2deploy/ship/serve.py) writes the settings that point MLServer here.

- load: the artifact's files are checked against the manifest's sha256 list first; a tampered
  or incomplete artifact is refused (the model never becomes ready; the server says why).
- predict: token ids as Triton's ONNX backend takes them — the graph's inputs by name, INT64,
  shape [batch, seq], batch <= max_batch_size, seq <= the model's positions — or, as an option,
  raw text: a BYTES input `text` (and `text_pair` for question/context tasks) tokenized with
  the packaged tokenizer. Anything else is answered with a 400 and one line saying what is
  wrong; the server keeps serving. One inference at a time, on every thread it was given.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse

from .verify import check_files

TEXT_INPUTS = ("text", "text_pair")
V2_TYPES = {"TYPE_INT64": "INT64", "TYPE_INT32": "INT32", "TYPE_FP32": "FP32"}


class ArtifactRefused(MLServerError):
    pass


def _onnxruntime(model_path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feed: session.run(names, feed)


def _openvino(model_path: Path, threads: int):
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(str(model_path), "CPU", config)
    request = compiled.create_infer_request()

    def run(feed):
        result = request.infer(feed)
        return [np.asarray(result[o]) for o in compiled.outputs]

    return run


def _deepsparse(model_path: Path, threads: int, max_engines: int = 8):
    """DeepSparse compiles an engine for one input shape: one per [batch, seq] seen (compiled on
    first use, at most `max_engines`; a further shape is refused rather than evicting)."""
    import atexit
    import shutil
    import tempfile

    from deepsparse import Engine

    # DeepSparse rewrites the ONNX file it compiles (its input shapes): it compiles a private copy,
    # so the artifact stays as its manifest hashed it
    copy = Path(tempfile.mkdtemp(prefix="p2d-serve-deepsparse-")) / "model.onnx"
    atexit.register(shutil.rmtree, copy.parent, True)
    shutil.copy2(model_path, copy)
    engines: dict[tuple, object] = {}

    def run(feed):
        arrays = list(feed.values())  # the graph's inputs, in the graph's order
        shape = tuple(arrays[0].shape)
        if shape not in engines:
            if len(engines) >= max_engines:
                known = sorted(engines)
                raise InferenceError(f"DeepSparse serves at most {max_engines} input shapes; send one of {known}")
            shapes = [list(shape)] * len(arrays)
            engines[shape] = Engine(model=str(copy), batch_size=shape[0], num_cores=threads, input_shapes=shapes)
        return engines[shape].run(arrays)

    return run


# runtime name -> session factory; `p2d serve --runtime` offers these names (serve.RUNTIMES)
SESSIONS = {"onnxruntime": _onnxruntime, "openvino": _openvino, "deepsparse": _deepsparse}


class P2DModel(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = dict(params.extra or {})
        root = Path(params.uri)
        try:
            manifest = json.loads((root / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise ArtifactRefused(f"artifact {root}: no readable manifest.json ({e})") from None
        bad = check_files(root, manifest)
        if bad:
            raise ArtifactRefused(f"artifact {root} refused: {bad} (the manifest's sha256 differs)")
        runtime = extra.get("runtime", "onnxruntime")
        if runtime not in SESSIONS:
            raise ArtifactRefused(f"unknown serving runtime '{runtime}' (known: {', '.join(SESSIONS)})")
        self._run = SESSIONS[runtime](root / manifest["model"], int(extra.get("threads", 2)))
        self._inputs = [i["name"] for i in manifest["inputs"]]
        self._in_types = {i["name"]: V2_TYPES.get(i["dtype"], i["dtype"]) for i in manifest["inputs"]}
        self._outputs = [o["name"] for o in manifest["outputs"]]
        self._max_batch = int(manifest.get("max_batch_size") or extra.get("max_batch_size") or 64)
        config = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
        self._max_seq = int(config.get("max_position_embeddings") or 512)
        self._tokenizer, self._no_text = None, "this artifact has no tokenizer.json: send token ids"
        if (root / "tokenizer.json").is_file():
            try:
                from tokenizers import Tokenizer

                self._tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
                self._tokenizer.enable_truncation(self._max_seq)
                self._tokenizer.enable_padding()
            except ImportError:
                self._no_text = "raw text needs the tokenizers package in the serving environment: send token ids"
        self._lock = asyncio.Lock()
        self.runtime = runtime
        return True

    def _from_text(self, given: dict) -> dict[str, np.ndarray]:
        if self._tokenizer is None:
            raise InferenceError(self._no_text)
        text = StringCodec.decode_input(given["text"])
        pair = StringCodec.decode_input(given["text_pair"]) if "text_pair" in given else None
        if pair is not None and len(pair) != len(text):
            raise InferenceError(f"text has {len(text)} rows and text_pair {len(pair)}")
        enc = self._tokenizer.encode_batch(list(zip(text, pair)) if pair is not None else list(text))
        arrays = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        return {n: arrays[n] for n in self._inputs}

    def _feed(self, payload: InferenceRequest) -> dict[str, np.ndarray]:
        given = {i.name: i for i in payload.inputs}
        if "text" in given:
            feed = self._from_text(given)
        else:
            unknown = sorted(set(given) - set(self._inputs))
            if unknown:
                raise InferenceError(f"unknown input '{unknown[0]}' (this model takes {', '.join(self._inputs)})")
            feed = {}
            for name in self._inputs:
                if name not in given:
                    raise InferenceError(f"missing input '{name}' (this model takes {', '.join(self._inputs)})")
                want = self._in_types[name]
                if given[name].datatype != want:
                    raise InferenceError(f"input '{name}' must be {want}, got {given[name].datatype}")
                try:
                    feed[name] = NumpyCodec.decode_input(given[name])
                except Exception as e:  # noqa: BLE001 - data that does not fit its shape
                    raise InferenceError(f"input '{name}': {str(e).splitlines()[0][:200]}") from None
        shapes = {tuple(a.shape) for a in feed.values()}
        shape = next(iter(shapes))
        if len(shapes) != 1 or len(shape) != 2:
            raise InferenceError(f"inputs must share one shape [batch, seq], got {sorted(shapes)}")
        if not 1 <= shape[0] <= self._max_batch:
            raise InferenceError(f"batch {shape[0]} is outside 1..{self._max_batch}")
        if not 1 <= shape[1] <= self._max_seq:
            raise InferenceError(f"sequence length {shape[1]} is outside 1..{self._max_seq}")
        return feed

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = self._feed(payload)
        async with self._lock:  # one inference at a time, each on all threads
            outs = await asyncio.to_thread(self._run, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(n, np.asarray(o)) for n, o in zip(self._outputs, outs)],
            parameters={"runtime": self.runtime},
        )
