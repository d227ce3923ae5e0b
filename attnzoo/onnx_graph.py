"""Translate an inference jaxpr into an ONNX model (opset 18), one ``lax`` primitive at a time.

``jax2tf`` now serialises only StableHLO (an ``XlaCallModule`` that ``tf2onnx`` cannot read),
and ``jax2onnx`` pins an orbax older than attnzoo's, so the ONNX export walks the jaxpr
itself: every equation of the traced program (nested ``jit`` / ``custom_jvp`` / ``custom_vjp``
calls inlined) becomes the ONNX nodes that compute the same values. Equations whose inputs
are all constants (the weights, ``iota``, the resize matrices) are evaluated at export time
and stored as initializers, so the graph holds only what depends on the image. Shapes are
static: the batch is the one traced.

What it translates is what attnzoo's inference graphs use (checked on every registered
family by ``tests/test_export.py``); anything else raises :class:`UnsupportedPrimitiveError`
naming the primitive, e.g. a ``scan`` of the memory-bounded attention or sliding windows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

OPSET = 18
_Value = Any  # a numpy array (a constant known at export time) or a str (an ONNX tensor name)


class UnsupportedPrimitiveError(NotImplementedError):
    """The traced program uses a primitive (or a form of one) the translator has no rule for."""


def _onnx_dtype(dtype: Any) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Graph:
    """The nodes and initializers of the ONNX graph being built."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = itertools.count()

    def fresh(self, hint: str) -> str:
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

    def shape(self, x: _Value, shape: Sequence[int]) -> _Value:
        return np.reshape(x, shape) if not isinstance(x, str) else \
            self.op("Reshape", [x, np.asarray(shape, np.int64)])

    def transpose(self, x: _Value, perm: Sequence[int]) -> _Value:
        if list(perm) == sorted(perm):
            return x
        return np.transpose(x, perm) if not isinstance(x, str) else \
            self.op("Transpose", [x], perm=list(perm))


def _aval(var: Any) -> Any:
    return var.aval


_Rule = Callable[[_Graph, Any, list[_Value]], list[_Value]]
_RULES: dict[str, _Rule] = {}


def _rule(*names: str) -> Callable[[_Rule], _Rule]:
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
        op = _BITWISE[name][_aval(eqn.outvars[0]).dtype != np.bool_]
    else:
        op = _ELEMENTWISE[name]
    if name == "div" and np.issubdtype(_aval(eqn.outvars[0]).dtype, np.integer):
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
    one = np.ones((), _aval(eqn.outvars[0]).dtype)
    return [g.op("Sub", [one, g.op("Erf", ins)])]


@_rule("square")
def _square(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.op("Mul", [ins[0], ins[0]])]


@_rule("integer_pow")
def _integer_pow(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    y = eqn.params["y"]
    if y == 0:
        return [np.ones(_aval(eqn.outvars[0]).shape, _aval(eqn.outvars[0]).dtype)]
    out = ins[0]
    for _ in range(abs(y) - 1):  # products as XLA's expansion of small powers
        out = g.op("Mul", [out, ins[0]])
    return [g.op("Reciprocal", [out]) if y < 0 else out]


@_rule("convert_element_type")
def _convert(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.op("Cast", ins, to=_onnx_dtype(eqn.params["new_dtype"]))]


@_rule("reshape", "squeeze", "expand_dims")
def _reshape(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    return [g.shape(ins[0], _aval(eqn.outvars[0]).shape)]


@_rule("broadcast_in_dim")
def _broadcast(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    shape = eqn.params["shape"]
    kept = [1] * len(shape)
    for src, dst in enumerate(eqn.params["broadcast_dimensions"]):
        kept[dst] = _aval(eqn.invars[0]).shape[src]
    x = g.shape(ins[0], kept)
    return [x if tuple(kept) == tuple(shape) else
            g.op("Expand", [x, np.asarray(shape, np.int64)])]


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
    return [_slice(g, ins[0], eqn.params["start_indices"], eqn.params["limit_indices"],
                   eqn.params["strides"])]


@_rule("pad")
def _pad(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    config = [tuple(int(v) for v in c) for c in eqn.params["padding_config"]]
    if any(interior for _, _, interior in config):
        raise UnsupportedPrimitiveError("pad with interior padding")
    x, value = ins
    grow = [max(lo, 0) for lo, _, _ in config] + [max(hi, 0) for _, hi, _ in config]
    if any(grow):
        x = g.op("Pad", [x, np.asarray(grow, np.int64), g.shape(value, ())], mode="constant")
    if any(lo < 0 or hi < 0 for lo, hi, _ in config):  # negative padding crops
        shape = _aval(eqn.invars[0]).shape
        x = _slice(g, x, [max(-lo, 0) for lo, _, _ in config],
                   [n + max(lo, 0) + hi for n, (lo, hi, _) in zip(shape, config)])
    return [x]


@_rule("select_n")
def _select_n(g: _Graph, eqn: Any, ins: list[_Value]) -> list[_Value]:
    which, *cases = ins
    if len(cases) == 1:
        return [cases[0]]
    if _aval(eqn.invars[0]).dtype == np.bool_:
        return [g.op("Where", [which, cases[1], cases[0]])]
    out = cases[0]
    for k, case in enumerate(cases[1:], 1):
        index = np.asarray(k, _aval(eqn.invars[0]).dtype)
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
    ls, rs = (_aval(v).shape for v in eqn.invars)
    lf = [d for d in range(len(ls)) if d not in (*lc, *lb)]
    rf = [d for d in range(len(rs)) if d not in (*rc, *rb)]
    batch = [ls[d] for d in lb]
    size = lambda dims, shape: int(np.prod([shape[d] for d in dims], dtype=np.int64))  # noqa: E731
    lhs = g.shape(g.transpose(ins[0], [*lb, *lf, *lc]), [*batch, size(lf, ls), size(lc, ls)])
    rhs = g.shape(g.transpose(ins[1], [*rb, *rc, *rf]), [*batch, size(rc, rs), size(rf, rs)])
    out = g.op("MatMul", [lhs, rhs])
    return [g.shape(out, _aval(eqn.outvars[0]).shape)]


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
    shape, ishape = _aval(eqn.invars[0]).shape, _aval(eqn.invars[1]).shape
    axis = dn.start_index_map[0]
    offset = [d for d in range(len(shape)) if d != axis and d not in dn.operand_batching_dims]
    if len(dn.start_index_map) != 1 or tuple(dn.collapsed_slice_dims) != (axis,) or \
            ishape[-1] != 1 or any(sizes[d] != shape[d] for d in offset):
        raise UnsupportedPrimitiveError(f"gather of this form ({dn})")
    if isinstance(indices, str):
        raise UnsupportedPrimitiveError("gather at indices computed from the image")
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
        index = g.op("Expand", [index, np.asarray(full, np.int64)])
        onnx_order = [("i", source[d]) if d in source else ("o", d) for d in range(len(shape))]
    else:
        raise UnsupportedPrimitiveError(f"gather of this form ({dn})")
    out = g.op(op, [x, index], **attrs)
    rest_o, rest_i = iter(offset), iter(range(indices.ndim))
    lax_order = [("o", next(rest_o)) if pos in dn.offset_dims else ("i", next(rest_i))
                 for pos in range(len(onnx_order))]
    return [g.transpose(out, [onnx_order.index(k) for k in lax_order])]


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
        elif all(not isinstance(v, str) for v in ins):
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
    ``example``'s shape and dtype (closed-over arrays become initializers).

    Raises:
      UnsupportedPrimitiveError naming the first primitive without a translation.
    """
    from onnx import checker, helper

    closed = jax.make_jaxpr(fn)(example)
    g = _Graph()
    (out,) = _translate(g, closed.jaxpr, closed.consts, [input_name])
    out_aval = closed.out_avals[0]
    g.nodes.append(helper.make_node("Identity", [g.tensor(out)], [output_name]))
    graph = helper.make_graph(
        g.nodes, "attnzoo", [helper.make_tensor_value_info(
            input_name, _onnx_dtype(example.dtype), list(example.shape))],
        [helper.make_tensor_value_info(output_name, _onnx_dtype(out_aval.dtype),
                                       list(out_aval.shape))], initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="attnzoo", doc_string=doc)
    model.ir_version = 9  # what onnxruntime 1.20+ reads
    checker.check_model(model, full_check=False)
    return model


__all__ = ["OPSET", "UnsupportedPrimitiveError", "to_onnx"]
