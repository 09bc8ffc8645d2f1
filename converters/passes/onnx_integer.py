"""A dynamically quantized ONNX model (onnxruntime's QOperator form) computed in float, for onnx2tf,
which has no integer kernels, and Core ML, which cannot hold uint8 tensors."""

from __future__ import annotations

from typing import Any

import numpy as np


def integer_ops_to_float(model: Any) -> int:
    """Rewrite the integer ops of a dynamically quantized model (onnxruntime's QOperator form) as float ops.

    ``ConvInteger``/``MatMulInteger`` become Sub (zero points) + Conv/MatMul in float32, cast back to
    int32, so the rest of the graph (int32 bias Add, Cast, scale Mul) is unchanged and the values
    are the same integers. ``DynamicQuantizeLSTM`` (com.microsoft) becomes an ONNX ``LSTM`` on its
    dequantized weights (activations then stay float: the int8 tolerance covers the difference).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}

    def const(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def add_init(array: np.ndarray, name: str) -> str:
        graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    nodes: list[Any] = []
    count = 0
    for node in graph.node:
        if node.op_type in ("ConvInteger", "MatMulInteger") and node.domain in ("", "ai.onnx"):
            a, b = node.input[0], node.input[1]
            azp = node.input[2] if len(node.input) > 2 else ""
            bzp = node.input[3] if len(node.input) > 3 else ""
            weight = const(b)
            if weight is None:
                nodes.append(node)
                continue
            w = weight.astype(np.float32)
            zp = const(bzp) if bzp else None
            if zp is not None:
                zpf = zp.astype(np.float32)
                if node.op_type == "ConvInteger" and zpf.ndim == 1 and zpf.size > 1:
                    zpf = zpf.reshape(-1, *([1] * (w.ndim - 1)))
                w = w - zpf
            tag = node.output[0]
            a_f = f"{tag}__a_float"
            nodes.append(helper.make_node("Cast", [a], [a_f], to=TensorProto.FLOAT))
            if azp:
                azp_f = f"{tag}__azp_float"
                nodes.append(helper.make_node("Cast", [azp], [azp_f], to=TensorProto.FLOAT))
                centered = f"{tag}__a_centered"
                nodes.append(helper.make_node("Sub", [a_f, azp_f], [centered]))
                a_f = centered
            w_name = add_init(w, f"{tag}__w_float")
            op = "Conv" if node.op_type == "ConvInteger" else "MatMul"
            attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute}
            nodes.append(helper.make_node(op, [a_f, w_name], [f"{tag}__float"], **attrs))
            nodes.append(helper.make_node("Cast", [f"{tag}__float"], list(node.output), to=TensorProto.INT32))
            count += 1
        elif node.op_type == "DynamicQuantizeLSTM" and node.domain == "com.microsoft":
            ins = list(node.input) + [""] * (12 - len(node.input))
            x, w_q, r_q, bias, seq, h0, c0, peep, w_s, w_zp, r_s, r_zp = ins[:12]
            found = [const(n) for n in (w_q, r_q, w_s, w_zp, r_s, r_zp)]
            parts = [v for v in found if v is not None]
            if len(parts) != len(found):
                nodes.append(node)
                continue
            wq, rq, ws, wz, rs, rz = parts

            def deq(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
                shape = (-1,) + (1,) * (q.ndim - 1) if scale.ndim == 1 else scale.shape
                out = (q.astype(np.float32) - zero.astype(np.float32).reshape(shape)) * scale.reshape(shape)
                return np.ascontiguousarray(np.transpose(out, (0, 2, 1)))  # [dir, in, 4H] -> ONNX's [dir, 4H, in]

            tag = node.output[0] or node.name
            w_name = add_init(deq(wq, ws, wz), f"{tag}__W")
            r_name = add_init(deq(rq, rs, rz), f"{tag}__R")
            attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute if at.name != "input_forget"}
            if any(at.name == "input_forget" and helper.get_attribute_value(at) for at in node.attribute):
                attrs["input_forget"] = 1
            nodes.append(helper.make_node("LSTM", [x, w_name, r_name, bias, seq, h0, c0, peep][:8], list(node.output),
                                          name=node.name, **attrs))
            count += 1
        else:
            nodes.append(node)
    if count:
        nodes = _dynamic_quantize_in_float(nodes, graph)
        del graph.node[:]
        graph.node.extend(nodes)
        used = {d.domain for n in graph.node for d in [n] if n.domain}
        keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return count


def _dynamic_quantize_in_float(nodes: list[Any], graph: Any) -> list[Any]:
    """``DynamicQuantizeLinear`` whose uint8 outputs only feed casts to float (as after the rewrite above)
    computed in float: the same integer values without a uint8 tensor, which Core ML cannot hold."""
    from onnx import TensorProto, helper, numpy_helper

    readers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only_float_casts(name: str) -> bool:
        return name not in outputs and all(
            r.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT for a in r.attribute)
            for r in readers.get(name, []))

    out = []
    for node in nodes:
        if node.op_type != "DynamicQuantizeLinear" or not (only_float_casts(node.output[0]) and
                                                           only_float_casts(node.output[2])):
            out.append(node)
            continue
        x, (y, scale, zero) = node.input[0], node.output
        t = y + "__dq"
        graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), f"{t}_{k}")
                                  for k, v in (("zero", 0.0), ("qmax", 255.0))])
        out += [
            helper.make_node("ReduceMin", [x], [f"{t}_min"], keepdims=0),
            helper.make_node("ReduceMax", [x], [f"{t}_max"], keepdims=0),
            helper.make_node("Min", [f"{t}_min", f"{t}_zero"], [f"{t}_lo"]),  # the range includes 0
            helper.make_node("Max", [f"{t}_max", f"{t}_zero"], [f"{t}_hi"]),
            helper.make_node("Sub", [f"{t}_hi", f"{t}_lo"], [f"{t}_span"]),
            helper.make_node("Div", [f"{t}_span", f"{t}_qmax"], [scale]),
            helper.make_node("Div", [f"{t}_lo", scale], [f"{t}_lo_q"]),
            helper.make_node("Sub", [f"{t}_zero", f"{t}_lo_q"], [f"{t}_zp_raw"]),
            helper.make_node("Round", [f"{t}_zp_raw"], [f"{t}_zp_round"]),
            helper.make_node("Clip", [f"{t}_zp_round", f"{t}_zero", f"{t}_qmax"], [zero]),
            helper.make_node("Div", [x, scale], [f"{t}_xs"]),
            helper.make_node("Round", [f"{t}_xs"], [f"{t}_xr"]),
            helper.make_node("Add", [f"{t}_xr", zero], [f"{t}_xq"]),
            helper.make_node("Clip", [f"{t}_xq", f"{t}_zero", f"{t}_qmax"], [y]),
        ]
    return out
