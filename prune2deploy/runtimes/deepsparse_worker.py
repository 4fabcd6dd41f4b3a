"""DeepSparse worker, run by the isolated DeepSparse environment's Python (not this package's).

Standalone on purpose: it imports only deepsparse and numpy, which live in `.venv-deepsparse`
(DeepSparse 1.8.0 pins onnx<1.15 and numpy 1.x). Protocol: argv[1] is a JSON request file:
  {"model": path, "inputs": npz path (keys "0".."n-1" in graph input order),
   "threads": int, "warmup": int, "iters": int, "min_time_s": float, "out": dir}
It compiles with fixed shapes (batch and sequence length from the inputs), times engine.run,
and writes out/result.json ({"p50_ms", ...}) and out/outputs.npz. Never unpickles anything.
"""

import json
import sys
import time


def main() -> None:
    import os

    here = os.path.dirname(os.path.abspath(__file__))  # this folder holds a deepsparse.py of ours: not on the path
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    import numpy as np
    from deepsparse import Engine

    req = json.loads(open(sys.argv[1]).read())
    with np.load(req["inputs"], allow_pickle=False) as data:
        inputs = [data[str(i)] for i in range(len(data.files))]
    batch = int(inputs[0].shape[0])
    shapes = [list(a.shape) for a in inputs]
    engine = Engine(model=req["model"], batch_size=batch, num_cores=req["threads"], input_shapes=shapes)
    for _ in range(req["warmup"]):
        outputs = engine.run(inputs)
    times = []
    start = time.perf_counter()
    while len(times) < req["iters"] or time.perf_counter() - start < req["min_time_s"]:
        t = time.perf_counter()
        outputs = engine.run(inputs)
        times.append((time.perf_counter() - t) * 1000.0)
        if len(times) >= 20 * req["iters"]:
            break
    np.savez(f"{req['out']}/outputs.npz", **{str(i): o for i, o in enumerate(outputs)})
    with open(f"{req['out']}/result.json", "w") as f:
        json.dump(
            {
                "times_ms": times,
                "engine": str(engine).splitlines()[0][:200],
                "version": __import__("deepsparse").__version__,
            },
            f,
        )


if __name__ == "__main__":
    main()
