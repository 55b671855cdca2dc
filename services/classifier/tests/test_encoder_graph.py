"""The encoder's graph rewrites on small graphs spelled as TensorFlow exported them, run in
onnxruntime before and after: the same outputs, fewer nodes, and no rewrite where it would be
wrong."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from civicsignals.classifier.model.encoder_graph import (
    fuse_layer_norms,
    fuse_selects,
    optimise_encoder_graph,
    remove_unused,
)

FEATURES = 8
RNG = np.random.default_rng(7)


def tf_layer_norm(x: str, out: str, prefix: str, axis: int = 1) -> list[NodeProto]:
    """TensorFlow's layer normalisation, node for node as the encoder has it."""
    p = prefix
    return [
        helper.make_node("ReduceMean", [x], [f"{p}mean"], axes=[axis], keepdims=1),
        helper.make_node("Sub", [x, f"{p}mean"], [f"{p}diff"]),
        helper.make_node("Mul", [f"{p}diff", f"{p}diff"], [f"{p}square"]),
        helper.make_node("ReduceMean", [f"{p}square"], [f"{p}variance"], axes=[axis], keepdims=1),
        helper.make_node("Add", [f"{p}variance", "epsilon"], [f"{p}add"]),
        helper.make_node("Sqrt", [f"{p}add"], [f"{p}rsqrt"]),
        helper.make_node("Reciprocal", [f"{p}rsqrt"], [f"{p}inverse"]),
        helper.make_node("Mul", [f"{p}inverse", f"{p}gamma"], [f"{p}scale"]),
        helper.make_node("Mul", [f"{p}mean", f"{p}scale"], [f"{p}mul_2"]),
        helper.make_node("Mul", [x, f"{p}scale"], [f"{p}mul_1"]),
        helper.make_node("Sub", [f"{p}beta", f"{p}mul_2"], [f"{p}sub"]),
        helper.make_node("Add", [f"{p}mul_1", f"{p}sub"], [out]),
    ]


def tf_select(condition: str, chosen: str, otherwise: str, out: str, prefix: str) -> list[NodeProto]:
    """TensorFlow's ``Select`` as arithmetic: ``float(c) * a + b * float(not c)``."""
    p = prefix
    return [
        helper.make_node("Cast", [condition], [f"{p}yes"], to=TensorProto.FLOAT),
        helper.make_node("Not", [condition], [f"{p}not"]),
        helper.make_node("Cast", [f"{p}not"], [f"{p}no"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{p}yes", chosen], [f"{p}picked"]),
        helper.make_node("Mul", [otherwise, f"{p}no"], [f"{p}dropped"]),
        helper.make_node("Add", [f"{p}picked", f"{p}dropped"], [out]),
    ]


def parameters(prefix: str) -> list[TensorProto]:
    return [
        numpy_helper.from_array(RNG.normal(1, 0.2, FEATURES).astype(np.float32), f"{prefix}gamma"),
        numpy_helper.from_array(RNG.normal(0, 0.2, FEATURES).astype(np.float32), f"{prefix}beta"),
    ]


def model(
    nodes: list[NodeProto], inputs: list[tuple[str, int, list[object]]], outputs: list[str]
) -> ModelProto:
    graph = helper.make_graph(
        nodes,
        "tf-style",
        [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=[
            numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "epsilon"),
            numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array([3, FEATURES], dtype=np.int64), "shape"),
            *parameters("a/"),
            *parameters("b/"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


def run(built: ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(built.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(value) for value in session.run(None, feeds)]


def ops(built: ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in built.graph.node)


def encoder_like() -> ModelProto:
    """Two normalisations in a row, then a select against zeros (as each convolution window
    masks its padding) and a select between two tensors."""
    nodes = [
        *tf_layer_norm("x", "normed", "a/"),
        *tf_layer_norm("normed", "twice", "b/"),
        helper.make_node("Expand", ["zero", "shape"], ["zeros"]),
        *tf_select("keep", "twice", "zeros", "masked", "s/"),
        *tf_select("keep", "masked", "x", "mixed", "t/"),
    ]
    return model(
        nodes, [("x", TensorProto.FLOAT, [3, FEATURES]), ("keep", TensorProto.BOOL, [3, 1])], ["mixed"]
    )


def test_the_rewrites_compute_what_the_tensorflow_spelling_computed() -> None:
    feeds = {
        "x": RNG.normal(2, 3, (3, FEATURES)).astype(np.float32),
        "keep": np.array([[True], [False], [True]]),
    }
    built = encoder_like()
    (before,) = run(built, feeds)
    assert optimise_encoder_graph(built) == {"layer_norms": 2, "selects": 2, "unused": 1}
    (after,) = run(built, feeds)

    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # The row the mask drops is the input itself, exactly: a select picks, it does not compute.
    np.testing.assert_array_equal(after[1], feeds["x"][1])
    # 2 x 12 normalisation nodes, 2 x 6 select nodes and the zeros: one node each and a cast.
    assert ops(built) == Counter({"LayerNormalization": 2, "Cast": 1, "Mul": 1, "Where": 1})
    # epsilon is now an attribute, and nothing reads the zeros: only the parameters are left.
    assert {init.name for init in built.graph.initializer} == {"a/gamma", "a/beta", "b/gamma", "b/beta"}


def test_a_normalisation_over_another_axis_than_the_last_stays() -> None:
    """``LayerNormalization`` from an axis normalises every axis after it too; TensorFlow's spelling
    only the one it names. Over axis 1 of a 3-D tensor they differ, so nothing is fused."""
    built = model(
        tf_layer_norm("x", "normed", "a/"), [("x", TensorProto.FLOAT, [3, 1, FEATURES])], ["normed"]
    )
    assert fuse_layer_norms(built, rank=3) == 0
    assert len(built.graph.node) == 12


def test_a_normalisation_whose_mean_is_read_elsewhere_stays() -> None:
    built = model(
        tf_layer_norm("x", "normed", "a/"), [("x", TensorProto.FLOAT, [3, FEATURES])], ["normed", "a/mean"]
    )
    assert fuse_layer_norms(built, rank=2) == 0
    assert ops(built)["ReduceMean"] == 2


def test_a_select_of_two_different_conditions_stays() -> None:
    """``float(c) * a + b * float(not d)`` is no select when ``c`` and ``d`` differ."""
    nodes = tf_select("keep", "x", "x", "mixed", "s/")
    nodes[1] = helper.make_node("Not", ["other"], ["s/not"])
    built = model(
        nodes,
        [
            ("x", TensorProto.FLOAT, [3, FEATURES]),
            ("keep", TensorProto.BOOL, [3, 1]),
            ("other", TensorProto.BOOL, [3, 1]),
        ],
        ["mixed"],
    )
    assert fuse_selects(built) == 0
    assert remove_unused(built) == 0
    assert len(built.graph.node) == 6
