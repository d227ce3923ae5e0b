"""Translate an inference jaxpr into an ONNX model (opset 18), one ``lax`` primitive at a time.

``jax2tf`` now serialises only StableHLO (an ``XlaCallModule`` that ``tf2onnx`` cannot read),
and ``jax2onnx`` pins an orbax older than attnzoo's, so the ONNX export walks the jaxpr
itself: every equation of the traced program (nested ``jit`` / ``custom_jvp`` / ``custom_vjp``
calls inlined) becomes the ONNX nodes that compute the same values. Equations whose inputs
are all constants (the weights, ``iota``, the resize matrices) are evaluated at export time
and stored as initializers, so the graph holds only what depends on the image. One input
dimension may be symbolic (``jax.export.symbolic_shape``; the batch): shapes that depend on it
become ``-1`` in reshapes and the input's own size in broadcasts, so one graph serves every
batch size; every other dimension is static.

What it translates is what attnzoo's inference graphs use (checked on every registered
family by ``tests/test_export.py``); anything else raises :class:`UnsupportedPrimitiveError`
naming the primitive, e.g. a ``scan`` of the memory-bounded attention or sliding windows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

OPSET = 18
_Value = Any  # a numpy array (a constant known at export time) or a str (an ONNX tensor name)
_END = np.iinfo(np.int64).max  # a Slice's end past any size


class UnsupportedPrimitiveError(NotImplementedError):
    """The traced program uses a primitive (or a form of one) the translator has no rule for."""


def _onnx_dtype(dtype: Any) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _static(shape: Sequence[Any]) -> bool:
    return all(isinstance(d, (int, np.integer)) for d in shape)


class _Graph:
    """The nodes and initializers of the ONNX graph being built; ``symbol`` the symbolic
    dimension of input ``source`` at ``axis`` (or ``None``)."""

    def __init__(self, symbol: Any = None, source: str = "", axis: int = 0) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = itertools.count()
        self.symbol, self._source, self._axis = symbol, source, axis
        self._symbol_size: str | None = None

    def fresh(self, hint: str) -> str:
        """A tensor name not used before."""
        return f"{hint}_{next(self._count)}"

    def tensor(self, value: _Value) -> str:
        """The ONNX name of ``value``, a constant stored as an initializer."""
        if isinstance(value, str):
            return value
        from onnx import numpy_helper

        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[_Value], **attrs: Any) -> str:
        """One node with one output; returns the output's name."""
        from onnx import helper

        out = self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, [self.tensor(v) for v in inputs], [out],
                                           name=out, **attrs))
        return out

    def shape(self, x: _Value, shape: Sequence[Any]) -> _Value:
        """``x`` reshaped (a constant at once, a tensor by a ``Reshape`` node; the one
        dimension that depends on the symbolic one inferred, ``-1``)."""
        if not isinstance(x, str):
            return np.reshape(x, shape)
        symbolic = [d for d in shape if not isinstance(d, (int, np.integer))]
        if len(symbolic) > 1:
            raise UnsupportedPrimitiveError(f"a reshape to {tuple(shape)}: more than one "
                                            f"dimension depends on the symbolic one")
        target = [int(d) if isinstance(d, (int, np.integer)) else -1 for d in shape]
        return self.op("Reshape", [x, np.asarray(target, np.int64)])

    def expand(self, x: _Value, shape_of_x: Sequence[Any], shape: Sequence[Any]) -> _Value:
        """``x`` (of ``shape_of_x``, the same rank) broadcast to ``shape``: an ``Expand`` whose
        target is 1 where ``x`` has the dimension already and the input's own size where a
        dimension is the symbolic one."""
        if tuple(shape_of_x) == tuple(shape):
            return x
        if _static(shape):
            return self.op("Expand", [x, np.asarray(shape, np.int64)])
        pieces: list[_Value] = []
        for have, want in zip(shape_of_x, shape):
            if isinstance(want, (int, np.integer)) or have == want:
                pieces.append(np.asarray([want if isinstance(want, (int, np.integer)) else 1],
                                         np.int64))
            elif want == self.symbol:
                pieces.append(self.symbol_size())
            else:
                raise UnsupportedPrimitiveError(f"a broadcast to {tuple(shape)}")
        return self.op("Expand", [x, self.op("Concat", pieces, axis=0)])

    def symbol_size(self) -> str:
        """The size of the symbolic dimension, a 1-element int64 tensor read off the input."""
        if self._symbol_size is None:
            self._symbol_size = _slice(self, self.op("Shape", [self._source]), [self._axis],
                                       [self._axis + 1])
        return self._symbol_size

    def transpose(self, x: _Value, perm: Sequence[int]) -> _Value:
        """``x`` transposed (nothing for the identity; a constant at once)."""
        if list(perm) == sorted(perm):
            return x
        return np.transpose(x, perm) if not isinstance(x, str) else \
            self.op("Transpose", [x], perm=list(perm))


_Rule = Callable[[_Graph, Any, list[_Value]], list[_Value]]
_RULES: dict[str, _Rule] = {}


def _rule(*names: str) -> Callable[[_Rule], _Rule]:
    """Register the decorated function as the translation of the primitives ``names``."""

    def register(fn: _Rule) -> _Rule:
        for name in names:
            _RULES[name] = fn
        return fn
    return register


_ELEMENTWISE = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max",
                "min": "Min", "pow": "Pow", "eq": "Equal", "gt": "Greater",
                "ge": "GreaterOrEqual", "lt": "Less", "le": "LessOrEqual", "neg": "Neg",
                "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign",
                "logistic": "Sigmoid", "tanh": "Tanh", "erf": "Erf", "floor": "Floor",
                "ceil": "Ceil", "copy": "Identity", "copy_p": "Identity",
                "stop_gradient": "Identity", "optimization_barrier": "Identity"}
_BITWISE = {"and": ("And", "BitwiseAnd"), "or": ("Or", "BitwiseOr"), "not": ("Not", "BitwiseNot")}


def _elementwise(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    name = eqn.primitive.name
    if name in _BITWISE:
        op = _BITWISE[name][eqn.outvars[0].aval.dtype != np.bool_]
    else:
        op = _ELEMENTWISE[name]
    if name == "div" and np.issubdtype(eqn.outvars[0].aval.dtype, np.integer):
        raise UnsupportedPrimitiveError("integer div (lax rounds toward zero; ONNX's Div "
                                        "leaves it to the runtime)")
    return [g.op(op, ins)]


for _name in (*_ELEMENTWISE, *_BITWISE):
    _RULES[_name] = _elementwise


@_rule("ne")
def _ne(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.op("Not", [g.op("Equal", ins)])]


@_rule("rem")
def _rem(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.op("Mod", ins, fmod=1)]  # the sign of the dividend, as C's fmod and lax.rem


@_rule("rsqrt")
def _rsqrt(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.op("Reciprocal", [g.op("Sqrt", ins)])]


@_rule("erfc")
def _erfc(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    one = np.ones((), eqn.outvars[0].aval.dtype)
    return [g.op("Sub", [one, g.op("Erf", ins)])]


@_rule("square")
def _square(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.op("Mul", [ins[0], ins[0]])]


@_rule("integer_pow")
def _integer_pow(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    y = eqn.params["y"]
    if y == 0:
        aval = eqn.outvars[0].aval
        return [g.expand(np.ones((1,) * aval.ndim, aval.dtype), (1,) * aval.ndim, aval.shape)]
    out = ins[0]
    for _ in range(abs(y) - 1):  # products as XLA's expansion of small powers
        out = g.op("Mul", [out, ins[0]])
    return [g.op("Reciprocal", [out]) if y < 0 else out]


@_rule("convert_element_type")
def _convert(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.op("Cast", ins, to=_onnx_dtype(eqn.params["new_dtype"]))]


@_rule("reshape", "squeeze", "expand_dims")
def _reshape(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.shape(ins[0], eqn.outvars[0].aval.shape)]


@_rule("broadcast_in_dim")
def _broadcast(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    shape = eqn.params["shape"]
    kept = [1] * len(shape)
    for src, dst in enumerate(eqn.params["broadcast_dimensions"]):
        kept[dst] = eqn.invars[0].aval.shape[src]
    x = ins[0] if tuple(kept) == tuple(eqn.invars[0].aval.shape) else g.shape(ins[0], kept)
    return [g.expand(x, kept, shape)]


@_rule("transpose")
def _transpose(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.transpose(ins[0], eqn.params["permutation"])]


@_rule("concatenate")
def _concatenate(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.op("Concat", ins, axis=eqn.params["dimension"])]


def _slice(g: _Graph, x: _Value, starts: Sequence[int], ends: Sequence[int],
           steps: Sequence[int] | None = None) -> _Value:
    axes = np.arange(len(starts), dtype=np.int64)
    steps = np.ones(len(starts), np.int64) if steps is None else np.asarray(steps, np.int64)
    return g.op("Slice", [x, np.asarray(starts, np.int64), np.asarray(ends, np.int64), axes,
                          steps])


@_rule("slice")
def _slice_rule(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    shape, p = eqn.invars[0].aval.shape, eqn.params
    if not _static(p["start_indices"]) or not all(
            isinstance(end, (int, np.integer)) or end == n
            for end, n in zip(p["limit_indices"], shape)):
        raise UnsupportedPrimitiveError("a slice of part of the symbolic dimension")
    ends = [int(end) if isinstance(end, (int, np.integer)) else _END
            for end in p["limit_indices"]]
    return [_slice(g, ins[0], p["start_indices"], ends, p["strides"])]


@_rule("pad")
def _pad(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    config = [tuple(int(v) for v in c) for c in eqn.params["padding_config"]]
    if any(interior for _, _, interior in config):
        raise UnsupportedPrimitiveError("pad with interior padding")
    x, value = ins
    grow = [max(lo, 0) for lo, _, _ in config] + [max(hi, 0) for _, hi, _ in config]
    if any(grow):
        x = g.op("Pad", [x, np.asarray(grow, np.int64), g.shape(value, ())], mode="constant")
    if any(lo < 0 or hi < 0 for lo, hi, _ in config):  # negative padding crops (ends < 0:
        x = _slice(g, x, [max(-lo, 0) for lo, _, _ in config],  # counted from the end)
                   [hi if hi < 0 else _END for _, hi, _ in config])
    return [x]


@_rule("select_n")
def _select_n(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    which, *cases = ins
    if len(cases) == 1:
        return [cases[0]]
    if eqn.invars[0].aval.dtype == np.bool_:
        return [g.op("Where", [which, cases[1], cases[0]])]
    out = cases[0]
    for k, case in enumerate(cases[1:], 1):
        index = np.asarray(k, eqn.invars[0].aval.dtype)
        out = g.op("Where", [g.op("Equal", [which, index]), case, out])
    return [out]


_REDUCTIONS = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin",
               "reduce_prod": "ReduceProd"}


@_rule(*_REDUCTIONS)
def _reduce(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    axes = np.asarray(eqn.params["axes"], np.int64)
    if not axes.size:
        return [ins[0]]
    return [g.op(_REDUCTIONS[eqn.primitive.name], [ins[0], axes], keepdims=0)]


@_rule("argmax")
def _argmax(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    (axis,) = eqn.params["axes"]
    index = g.op("ArgMax", ins, axis=axis, keepdims=0, select_last_index=0)
    return [g.op("Cast", [index], to=_onnx_dtype(eqn.params["index_dtype"]))]


@_rule("dot_general")
def _dot_general(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    """``lhs`` as ``(batch, free, contracted)`` and ``rhs`` as ``(batch, contracted, free)``,
    each group flattened, one MatMul, the result reshaped to lax's ``(batch, lhs free, rhs
    free)``."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs = (v.aval.shape for v in eqn.invars)
    lf = [d for d in range(len(ls)) if d not in (*lc, *lb)]
    rf = [d for d in range(len(rs)) if d not in (*rc, *rb)]
    batch = [ls[d] for d in lb]
    size = lambda dims, shape: math.prod(shape[d] for d in dims)  # noqa: E731
    lhs = g.shape(g.transpose(ins[0], [*lb, *lf, *lc]), [*batch, size(lf, ls), size(lc, ls)])
    rhs = g.shape(g.transpose(ins[1], [*rb, *rc, *rf]), [*batch, size(rc, rs), size(rf, rs)])
    out = g.op("MatMul", [lhs, rhs])
    return [g.shape(out, eqn.outvars[0].aval.shape)]


@_rule("conv_general_dilated")
def _conv(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    p = eqn.params
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise UnsupportedPrimitiveError("conv_general_dilated with lhs_dilation or "
                                        "batch_group_count (a transposed convolution)")
    pads = [int(lo) for lo, _ in p["padding"]] + [int(hi) for _, hi in p["padding"]]
    if any(v < 0 for v in pads):
        raise UnsupportedPrimitiveError("conv_general_dilated with negative padding")
    spec = p["dimension_numbers"]
    x = g.transpose(ins[0], spec.lhs_spec)  # NCHW
    w = g.transpose(ins[1], spec.rhs_spec)  # OIHW
    out = g.op("Conv", [x, w], strides=list(p["window_strides"]), pads=pads,
               dilations=list(p["rhs_dilation"]), group=p["feature_group_count"])
    return [g.transpose(out, np.argsort(spec.out_spec).tolist())]


@_rule("reduce_window_max")
def _max_pool(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    p = eqn.params
    window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    rank = len(window)
    pooled = [d for d in range(rank) if window[d] != 1 or strides[d] != 1 or padding[d] != (0, 0)]
    if any(b != 1 for b in p["base_dilation"]) or len(pooled) > rank - 2 or \
            any(d in pooled for d in (0, rank - 1)) and any(d in pooled for d in range(1, rank - 1)):
        raise UnsupportedPrimitiveError("reduce_window_max other than a pooling over the "
                                        "spatial axes of (N, ..., C)")
    spatial = list(range(1, rank - 1))
    x = g.transpose(ins[0], [0, rank - 1, *spatial])
    out = g.op("MaxPool", [x], kernel_shape=[window[d] for d in spatial],
               strides=[strides[d] for d in spatial],
               pads=[padding[d][0] for d in spatial] + [padding[d][1] for d in spatial],
               dilations=[p["window_dilation"][d] for d in spatial])
    return [g.transpose(out, [0, *range(2, rank), 1])]


@_rule("gather")
def _gather(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    """The gathers of ``jnp.take`` (ONNX ``Gather``) and ``jnp.take_along_axis`` (batching
    dimensions; ``GatherElements``): constant indices along one axis, whole slices of the
    other axes (out-of-range indices refused, where lax would fill)."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    x, indices = ins
    shape, ishape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    if isinstance(indices, str):
        raise UnsupportedPrimitiveError("gather at indices computed from the image")
    if ishape == (len(dn.start_index_map),) and not dn.operand_batching_dims:
        return [_gather_one_window(g, eqn, x, indices)]
    axis = dn.start_index_map[0]
    offset = [d for d in range(len(shape)) if d != axis and d not in dn.operand_batching_dims]
    if len(dn.start_index_map) != 1 or tuple(dn.collapsed_slice_dims) != (axis,) or \
            ishape[-1] != 1 or any(sizes[d] != shape[d] for d in offset):
        raise UnsupportedPrimitiveError(f"gather of this form ({dn})")
    indices = indices[..., 0]
    if (indices < 0).any() or (indices >= shape[axis]).any():
        raise UnsupportedPrimitiveError("gather at indices out of range")
    batching = dict(zip(dn.operand_batching_dims, dn.start_indices_batching_dims))
    free = [k for k in range(indices.ndim) if k not in batching.values()]
    # each ONNX output dim: ("o", operand dim) or ("i", index dim); lax's order puts the
    # operand's offset dims at offset_dims and the index dims, in order, at the others
    if not batching:
        op, index, attrs = "Gather", indices, {"axis": axis}
        onnx_order = [("o", d) for d in range(axis)] + [("i", k) for k in range(indices.ndim)] \
            + [("o", d) for d in range(axis + 1, len(shape))]
    elif len(free) == 1:  # GatherElements: an index of the operand's rank, its dims in order
        source = {**batching, axis: free[0]}
        index = np.transpose(indices, [source[d] for d in range(len(shape)) if d in source])
        index = index.reshape([index.shape[sorted(source).index(d)] if d in source else 1
                               for d in range(len(shape))])
        full = [shape[d] if d in offset else index.shape[d] for d in range(len(shape))]
        op, attrs = "GatherElements", {"axis": axis}
        index = g.expand(g.tensor(index), index.shape, full)
        onnx_order = [("i", source[d]) if d in source else ("o", d) for d in range(len(shape))]
    else:
        raise UnsupportedPrimitiveError(f"gather of this form ({dn})")
    out = g.op(op, [x, index], **attrs)
    rest_o, rest_i = iter(offset), iter(range(indices.ndim))
    lax_order = [("o", next(rest_o)) if pos in dn.offset_dims else ("i", next(rest_i))
                 for pos in range(len(onnx_order))]
    return [g.transpose(out, [onnx_order.index(k) for k in lax_order])]


def _gather_one_window(g: _Graph, eqn: Any, x: _Value, start: np.ndarray) -> _Value:
    """A gather of one window at constant ``start`` (what indexing with constants becomes
    when a dimension is symbolic): a ``Slice``, the collapsed dimensions reshaped away."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    shape = eqn.invars[0].aval.shape
    starts, ends = [0] * len(shape), []
    for d, v in zip(dn.start_index_map, start.tolist()):
        starts[d] = v
    for d, (n, size) in enumerate(zip(shape, sizes)):
        if isinstance(size, (int, np.integer)) and isinstance(n, (int, np.integer)):
            if starts[d] < 0 or starts[d] + size > n:
                raise UnsupportedPrimitiveError("gather of a window out of range")
            ends.append(starts[d] + int(size))
        elif size == n and not starts[d]:
            ends.append(_END)
        else:
            raise UnsupportedPrimitiveError("gather of part of the symbolic dimension")
    return g.shape(_slice(g, x, starts, ends), eqn.outvars[0].aval.shape)


def _inner_jaxpr(eqn: Any) -> Any | None:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in eqn.params:
            return eqn.params[key]
    return None


def _evaluate(eqn: Any, args: list[np.ndarray]) -> list[np.ndarray]:
    """An equation whose inputs are all constants, run by JAX at export time."""
    out = eqn.primitive.bind(*args, **eqn.params)
    outs = out if eqn.primitive.multiple_results else [out]
    return [np.asarray(o) for o in outs]


def _translate(g: _Graph, jaxpr: Any, consts: Sequence[Any], args: Sequence[_Value]
               ) -> list[_Value]:
    env: dict[Any, _Value] = {}

    def read(atom: Any) -> _Value:
        if isinstance(atom, jax.extend.core.Literal):
            return np.asarray(atom.val, atom.aval.dtype)
        return env[atom]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = np.asarray(value)
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        inner = _inner_jaxpr(eqn)
        if inner is not None and eqn.primitive.name not in ("scan", "while", "cond"):
            closed = inner if hasattr(inner, "consts") else None
            body = closed.jaxpr if closed is not None else inner
            outs = _translate(g, body, closed.consts if closed is not None else (),
                              ins[len(ins) - len(body.invars):])
        elif all(not isinstance(v, str) for v in ins) and all(
                _static(v.aval.shape) for v in eqn.outvars):
            outs = _evaluate(eqn, ins)
        elif eqn.primitive.name in _RULES:
            outs = _RULES[eqn.primitive.name](g, eqn, ins)
        else:
            raise UnsupportedPrimitiveError(
                f"no ONNX translation for the primitive {eqn.primitive.name!r}")
        for var, value in zip(eqn.outvars, outs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def to_onnx(fn: Callable[[jax.Array], jax.Array], example: jax.ShapeDtypeStruct, *,
            input_name: str = "images", output_name: str = "logits",
            doc: str = "") -> Any:
    """The ``onnx.ModelProto`` (opset :data:`OPSET`) computing ``fn`` on one input of
    ``example``'s shape and dtype (closed-over arrays become initializers). At most one
    dimension of ``example`` may be symbolic (``jax.export.symbolic_shape``): it is named
    ``batch`` in the graph's input and output.

    Raises:
      UnsupportedPrimitiveError naming the first primitive without a translation.
      ValueError for more than one symbolic input dimension.
    """
    from onnx import checker, helper

    symbolic = [(axis, d) for axis, d in enumerate(example.shape)
                if not isinstance(d, (int, np.integer))]
    if len(symbolic) > 1:
        raise ValueError(f"example: at most one symbolic dimension; got {example.shape}")
    axis, symbol = symbolic[0] if symbolic else (0, None)
    closed = jax.make_jaxpr(fn)(example)
    g = _Graph(symbol, input_name, axis)
    (out,) = _translate(g, closed.jaxpr, closed.consts, [input_name])
    out_aval = closed.out_avals[0]
    g.nodes.append(helper.make_node("Identity", [g.tensor(out)], [output_name]))

    def dims(shape: Sequence[Any]) -> list[Any]:
        return [int(d) if isinstance(d, (int, np.integer)) else
                "batch" if d == symbol else str(d) for d in shape]

    graph = helper.make_graph(
        g.nodes, "attnzoo",
        [helper.make_tensor_value_info(input_name, _onnx_dtype(example.dtype),
                                       dims(example.shape))],
        [helper.make_tensor_value_info(output_name, _onnx_dtype(out_aval.dtype),
                                       dims(out_aval.shape))], initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="attnzoo", doc_string=doc)
    model.ir_version = 9  # what onnxruntime 1.20+ reads
    checker.check_model(model, full_check=False)
    return model


__all__ = ["OPSET", "UnsupportedPrimitiveError", "to_onnx"]
