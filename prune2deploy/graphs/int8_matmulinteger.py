"""The INT8 layout DeepSparse's kernels run: a per-tensor static QDQ graph rewritten so each
quantized weight MatMul is

    QuantizeLinear(x) → MatMulInteger(x_u8, W_s8, x_zp, w_zp) → Cast(float) → Mul(x_scale · w_scale)

(the form SparseML exports), instead of ORT's QuantizeLinear → DequantizeLinear → MatMul pairs,
which DeepSparse runs slower than fp32 (issue 14's table). The weights stay the very INT8
tensors of the QDQ graph (`<name>_quantized`, zero point 0), so the zero check and the accuracy
of the QDQ graph carry over — both are measured again on the rewritten graph all the same.
Only per-tensor weights are rewritten (MatMulInteger takes one weight zero point and the
rescale is one scalar); a per-channel graph is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import VerificationError


def to_matmulinteger(src: Path, dst: Path) -> int:
    """Rewrite every DQ(Q(x)) x DQ(W_int8) MatMul of `src`; returns how many were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def scalar(name: str) -> np.ndarray:
        a = numpy_helper.to_array(inits[name])
        if a.size != 1:
            raise VerificationError(f"{name} has {a.size} values: only per-tensor INT8 can become MatMulInteger")
        return a.reshape(())

    new_nodes, dropped, count = [], set(), 0
    for node in g.node:
        a = producer.get(node.input[0]) if node.op_type == "MatMul" else None
        b = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        q = producer.get(a.input[0]) if a is not None and a.op_type == "DequantizeLinear" else None
        if not (
            q is not None
            and q.op_type == "QuantizeLinear"
            and b is not None
            and b.op_type == "DequantizeLinear"
            and b.input[0] in inits
        ):
            new_nodes.append(node)
            continue
        x_scale, w_scale = scalar(a.input[1]), scalar(b.input[1])
        w_zp = scalar(b.input[2]) if len(b.input) > 2 and b.input[2] else np.int8(0)
        x_zp_name = a.input[2]
        if int(w_zp) != 0:
            raise VerificationError(f"{b.input[0]}: weight zero point {int(w_zp)}, not 0 (pruned weights would move)")
        rescale = f"{node.name}_mmi_scale"
        g.initializer.append(numpy_helper.from_array(np.array(x_scale * w_scale, dtype=np.float32), rescale))
        w_zp_name = f"{node.name}_mmi_w_zp"
        g.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int8), w_zp_name))
        acc, flt = f"{node.name}_mmi_int32", f"{node.name}_mmi_float"
        new_nodes += [
            helper.make_node(
                "MatMulInteger", [a.input[0], b.input[0], x_zp_name, w_zp_name], [acc], name=f"{node.name}_mmi"
            ),
            helper.make_node("Cast", [acc], [flt], name=f"{node.name}_mmi_cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [flt, rescale], [node.output[0]], name=f"{node.name}_mmi_rescale"),
        ]
        dropped.update({a.name, b.name})
        count += 1
    if not count:
        raise VerificationError(f"{src}: no QDQ weight MatMul to rewrite (is it a static QDQ INT8 graph?)")
    # a DequantizeLinear still read by a node that was not rewritten stays
    still_read = {i for n in new_nodes for i in n.input}
    keep = [n for n in new_nodes if not (n.name in dropped and not set(n.output) & still_read)]
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    unused = [t for t in g.initializer if t.name not in used]
    for t in unused:
        g.initializer.remove(t)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return count
