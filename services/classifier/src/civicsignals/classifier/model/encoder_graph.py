"""Rewrites of the sentence encoder's ONNX graph, made in memory when the encoder is loaded.

The encoder came from TensorFlow, and its layer normalisations are still TensorFlow's arithmetic
spelled out in twelve operators each (``moments`` and ``batchnorm``: two means, a
squared difference, a reciprocal square root, and ``x * scale + (beta - mean * scale)``).
onnxruntime's own layer-norm fusion did not fuse this spelling (its profile showed every one of
the operators), so each normalisation ran as twelve passes over its tensor. The largest, over the 1,280 features
of the concatenated n-gram layers, took about a sixth of the encoder's time (onnxruntime profile,
``docs/classifier.md``, "Speed"). :func:`fuse_layer_norms` replaces each with one
``LayerNormalization`` node, which computes the same function in one pass.

Its ``Select`` (TensorFlow's element-wise choice, which masks the padding of each convolution
window) is spelled as arithmetic too, ``float(c) * a + float(not c) * b``: two casts, a ``Not``,
two multiplications and an addition over the whole window, 14 times, together another sixth of the
encoder's time. :func:`fuse_selects` makes each one ``Where(c, a, b)``, which picks the same
values exactly (``a * 1 + b * 0`` is ``a``) in one pass, or, where ``b`` is zeros as in every
window of the encoder, ``float(c) * a``: onnxruntime's ``Where`` broadcasts the per-row condition
slowly (as slow as the arithmetic it replaced), its ``Mul`` does not. What this saved, measured
in ``bench/classifier/throughput.py``, is in ``docs/classifier.md``, "Speed".

The file on disk is not changed: a bundle still pins the encoder by the file's SHA-256, and the
rewrite is the same function of the same weights. Framework-free (``onnx`` only), so it is tested
on small graphs without onnxruntime's custom ops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

__all__ = ["fuse_layer_norms", "fuse_selects", "optimise_encoder_graph", "remove_unused"]


@dataclass(frozen=True)
class _LayerNorm:
    """One matched normalisation: its input, parameters, output and the nodes it replaces."""

    x: str
    gamma: str
    beta: str
    epsilon: float
    axis: int
    output: str
    nodes: tuple[NodeProto, ...]


class _Graph:
    """Who produces and who consumes each tensor of a graph, for pattern matching."""

    def __init__(self, graph: GraphProto) -> None:
        self.producer = {name: node for node in graph.node for name in node.output}
        self.uses = Counter(_reads(graph))
        self.uses.update(output.name for output in graph.output)
        self.initializers = {init.name: init for init in graph.initializer}

    def made_by(self, name: str, op_type: str) -> NodeProto | None:
        node = self.producer.get(name)
        return (
            node if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx") else None
        )

    def constant(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        return None if init is None else numpy_helper.to_array(init)


def _reads(graph: GraphProto) -> Iterator[str]:
    """Every tensor name the graph's nodes read, those read inside subgraphs (``If``, ``Loop``) too."""
    for node in graph.node:
        yield from node.input
        for attribute in node.attribute:
            for subgraph in (attribute.g, *attribute.graphs) if attribute.HasField("g") else attribute.graphs:
                yield from _reads(subgraph)


def _reduce_axes(node: NodeProto) -> list[int] | None:
    """A ``ReduceMean``'s axes, when it keeps its dimensions (opset < 18 spells them as an attribute)."""
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    if attributes.get("keepdims", 1) != 1 or "axes" not in attributes or len(node.input) != 1:
        return None
    return list(attributes["axes"])


def _one_of(graph: _Graph, inputs: list[str], op_type: str) -> tuple[NodeProto, str] | None:
    """For a binary node's two inputs: the one made by ``op_type`` and the other input's name."""
    for mine, other in ((0, 1), (1, 0)):
        node = graph.made_by(inputs[mine], op_type)
        if node is not None:
            return node, inputs[other]
    return None


def _match(graph: _Graph, add_1: NodeProto) -> _LayerNorm | None:
    """Match TensorFlow's layer normalisation ending in ``add_1``::

    mean = ReduceMean(x); d = x - mean; variance = ReduceMean(d * d)
    scale = gamma / sqrt(variance + epsilon)       # Reciprocal(Sqrt(Add)) * gamma
    add_1 = x * scale + (beta - mean * scale)
    """
    # add_1 = mul_1 + sub, where sub = beta - mul_2
    found = _one_of(graph, list(add_1.input), "Sub")
    if found is None:
        return None
    sub, mul_1_name = found
    mul_1 = graph.made_by(mul_1_name, "Mul")
    mul_2 = graph.made_by(sub.input[1], "Mul")
    beta = sub.input[0]
    if mul_1 is None or mul_2 is None or graph.constant(beta) is None:
        return None
    # mul_1 = x * scale and mul_2 = mean * scale, the same scale
    scale_name = next((name for name in mul_1.input if name in mul_2.input), None)
    if scale_name is None:
        return None
    x = mul_1.input[1] if mul_1.input[0] == scale_name else mul_1.input[0]
    mean_name = mul_2.input[1] if mul_2.input[0] == scale_name else mul_2.input[0]
    mean = graph.made_by(mean_name, "ReduceMean")
    scale = graph.made_by(scale_name, "Mul")
    if mean is None or scale is None or mean.input[0] != x:
        return None
    found = _one_of(graph, list(scale.input), "Reciprocal")
    if found is None or graph.constant(found[1]) is None:
        return None
    reciprocal, gamma = found
    sqrt = graph.made_by(reciprocal.input[0], "Sqrt")
    if sqrt is None:
        return None
    add_epsilon = graph.made_by(sqrt.input[0], "Add")
    if add_epsilon is None:
        return None
    found = _one_of(graph, list(add_epsilon.input), "ReduceMean")
    epsilon = graph.constant(found[1]) if found is not None else None
    if found is None or epsilon is None or epsilon.size != 1:
        return None
    variance = found[0]
    square = graph.made_by(variance.input[0], "Mul")
    difference = graph.made_by(square.input[0], "Sub") if square is not None else None
    if square is None or difference is None or square.input[0] != square.input[1]:
        return None
    if list(difference.input) != [x, mean_name]:
        return None
    axes = _reduce_axes(mean)
    if axes is None or len(axes) != 1 or axes != _reduce_axes(variance):
        return None
    gamma_value, beta_value = graph.constant(gamma), graph.constant(beta)
    if (
        gamma_value is None
        or beta_value is None
        or gamma_value.ndim != 1
        or beta_value.shape != gamma_value.shape
    ):
        return None
    nodes = (
        mean,
        difference,
        square,
        variance,
        add_epsilon,
        sqrt,
        reciprocal,
        scale,
        mul_2,
        mul_1,
        sub,
        add_1,
    )
    if not _used_only_inside(graph, nodes):
        return None
    return _LayerNorm(
        x=x,
        gamma=gamma,
        beta=beta,
        epsilon=float(epsilon.reshape(())),
        axis=axes[0],
        output=add_1.output[0],
        nodes=nodes,
    )


def _replace(model: ModelProto, replacements: list[tuple[tuple[NodeProto, ...], NodeProto]]) -> int:
    """Remove each pattern's nodes and put its one new node where the pattern's last node was
    (where all the new node's inputs exist, so the graph stays in topological order)."""
    removed = {id(node) for nodes, _ in replacements for node in nodes}
    new_node = {id(nodes[-1]): node for nodes, node in replacements}
    kept = [
        new_node.get(id(node), node)
        for node in model.graph.node
        if id(node) not in removed or id(node) in new_node
    ]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(replacements)


def _used_only_inside(graph: _Graph, nodes: tuple[NodeProto, ...]) -> bool:
    """Whether every result but the last node's is read only by the pattern's own nodes, so that
    removing them breaks no other reader."""
    inside = Counter(name for node in nodes for name in node.input)
    return all(graph.uses[node.output[0]] == inside[node.output[0]] for node in nodes[:-1])


def fuse_layer_norms(model: ModelProto, *, rank: int) -> int:
    """Replace every TensorFlow-style layer normalisation over the last axis of a ``rank``-D
    tensor in ``model`` with one ``LayerNormalization`` node; returns how many were replaced.

    ``rank`` is the rank of the normalised tensors, which the graph does not declare: a
    ``LayerNormalization`` over ``axis`` normalises every axis from there on, the TensorFlow
    spelling only the one it names, so a match counts only where that axis is the last
    (``rank - 1`` or ``-1``). onnxruntime defines ``LayerNormalization`` in the default domain
    for every opset, so the model's opset stays as it is.
    """
    graph = _Graph(model.graph)
    matches = [
        found
        for node in model.graph.node
        if node.op_type == "Add"
        and (found := _match(graph, node)) is not None
        and found.axis in (rank - 1, -1)
    ]
    return _replace(
        model,
        [
            (
                match.nodes,
                helper.make_node(
                    "LayerNormalization",
                    [match.x, match.gamma, match.beta],
                    [match.output],
                    name=f"{match.output.rsplit(':', 1)[0]}/fused",
                    axis=-1,
                    epsilon=match.epsilon,
                ),
            )
            for match in matches
        ],
    )


def _float_of(graph: _Graph, name: str) -> tuple[NodeProto, str] | None:
    """``name`` as ``Cast(c, to=float)``: the cast and ``c``."""
    cast = graph.made_by(name, "Cast")
    if cast is None:
        return None
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in cast.attribute}
    return (cast, cast.input[0]) if attributes.get("to") == TensorProto.FLOAT else None


def _masked(graph: _Graph, name: str) -> tuple[tuple[NodeProto, ...], str, str] | None:
    """``name`` as ``Mul(Cast(c), value)`` in either order: the nodes, ``c`` and ``value``."""
    mul = graph.made_by(name, "Mul")
    if mul is None:
        return None
    for mine, other in ((0, 1), (1, 0)):
        found = _float_of(graph, mul.input[mine])
        if found is not None:
            return (found[0], mul), found[1], mul.input[other]
    return None


def _match_select(graph: _Graph, add: NodeProto) -> tuple[tuple[NodeProto, ...], NodeProto] | None:
    """Match ``Add(Mul(Cast(c), a), Mul(Cast(Not(c)), b))`` (operands in any order) and make
    ``Where(c, a, b)``, or ``Mul(Cast(c), a)`` when ``b`` is zeros."""
    if len(add.input) != 2:
        return None
    for first, second in ((0, 1), (1, 0)):
        chosen, otherwise = _masked(graph, add.input[first]), _masked(graph, add.input[second])
        if chosen is None or otherwise is None:
            continue
        negation = graph.made_by(otherwise[1], "Not")
        if negation is None or negation.input[0] != chosen[1]:
            continue
        if _is_zeros(graph, otherwise[2]):
            # Select(c, a, 0) is a * float(c): one multiplication, and the cast stays.
            nodes = (chosen[0][1], negation, *otherwise[0], add)
            if not _used_only_inside(graph, nodes):
                return None
            made = helper.make_node(
                "Mul", [chosen[0][0].output[0], chosen[2]], [add.output[0]], name=f"{add.name}/masked"
            )
            return nodes, made
        nodes = (*chosen[0], negation, *otherwise[0], add)
        if not _used_only_inside(graph, nodes):
            return None
        made = helper.make_node(
            "Where", [chosen[1], chosen[2], otherwise[2]], [add.output[0]], name=f"{add.name}/where"
        )
        return nodes, made
    return None


def _is_zeros(graph: _Graph, name: str) -> bool:
    """Whether ``name`` is all zeros: a zero constant, or one expanded to a shape."""
    expand = graph.made_by(name, "Expand")
    value = graph.constant(expand.input[0] if expand is not None else name)
    return value is not None and value.size > 0 and not value.any()


def fuse_selects(model: ModelProto) -> int:
    """Replace every select spelled as arithmetic in ``model`` with one node; returns how many."""
    graph = _Graph(model.graph)
    matches = [
        found for node in model.graph.node if node.op_type == "Add" and (found := _match_select(graph, node))
    ]
    return _replace(model, matches)


def remove_unused(model: ModelProto) -> int:
    """Remove nodes whose results nothing reads any more (the zeros the selects no longer add);
    returns how many."""
    removed = 0
    while True:
        graph = _Graph(model.graph)
        unused = [node for node in model.graph.node if not any(graph.uses[name] for name in node.output)]
        if not unused:
            read = set(graph.uses)
            kept_initializers = [init for init in model.graph.initializer if init.name in read]
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept_initializers)
            return removed
        gone = {id(node) for node in unused}
        kept = [node for node in model.graph.node if id(node) not in gone]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        removed += len(unused)


def optimise_encoder_graph(model: ModelProto) -> dict[str, int]:
    """Every rewrite the encoder gets, in place; how many of each were made. Its layer
    normalisations are over the last axis of 2-D tensors (texts, features)."""
    return {
        "layer_norms": fuse_layer_norms(model, rank=2),
        "selects": fuse_selects(model),
        "unused": remove_unused(model),
    }
