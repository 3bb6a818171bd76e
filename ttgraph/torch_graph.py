"""An ONNX graph as a differentiable PyTorch module, so that the factors of a rewritten model can be fitted by
gradient descent (:mod:`ttgraph.distill`).

Why not onnx2torch: it imports torchvision at import time, and a torchvision wheel must match the torch build
exactly (PyPI's beside a CPU torch fails to import), which would make a CPU-only install of the distillation
extra impossible. The executor below covers the operators of the CNN detectors and classifiers ttgraph is
built for — convolutions, normalization, the exported activations, pooling, resizing, reshaping — and names
any other operator in a one-line error before any work starts.

Every initializer becomes a tensor of the module; the ones named in ``trainable`` become parameters, all the
others stay constants (buffers). Shapes are static (the model's input shapes are fixed before compression), so
``Shape`` and the index arithmetic around it evaluate to constants as they run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ttgraph.errors import TTGraphError

try:  # the distillation extra: pip install -e ".[distill]"
    import torch
    import torch.nn.functional as F  # noqa: N812
except ImportError:  # pragma: no cover - exercised only without the extra
    torch = None  # type: ignore[assignment]
    F = None  # type: ignore[assignment]

__all__ = ["GraphModule", "check_runnable", "require_torch", "supported_ops"]


def require_torch(what: str = "distillation") -> None:
    """A one-line error when PyTorch is missing, saying how to install it."""
    if torch is None:
        raise TTGraphError(
            "options",
            f"{what} needs PyTorch: pip install 'torch>=2.2' (in ttgraph's checkout: pip install -e '.[distill]')",
        )


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads(attrs: Mapping[str, Any], rank: int, spatial: Sequence[int] = (), kernel: Sequence[int] = ()) -> list[int]:
    """ONNX pads ``[b1, …, e1, …]``; ``auto_pad=SAME_*`` computed from the input's ``spatial`` size and the
    ``kernel`` as onnxruntime does (the extra pad at the end for SAME_UPPER, at the start for SAME_LOWER)."""
    mode = attrs.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode in ("SAME_UPPER", "SAME_LOWER") and len(spatial) == len(kernel) == rank:
        strides, dilations = attrs.get("strides", [1] * rank), attrs.get("dilations", [1] * rank)
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            begin.append(small if mode == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin + end
    if mode not in ("NOTSET", "VALID"):
        raise ValueError(f"auto_pad={mode} is not supported here; export with explicit pads")
    return list(attrs.get("pads", [0] * (2 * rank)))


def _padded(x, pads: list[int], value: float = 0.0):
    """Apply ONNX pads ``[b1, b2, …, e1, e2, …]``; returns the input and the symmetric pads left for the op."""
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        return x, begin
    flat: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        flat += [b, e]
    return F.pad(x, flat, value=value), [0] * rank


def _conv(attrs, x, w, b=None):
    rank = w.dim() - 2
    x, pads = _padded(x, _pads(attrs, rank, x.shape[2:], w.shape[2:]))
    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    return conv(
        x,
        w,
        b,
        stride=attrs.get("strides", [1] * rank),
        padding=pads,
        dilation=attrs.get("dilations", [1] * rank),
        groups=attrs.get("group", 1),
    )


def _conv_transpose(attrs, x, w, b=None):
    rank = w.dim() - 2
    pads = _pads(attrs, rank)
    if pads[:rank] != pads[rank:] or "output_shape" in attrs:
        raise ValueError("ConvTranspose with asymmetric pads or output_shape is not supported")
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
    return conv(
        x,
        w,
        b,
        stride=attrs.get("strides", [1] * rank),
        padding=pads[:rank],
        output_padding=attrs.get("output_padding", [0] * rank),
        groups=attrs.get("group", 1),
        dilation=attrs.get("dilations", [1] * rank),
    )


def _batch_norm(attrs, x, scale, bias, mean, var):
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))
    return x * inv.reshape(shape) + (bias - mean * inv).reshape(shape)


def _clip(attrs, x, lo=None, hi=None):
    lo = attrs.get("min") if lo is None else lo
    hi = attrs.get("max") if hi is None else hi
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype))
    return x


def _hard_sigmoid(attrs, x):
    return torch.clamp(x * attrs.get("alpha", 0.2) + attrs.get("beta", 0.5), 0.0, 1.0)


def _pool(kind: str):
    def run(attrs, x):
        rank = x.dim() - 2
        kernel = attrs["kernel_shape"]
        pad_value = -math.inf if kind == "max" else 0.0
        x, pads = _padded(x, _pads(attrs, rank, x.shape[2:], kernel), pad_value)
        strides = attrs.get("strides", [1] * rank)
        ceil = bool(attrs.get("ceil_mode", 0))
        if kind == "max":
            return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1](
                x, kernel, strides, pads, attrs.get("dilations", [1] * rank), ceil
            )
        include = bool(attrs.get("count_include_pad", 0))
        return (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1](x, kernel, strides, pads, ceil, include)

    return run


def _reshape(attrs, x, shape):
    dims = [int(d) for d in shape.tolist()]
    if not attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(attrs, x):
    axis = attrs.get("axis", 1) % max(x.dim(), 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _axes(attrs, axes_input, dim):
    axes = attrs.get("axes") if axes_input is None else [int(a) for a in axes_input.tolist()]
    return None if axes is None else [a % dim for a in axes]


def _reduce(name: str):
    """A Reduce* op as ``torch.<name>``, looked up when it runs: this table is built at import, with or without
    PyTorch installed (without it, ``require_torch`` gives the install hint)."""

    def run(attrs, x, axes=None):
        dims = _axes(attrs, axes, x.dim())
        keep = bool(attrs.get("keepdims", 1))
        if dims is None:
            dims = list(range(x.dim()))
        return getattr(torch, name)(x, dim=dims, keepdim=keep)

    return run


def _unsqueeze(attrs, x, axes=None):
    dims = sorted(_axes(attrs, axes, x.dim() + len(attrs.get("axes", axes.tolist() if axes is not None else []))))
    for d in dims:
        x = x.unsqueeze(d)
    return x


def _squeeze(attrs, x, axes=None):
    dims = _axes(attrs, axes, x.dim())
    if dims is None:
        return x.squeeze()
    for d in sorted(dims, reverse=True):
        x = x.squeeze(d)
    return x


def _slice(attrs, x, starts=None, ends=None, axes=None, steps=None):
    if starts is None:  # opset < 10: attributes
        starts, ends, axes = attrs["starts"], attrs["ends"], attrs.get("axes")
    else:
        starts, ends = starts.tolist(), ends.tolist()
        axes = None if axes is None else axes.tolist()
        steps = None if steps is None else steps.tolist()
    axes = list(range(len(starts))) if axes is None else [a % x.dim() for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step <= 0:
            raise ValueError("Slice with a negative step is not supported")
        size = x.shape[axis]
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _resize(attrs, x, roi=None, scales=None, sizes=None):
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if sizes is not None and sizes.numel():
        out = [int(s) for s in sizes.tolist()[2:]]
    else:
        out = [int(math.floor(d * float(s))) for d, s in zip(x.shape[2:], scales.tolist()[2:], strict=True)]
    transform = attrs.get("coordinate_transformation_mode", b"half_pixel")
    transform = transform.decode() if isinstance(transform, bytes) else transform
    if mode == "nearest":
        nearest = attrs.get("nearest_mode", b"round_prefer_floor")
        nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
        if all(o % d == 0 for o, d in zip(out, x.shape[2:], strict=True)) and transform == "asymmetric":
            return F.interpolate(x, size=out, mode="nearest")  # integer upsampling: every rule picks the same
        if transform == "asymmetric" and nearest == "floor":
            return F.interpolate(x, size=out, mode="nearest")
        raise ValueError(f"Resize nearest with {transform}/{nearest} is not supported")
    if mode == "linear":
        if transform in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, size=out, mode="bilinear" if x.dim() == 4 else "linear", align_corners=False)
        if transform == "align_corners":
            return F.interpolate(x, size=out, mode="bilinear" if x.dim() == 4 else "linear", align_corners=True)
    raise ValueError(f"Resize mode {mode} with {transform} is not supported")


def _softmax(attrs, x):
    if attrs.get("_before_13"):  # opsets 1–12: the input is flattened to 2-D at ``axis`` (default 1)
        axis = attrs.get("axis", 1) % x.dim()
        return torch.softmax(x.reshape(math.prod(x.shape[:axis]), -1), dim=-1).reshape(x.shape)
    return torch.softmax(x, dim=attrs.get("axis", -1))


def _split(attrs, x, split=None, *, outputs: int = 1):
    axis = attrs.get("axis", 0)
    sizes = attrs.get("split") if split is None else split.tolist()
    if sizes is None:
        sizes = [x.shape[axis] // outputs] * outputs
    return tuple(torch.split(x, list(sizes), dim=axis))


def _gemm(attrs, a, b, c=None):
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * (a @ b)
    return y if c is None else y + attrs.get("beta", 1.0) * c


def _cast(attrs, x):
    dtype = helper.tensor_dtype_to_np_dtype(attrs["to"])
    return x.to(torch.from_numpy(np.zeros(0, dtype)).dtype)


def _gather(attrs, x, index):
    axis = attrs.get("axis", 0) % x.dim()
    idx = index.long() % x.shape[axis]
    picked = torch.index_select(x, axis, idx.reshape(-1))
    return picked.reshape([*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]])


def _constant_of_shape(attrs, shape):
    """``ConstantOfShape``: the attribute's one value (default float32 0) over ``shape``."""
    value = attrs.get("value")
    fill = numpy_helper.to_array(value).reshape(-1)[:1] if value is not None else np.zeros(1, np.float32)
    return _tensor(np.broadcast_to(fill, [int(d) for d in shape.tolist()]))


def _expand(attrs, x, shape):
    """``Expand``: numpy-style broadcast of ``x`` and ``shape`` (either may hold the 1s)."""
    return torch.broadcast_to(x, np.broadcast_shapes(tuple(x.shape), tuple(int(d) for d in shape.tolist())))


def _range(attrs, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


_OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batch_norm,
    "Add": lambda a, x, y: x + y,
    "Sub": lambda a, x, y: x - y,
    "Mul": lambda a, x, y: x * y,
    "Div": lambda a, x, y: x / y,
    "Pow": lambda a, x, y: x**y,
    "Neg": lambda a, x: -x,
    "Sqrt": lambda a, x: torch.sqrt(x),
    "Exp": lambda a, x: torch.exp(x),
    "Relu": lambda a, x: torch.relu(x),
    "LeakyRelu": lambda a, x: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Sigmoid": lambda a, x: torch.sigmoid(x),
    "Tanh": lambda a, x: torch.tanh(x),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda a, x: F.hardswish(x),
    "Clip": _clip,
    "Identity": lambda a, x: x,
    "Dropout": lambda a, x, *rest: x,
    "MatMul": lambda a, x, y: x @ y,
    "Gemm": _gemm,
    "Softmax": _softmax,
    "GlobalAveragePool": lambda a, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda a, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": lambda a, x: x.permute(*(a.get("perm") or list(reversed(range(x.dim()))))),
    "Concat": lambda a, *xs: torch.cat(xs, dim=a["axis"]),
    "Split": _split,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Resize": _resize,
    "Cast": _cast,
    "Gather": _gather,
    "Shape": lambda a, x: torch.tensor(list(x.shape), dtype=torch.int64),
    "ConstantOfShape": _constant_of_shape,  # with Expand and Range: the shape arithmetic of YOLO-style anchors
    "Expand": _expand,
    "Range": _range,
}


def supported_ops() -> list[str]:
    """The ONNX operators the executor runs (default domain)."""
    return sorted(_OPS)


def check_runnable(model: onnx.ModelProto, source: str = "<model>") -> None:
    """One line naming the operators the executor cannot run (checked before any work, not after it)."""
    unknown = sorted(
        {
            f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
            for n in model.graph.node
            if n.domain not in ("", "ai.onnx") or n.op_type not in {*_OPS, "Constant"}
        }
    )
    if unknown:
        raise TTGraphError(
            source, f"distillation cannot run operator(s) {', '.join(unknown)} (supported: {', '.join(_OPS)})"
        )
    other = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    typed = [(t.name, t.data_type) for t in model.graph.initializer]
    typed += [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)]
    odd = next(((name, kind) for name, kind in typed if kind in other), None)
    if odd is not None:  # its factors train in float32 beside the model's own float16 values: a failure after all else
        kind = onnx.TensorProto.DataType.Name(odd[1]).lower()
        raise TTGraphError(
            source, f"distillation trains float32 models; {odd[0]!r} is {kind}: run without distillation"
        )


AGREEMENT = 1e-2  # relative L2 difference of PyTorch's and onnxruntime's runs: well above float (or fp16) rounding


def check_agrees(model: onnx.ModelProto, feed: Mapping[str, Any], source: str = "<model>") -> None:
    """PyTorch's run of ``model`` on ``feed`` must match onnxruntime's: an operator variant translated otherwise
    (an old Softmax's flattening, a pooling's padding rule, …) would have distillation fit another function than
    the one written, and keep it. On a mismatch, one line naming the first node whose float output differs."""
    from ttgraph.verify import session

    names = [o.name for o in model.graph.output]
    module = GraphModule(model, source=source)
    tensors = {k: _tensor(np.asarray(v)) for k, v in feed.items()}
    with torch.no_grad():
        mine = module(tensors, names)
    theirs = dict(zip(names, session(model, name=source).run(names, dict(feed)), strict=True))
    worst = max(((n, _relative(m, theirs[n])) for n, m in zip(names, mine, strict=True)), key=lambda t: t[1])
    if worst[1] <= AGREEMENT:
        return
    node = _first_disagreement(model, module, tensors, feed, source)
    raise TTGraphError(
        source,
        f"PyTorch runs this model differently from onnxruntime (output {worst[0]!r}: relative error {worst[1]:.2g} "
        f"on the first calibration sample{'' if node is None else f', first at node {node}'}): distillation "
        "would fit another function than the model's; run without distillation",
    )


def _relative(mine: Any, theirs: np.ndarray) -> float:
    """Relative L2 difference of two float tensors (0 for tensors that are not float, compared exactly)."""
    a, b = mine.detach().double().numpy() if torch.is_tensor(mine) else np.asarray(mine), np.asarray(theirs)
    if a.shape != b.shape:
        return math.inf
    if b.dtype.kind != "f":
        return 0.0 if np.array_equal(a, b) else math.inf
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))


def _first_disagreement(model: onnx.ModelProto, module: Any, tensors: dict, feed: Mapping[str, Any], source: str):
    """``'name' (Op)`` of the first node, in graph order, whose float32 output differs between the runtimes."""
    from ttgraph.calibration import expose_tensors
    from ttgraph.verify import session

    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    names = [o for n in nodes for o in n.output if o]
    with torch.no_grad():
        values = dict(zip(names, module(tensors, names), strict=True))
    floats = [o for o in names if torch.is_tensor(values[o]) and values[o].dtype == torch.float32]
    exposed, fetch = expose_tensors(model, [(o, np.dtype(np.float32)) for o in floats])
    try:
        got = dict(zip(fetch, session(exposed, name=source).run(fetch, dict(feed)), strict=True))
    except Exception:  # an output onnxruntime types otherwise: the output alone is named
        return None
    for node in nodes:
        for out in node.output:
            if out in got and _relative(values[out], got[out]) > AGREEMENT:
                return f"{node.name or out!r} ({node.op_type})"
    return None


def _tensor(array: np.ndarray):
    return torch.from_numpy(np.array(array, copy=True))


class GraphModule(torch.nn.Module if torch is not None else object):  # type: ignore[misc]
    """Runs an ONNX graph node by node with PyTorch ops. ``trainable`` initializers are ``nn.Parameter``s
    (float32 for training); ``forward`` takes the model's inputs by name and returns the requested tensors."""

    def __init__(self, model: onnx.ModelProto, trainable: Iterable[str] = (), source: str = "<model>"):
        require_torch()
        super().__init__()
        check_runnable(model, source)
        graph = model.graph
        wanted = set(trainable)
        self.parameter_names: dict[str, str] = {}  # initializer name → attribute name
        self.constants: dict[str, Any] = {}
        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            if init.name in wanted:
                attr = f"p{len(self.parameter_names)}"
                self.register_parameter(attr, torch.nn.Parameter(_tensor(array.astype(np.float32))))
                self.parameter_names[init.name] = attr
            else:
                self.constants[init.name] = _tensor(array)
        missing = wanted - set(self.parameter_names)
        if missing:
            raise TTGraphError(source, f"no initializer named {sorted(missing)[0]!r} to train")
        self.nodes = list(graph.node)
        self.attrs = [_attrs(n) for n in self.nodes]
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        for node, attrs in zip(self.nodes, self.attrs, strict=True):
            if node.op_type == "Softmax" and opset < 13:
                attrs["_before_13"] = True
        for node, attrs in zip(self.nodes, self.attrs, strict=True):
            if node.op_type == "Constant":
                self.constants[node.output[0]] = _tensor(numpy_helper.to_array(attrs["value"]))
        self.inputs = [i.name for i in graph.input if i.name not in self.constants and i.name not in wanted]
        self.source = source

    def parameter(self, name: str):
        return getattr(self, self.parameter_names[name])

    def forward(self, feeds: Mapping[str, Any], outputs: Sequence[str], batch: int = 1) -> list[Any]:
        """Run the graph on ``feeds``. ``batch`` > 1: each input holds ``batch`` of the model's inputs stacked on
        axis 0, and a Reshape to a constant shape scales its leading dim by ``batch`` (a CNN exported for batch
        1 reshapes to ``[1, …]``); :func:`ttgraph.distill.distill` checks the batched outputs against
        sample-by-sample ones before it relies on them."""
        values: dict[str, Any] = dict(self.constants)
        for name, attr in self.parameter_names.items():
            values[name] = getattr(self, attr)
        for name in self.inputs:
            values[name] = feeds[name]
        batched = set(self.inputs) if batch > 1 else set()  # tensors that carry the stacked samples
        for node, attrs in zip(self.nodes, self.attrs, strict=True):
            if node.op_type == "Constant":
                continue
            if node.op_type != "Shape" and batched.intersection(node.input):
                batched.update(node.output)
            args = [values[i] if i else None for i in node.input]
            while args and args[-1] is None:
                args.pop()
            try:
                if node.op_type == "Reshape" and node.input[0] in batched:
                    data, shape = args[0], args[1]
                    if data is None or shape is None:  # both inputs are required
                        raise ValueError("Reshape needs its data and shape inputs")
                    dims = [int(d) for d in shape.tolist()]
                    if dims and dims[0] > 0 and data.shape[0] == dims[0] * batch:
                        dims[0] *= batch
                    result = _reshape(attrs, data, torch.tensor(dims))
                elif node.op_type == "Split":
                    result = _split(attrs, *args, outputs=len(node.output))
                else:
                    result = _OPS[node.op_type](attrs, *args)
            except (ValueError, RuntimeError, KeyError, IndexError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise TTGraphError(
                    self.source, f"distillation cannot run node {node.name!r} ({node.op_type}): {first}"
                ) from err
            if isinstance(result, tuple):
                for name, value in zip(node.output, result, strict=False):
                    values[name] = value
            else:
                values[node.output[0]] = result
        return [values[name] for name in outputs]
