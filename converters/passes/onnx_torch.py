"""ONNX to a torch.export program (``--via onnx-torch``): the route to TFLite (litert-torch) and Core ML
(coremltools' PyTorch frontend) that does not go through onnx2tf.

onnx2tf guesses a channels-last layout for every tensor and fails where the guess is wrong (a 1-D
convolution front end pairing 324 channels with 309, an LSTM after a convolution). This route keeps
the ONNX layout: the graph is interpreted op by op in PyTorch (:mod:`onnx_torch_ops`) inside a module
that torch.export traces, and the converters that start from PyTorch take it from there.

Input shapes are fixed from the first calibration sample (batch 1), as the other fixed-shape routes
do, and everything computed from shapes and constants alone is evaluated once, eagerly, on that
sample, so the traced program holds only the tensor computations. An If whose condition depends on
an input (a sample rate) becomes both branches and a select, which is exact when both branches
compute the same shapes.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np

from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.passes.onnx_rewrites import (
    clear_wrong_output_shapes,
    expand_function_ops,
    fix_input_shapes,
    fixed_input_shapes,
    slim,
)
from edgekit.converters.passes.onnx_torch_nn import NN_OPS
from edgekit.converters.passes.onnx_torch_ops import TENSOR_OPS, Args, torch_module
from edgekit.converters.registry import Kind
from edgekit.errors import ConversionError, UnsupportedModelError
from edgekit.parity import iter_feeds

SHAPE_OPS = frozenset({"Shape", "Size", "Constant", "ConstantOfShape"})  # computed when the module is built


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import AttributeProto, helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute
            if a.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS)}


def _subgraph(node: Any, name: str) -> Any:
    return next(a.g for a in node.attribute if a.name == name)


def _graphs(graph: Any) -> list[Any]:
    """The graph and every subgraph in it (branches hold initializers of their own after slimming)."""
    from onnx import AttributeProto

    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                found.extend(_graphs(sub))
    return found


def _lstm(a: Args) -> list[Any]:
    """ONNX LSTM (gates i, o, f, c; default activations), unrolled over the fixed sequence length."""
    torch = torch_module()
    if a.get("clip") is not None or a.get("input_forget", 0) or a.has(7):
        raise UnsupportedModelError("LSTM with clip, input_forget or peepholes is not supported on the ONNX-to-PyTorch route")
    acts = [s.decode() if isinstance(s, bytes) else s for s in a.get("activations", [])]
    if any(act not in ("Sigmoid", "Tanh") for act in acts) or acts[:3] not in ([], ["Sigmoid", "Tanh", "Tanh"]):
        raise UnsupportedModelError(f"LSTM activations {acts} are not supported on the ONNX-to-PyTorch route")
    x, w, r, b = a.t(0), a.t(1), a.t(2), a.t(3)
    if a.get("layout", 0):
        x = x.transpose(0, 1)
    seq, batch = x.shape[0], x.shape[1]
    if a.has(4) and not isinstance(a.values[4], np.ndarray):
        raise UnsupportedModelError("LSTM with run-time sequence lengths is not supported on the ONNX-to-PyTorch route")
    if a.has(4) and np.any(a.values[4] != seq):
        raise UnsupportedModelError("LSTM with sequence lengths shorter than the input is not supported on this route")
    hidden = int(a.get("hidden_size"))
    directions = w.shape[0]
    zeros = torch.zeros(directions, batch, hidden, dtype=x.dtype)
    h0 = a.t(5) if a.has(5) else zeros
    c0 = a.t(6) if a.has(6) else zeros
    direction = a.get("direction", b"forward")
    reverse_first = direction in (b"reverse", "reverse")
    ys, hs, cs = [], [], []
    for d in range(directions):
        bias = b[d, :4 * hidden] + b[d, 4 * hidden:] if b is not None else 0.0
        gates_x = torch.matmul(x, w[d].transpose(0, 1)) + bias
        h, c = h0[d], c0[d]
        steps = range(seq - 1, -1, -1) if (d == 1 or reverse_first) else range(seq)
        out: list[Any] = [None] * seq
        for t in steps:
            g = gates_x[t] + torch.matmul(h, r[d].transpose(0, 1))
            i, o, f, cell = g.split(hidden, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cell)
            h = torch.sigmoid(o) * torch.tanh(c)
            out[t] = h
        ys.append(torch.stack(out, 0))
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, 1)
    y_h, y_c = torch.stack(hs, 0), torch.stack(cs, 0)
    if a.get("layout", 0):
        return [y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)]
    return [y, y_h, y_c]


OPS = {**TENSOR_OPS, **NN_OPS, "LSTM": _lstm}


class OnnxModule:
    """Builds the nn.Module that interprets an ONNX graph (a factory: torch is imported lazily)."""

    @staticmethod
    def build(model: Any, feed: dict[str, np.ndarray]) -> tuple[Any, tuple[Any, ...]]:
        """The module and its example arguments (the feed, in the graph's input order)."""
        import torch
        from onnx import numpy_helper

        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        initializers = {i.name: numpy_helper.to_array(i) for g in _graphs(graph) for i in g.initializer}
        input_names = [v.name for v in graph.input if v.name not in initializers]

        class Interpreted(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.static: dict[str, np.ndarray] = dict(initializers)
                self.used_as_tensor: set[str] = set()
                self.buffer_of: dict[str, str] = {}
                self.recording = True

            def as_tensor(self, name: str, value: Any) -> Any:
                if not isinstance(value, np.ndarray):
                    return value
                if self.recording:
                    self.used_as_tensor.add(name)
                    return torch.from_numpy(np.array(value))
                return getattr(self, self.buffer_of[name])

            def freeze(self) -> None:
                """After the eager run: every constant read as a tensor becomes a buffer; trace from now on."""
                for i, name in enumerate(sorted(self.used_as_tensor)):
                    self.buffer_of[name] = f"c{i}"
                    self.register_buffer(f"c{i}", torch.from_numpy(np.array(self.static[name])))
                self.recording = False

            def run_graph(self, g: Any, env: dict[str, Any]) -> list[Any]:
                for node in g.node:
                    self.run_node(node, env)
                return [env[o.name] for o in g.output]

            def run_node(self, node: Any, env: dict[str, Any]) -> None:
                outs = [o for o in node.output if o]
                if not self.recording and all(o in self.static for o in outs):
                    env.update({o: self.static[o] for o in outs})
                    return
                names = list(node.input)
                values = [None if not n else self.static[n] if n in self.static else env[n] for n in names]
                results = self.compute(node, values, env)
                results = results if isinstance(results, (list, tuple)) else [results]
                is_static = node.op_type in SHAPE_OPS or all(isinstance(v, np.ndarray) for v in values if v is not None)
                for name, result in zip(node.output, results, strict=False):
                    if not name:
                        continue
                    if self.recording and is_static and node.op_type != "If":
                        result = result.detach().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)
                        self.static[name] = result
                    env[name] = result

            def compute(self, node: Any, values: list[Any], env: dict[str, Any]) -> Any:
                op = node.op_type
                if node.domain not in ("", "ai.onnx"):
                    raise UnsupportedModelError(f"the operator {node.domain}.{op} is not supported on the ONNX-to-PyTorch "
                                                "route")
                if op == "Constant":
                    return self.constant(node)
                if op == "Shape":
                    shape = np.array(self.shape_of(values[0]), np.int64)
                    attrs = _attrs(node)
                    return shape[attrs.get("start", 0):attrs.get("end", len(shape))]
                if op == "Size":
                    return np.array(int(np.prod(self.shape_of(values[0]))), np.int64)
                if op == "ConstantOfShape":
                    fill = _attrs(node).get("value")
                    fill = numpy_helper.to_array(fill) if fill is not None else np.zeros(1, np.float32)
                    return np.full([int(d) for d in np.ravel(values[0])], fill.ravel()[0], fill.dtype)
                if op == "If":
                    return self.branch(node, values[0], env)
                args = Args(node, values, _attrs(node), opset, self.as_tensor)
                fn = OPS.get(op)
                if fn is None:
                    raise UnsupportedModelError(f"the ONNX operator {op} is not supported on the ONNX-to-PyTorch route "
                                                "(edgekit's interpreter); use another route or target")
                return fn(args)

            @staticmethod
            def shape_of(value: Any) -> tuple[int, ...]:
                return tuple(int(d) for d in (value.shape if value is not None else ()))

            @staticmethod
            def constant(node: Any) -> np.ndarray:
                attr = node.attribute[0]
                value = _attrs(node)[attr.name]
                if attr.name == "value":
                    return numpy_helper.to_array(value)
                kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                         "value_ints": np.int64}
                if attr.name not in kinds:
                    raise UnsupportedModelError(f"Constant with {attr.name} is not supported on the ONNX-to-PyTorch route")
                return np.array(value, kinds[attr.name])

            def branch(self, node: Any, cond: Any, env: dict[str, Any]) -> list[Any]:
                then_g, else_g = _subgraph(node, "then_branch"), _subgraph(node, "else_branch")
                if isinstance(cond, np.ndarray):
                    return self.run_graph(then_g if bool(cond.ravel()[0]) else else_g, dict(env))
                then_out = self.run_graph(then_g, dict(env))
                else_out = self.run_graph(else_g, dict(env))
                picked = []
                for k, (t, e) in enumerate(zip(then_out, else_out, strict=True)):
                    if tuple(t.shape) != tuple(e.shape):
                        raise UnsupportedModelError(
                            f"If node {node.name!r}: its condition depends on the model's inputs and its branches give "
                            f"output {k} different shapes ({list(t.shape)} and {list(e.shape)}); the ONNX-to-PyTorch "
                            "route computes both branches and selects, which needs equal shapes")
                    t = torch.from_numpy(np.array(t)) if isinstance(t, np.ndarray) else t
                    e = torch.from_numpy(np.array(e)) if isinstance(e, np.ndarray) else e
                    picked.append(torch.where(cond.reshape(()).to(torch.bool), t, e))
                return picked

            def forward(self, *args: Any) -> tuple[Any, ...]:
                env = dict(zip(input_names, args, strict=True))
                outs = self.run_graph(graph, env)
                return tuple(self.as_tensor(o.name, v) for o, v in zip(graph.output, outs, strict=True))

        module = Interpreted()
        example = tuple(torch.from_numpy(np.array(feed[n], order="C")) for n in input_names)  # keeps a scalar rank 0
        with torch.no_grad():
            module(*example)  # the eager run: finds every value known before run time
        module.freeze()
        return module.eval(), example


def _drop_aliases(program: Any) -> None:
    """Remove the ``aten.alias`` ops export leaves for no-op views (coremltools has no converter for them)."""
    import torch

    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()


class OnnxToTorchProgram(Pass):
    """ONNX to a torch.export program, interpreted op by op in PyTorch (fixed shapes, batch 1)."""


    def _run(self, value: Value, ctx: PassContext) -> Value:
        import onnx
        import torch

        path = ctx.scratch("onnx-torch.onnx")
        shutil.copyfile(value.file, path)
        model = onnx.load(str(path))
        notes: dict[str, Any] = {"converter": f"edgekit's ONNX interpreter, torch.export {torch.__version__}",
                                 "batch": "fixed to 1"}
        cleared = clear_wrong_output_shapes(model, path, ctx.samples)
        fixed = fixed_input_shapes(ctx, fix_all=True)
        if fixed and fix_input_shapes(model, fixed):
            model = slim(model)
            notes["fixed_shapes"] = fixed
        if cleared:
            notes["rewrites"] = [f"declared shapes of {cleared} outputs dropped: the graph computes others"]
        expanded = expand_function_ops(model, known=frozenset(OPS) | SHAPE_OPS | {"If"})
        if expanded:
            done = ", ".join(f"{n} {op}" for op, n in sorted(expanded.items()))
            notes.setdefault("rewrites", []).append(f"ONNX ops expanded into their function definitions: {done}")
        source_names = [s.name for s in ctx.inputs]
        feed = next(iter_feeds(ctx.samples, ctx.inputs, 1))
        feed = {n: np.asarray(feed[n]) for n in source_names}
        module, example = OnnxModule.build(model, feed)
        if [v.name for v in model.graph.input if v.name in feed] != source_names:
            raise ConversionError("the interpreted ONNX graph's inputs are not the source's; edgekit cannot feed it")
        with torch.no_grad():
            program = torch.export.export(module, example, strict=False)
        _drop_aliases(program)
        return Value(Kind.TORCH_EXPORT, obj=program, notes=notes)
