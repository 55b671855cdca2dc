"""The ONNX graph of a topic model: feature rows and counts in, class probabilities out.

Inputs (from :mod:`.features`, each hashed feature looked up in the bundle's vocabulary, as a
tokeniser maps tokens to vocabulary ids):

* ``rows``   int64   ``[N, L]`` vocabulary row of each distinct feature of a text, in ``[0, V]``;
  0 for a feature unseen in training, and for padding;
* ``counts`` float32 ``[N, L]`` how often each occurred, padding 0.

Bundles of format ``civicsignals-topic-model/1`` took the hashed indices themselves (input
``ids`` in ``[0, 2**hash_bits)``) and did the lookup in the graph (``rows = remap[ids]``, an
``int32 [D]`` initialiser ``remap``); ``build_onnx_model(remap=...)`` still builds that form, and
serving still runs it. Measured on the same texts, onnxruntime's ``Gather`` of one int32 per
feature from that 1 MB table took about a quarter of the graph's time, numpy's lookup a small
fraction of it, so the lookup moved next to the hashing (same result, bit for bit).

Initialisers:

* ``table``   float32 ``[V + 1, C + 1]`` per compact row its logistic-regression weights (row 0, an
  unseen feature, all zeros) and, as the last column, its idf (row 0: the idf of an unseen
  feature). One table, so one ``Gather`` of whole rows brings both: gathering the idf alone,
  one float per feature, was measured slower than slicing it out of the gathered rows;
* ``bias``    float32 ``[C]``.

With a sentence encoder (:mod:`.encoder`), a third input and initialiser are added:

* ``embeddings``    float32 ``[N, E]`` the encoder's unit-length embedding of each text;
* ``dense_weights`` float32 ``[E, C]`` their weights (the embedding scale used in training folded in),

and ``logits`` gets ``+ embeddings @ dense_weights``. The encoder runs as its own onnxruntime
session (it is shared by every bundle, so it is not copied into each ``model.onnx``).

**Cascade** (``cascade_weights`` given; bundles of format ``civicsignals-topic-model/3``). The
encoder is most of the serving time, and most texts do not need it: a second logistic
regression on the n-gram features alone (the n-gram head) is as accurate as the full model on
the texts it is confident about. The ``table`` then holds the n-gram head's weights (and the
idf), which every text needs, and ``full_table`` ``[V + 1, C]`` the full model's n-gram weights,
gathered only for the texts that get embeddings (each text's normalised tf-idf is computed once):

* ``embeddings`` float32 ``[M, E]`` and ``encoded`` int64 ``[M]``: the embeddings of ``M`` of the
  ``N`` texts and which rows of the batch they belong to (``M`` may be 0);
* output ``probabilities`` ``[N, C]``: the full model's for the rows in ``encoded``, the n-gram
  head's for the others;
* output ``use_encoder`` bool ``[N]``: the n-gram head's top probability is below the cascade
  threshold (an initialiser, the card's ``cascade.threshold``), so the text needs the encoder.

Serving runs the graph once with ``M = 0``, embeds only the texts ``use_encoder`` names, and runs
those again with their embeddings. onnxruntime executes every node of a graph whatever outputs
are asked for (tried: a node of an output not asked for still ran), which is why the full model's
weights are gathered through ``encoded`` (nothing with ``M = 0``) rather than in the first
``Gather``: one table ``[V + 1, 2C + 1]`` with both heads' weights made the first run about twice
as slow as the plain graph (the ``Gather`` of whole rows is most of its time).

Computation (``D = 2**hash_bits``, ``V`` = features seen in training, ``C`` = classes)::

    rows   = remap[ids]          (format /1 only)        # [N, L]
    block  = table[rows]                                 # [N, L, C + 1]
    weights, idf = block[..., :C], block[..., C]
    tf     = log(1 + counts)   (or counts when sublinear_tf is off)
    w      = tf * idf                                    # [N, L]
    w      = w / max(sqrt(sum_L w^2), 1e-12)             # L2 per text; an empty text stays 0
    logits = sum_L w[n, l] * weights[n, l, :] + bias     # [N, C] (a batched MatMul)
    probabilities = softmax(logits)                      # [N, C]

Why the compact vocabulary: a dense ``[2**18, C]`` weight matrix would be 2**18 x 150 x 4 bytes
~ 150 MB, almost all rows zero (a weight of a feature that never occurred in training stays
exactly 0 under L2-regularised logistic regression). The vocabulary costs 4 bytes per seen
feature and the weights only ``V + 1`` rows.

Why unseen features still get an idf (row 0): a text's L2 norm then counts them, exactly as
scikit-learn's ``TfidfTransformer`` over all ``D`` hashed columns would (smooth idf of a column
with document frequency 0). A text full of words the model never saw thus gets a smaller
weighted vector, flatter probabilities and a lower confidence, which is the honest answer.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["IR_VERSION", "OPSET", "build_onnx_model"]

#: ONNX opset of the graph: 17 is supported by every onnxruntime since 1.13, and has all we need.
OPSET = 17
#: IR version matching opset 17 (newer IR versions are refused by older runtimes for no gain here).
IR_VERSION = 8

#: Below this L2 norm a text is treated as empty (avoids 0/0 = NaN, like sklearn's ``normalize``).
_NORM_FLOOR = 1e-12


def build_onnx_model(
    *,
    idf: npt.NDArray[np.floating],
    weights: npt.NDArray[np.floating],
    bias: npt.NDArray[np.floating],
    sublinear_tf: bool = True,
    dense_weights: npt.NDArray[np.floating] | None = None,
    metadata: Mapping[str, str] | None = None,
    name: str = "civicsignals-topic-model",
    remap: npt.NDArray[np.integer] | None = None,
    cascade_weights: npt.NDArray[np.floating] | None = None,
    cascade_bias: npt.NDArray[np.floating] | None = None,
    cascade_threshold: float | None = None,
) -> onnx.ModelProto:
    """Build and check the ONNX model; see the module docstring for shapes and maths.

    With ``remap`` the graph takes hashed ``ids`` and looks them up itself (the format /1 graph).
    With ``cascade_weights`` (``[V + 1, C]``, the n-gram head; needs ``dense_weights``,
    ``cascade_bias`` and ``cascade_threshold``) it is the cascade graph described above.

    ``metadata`` goes into the model's ``metadata_props`` (e.g. version and labels), so a lone
    ``model.onnx`` still says what it is.
    """
    idf = np.asarray(idf)
    weights = np.asarray(weights)
    bias = np.asarray(bias)
    if idf.ndim != 1 or weights.ndim != 2 or bias.ndim != 1:
        raise ValueError("idf and bias must be 1-D and weights 2-D")
    rows, n_classes = weights.shape
    if idf.shape[0] != rows or bias.shape[0] != n_classes:
        raise ValueError(f"shapes disagree: idf {idf.shape}, weights {weights.shape}, bias {bias.shape}")
    if remap is not None:
        remap = np.asarray(remap)
        if remap.ndim != 1 or (remap.size and (remap.min() < 0 or remap.max() >= rows)):
            raise ValueError("remap must be 1-D and point inside the weight rows")
    if np.any(weights[0] != 0):
        raise ValueError("row 0 of weights is for unseen features and must be zero")
    if dense_weights is not None:
        dense_weights = np.asarray(dense_weights)
        if dense_weights.ndim != 2 or dense_weights.shape[1] != n_classes:
            raise ValueError(f"dense_weights must be [E, {n_classes}], got {dense_weights.shape}")
    cascade = cascade_weights is not None
    if cascade:
        cascade_weights = np.asarray(cascade_weights)
        if cascade_weights.shape != weights.shape or np.any(cascade_weights[0] != 0):
            raise ValueError(f"cascade_weights must be {weights.shape} with row 0 zero")
        if dense_weights is None or remap is not None:
            raise ValueError("a cascade needs dense_weights (an encoder) and the rows input")
        if cascade_bias is None or np.asarray(cascade_bias).shape != (n_classes,):
            raise ValueError(f"cascade_bias must be [{n_classes}]")
        if cascade_threshold is None or not 0.0 <= cascade_threshold <= 1.0:
            raise ValueError(f"cascade_threshold must be in [0, 1], got {cascade_threshold}")

    # One table [V + 1, C + 1]: the weights of each row with its idf as the last column, so one
    # Gather of whole rows brings both (onnxruntime's Gather of single floats is slow).
    # With a cascade, this table holds the n-gram head's weights (every text needs them) and the
    # full model's n-gram weights are a table of their own, gathered only for the encoded texts.
    first = np.asarray(cascade_weights) if cascade else weights
    table = np.concatenate([first, idf[:, None]], axis=1).astype(np.float32)
    idf_at = n_classes
    initializers = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(bias.astype(np.float32), "bias"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "first_class"),
        numpy_helper.from_array(np.array([n_classes], dtype=np.int64), "class_end"),
        numpy_helper.from_array(np.array([idf_at], dtype=np.int64), "idf_column"),
        numpy_helper.from_array(np.array([idf_at + 1], dtype=np.int64), "idf_column_end"),
        numpy_helper.from_array(np.array(_NORM_FLOOR, dtype=np.float32), "norm_floor"),
    ]
    nodes = []
    if remap is not None:
        initializers.append(numpy_helper.from_array(remap.astype(np.int32), "remap"))
        nodes.append(helper.make_node("Gather", ["remap", "ids"], ["rows"], axis=0))
    nodes += [
        helper.make_node("Gather", ["table", "rows"], ["row_block"], axis=0),  # [N, L, C + 1]
        helper.make_node("Slice", ["row_block", "idf_column", "idf_column_end", "axis2"], ["idf_3d"]),
        helper.make_node("Squeeze", ["idf_3d", "axis2"], ["idf_rows"]),  # [N, L]
    ]
    if sublinear_tf:
        initializers.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"))
        nodes += [
            helper.make_node("Add", ["counts", "one"], ["counts_plus_one"]),
            helper.make_node("Log", ["counts_plus_one"], ["tf"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["counts"], ["tf"]))
    nodes += [
        helper.make_node("Mul", ["tf", "idf_rows"], ["w"]),
        helper.make_node("Mul", ["w", "w"], ["w_squared"]),
        helper.make_node("ReduceSum", ["w_squared", "axis1"], ["sum_squares"], keepdims=1),
        helper.make_node("Sqrt", ["sum_squares"], ["norm"]),
        helper.make_node("Max", ["norm", "norm_floor"], ["safe_norm"]),
        helper.make_node("Div", ["w", "safe_norm"], ["w_normalised"]),
        # [N, L] -> [N, 1, L] @ [N, L, C + 1] -> [N, 1, C + 1] -> [N, C + 1] -> [N, C]
        # (the idf column's product is computed too, and dropped: cheaper than copying the block)
        helper.make_node("Unsqueeze", ["w_normalised", "axis1"], ["w_row"]),
        helper.make_node("MatMul", ["w_row", "row_block"], ["logits_3d"]),
        helper.make_node("Squeeze", ["logits_3d", "axis1"], ["logits_and_idf"]),
        helper.make_node("Slice", ["logits_and_idf", "first_class", "class_end", "axis1"], ["sparse_logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info("ids" if remap is not None else "rows", TensorProto.INT64, ["N", "L"]),
        helper.make_tensor_value_info("counts", TensorProto.FLOAT, ["N", "L"]),
    ]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])]
    if cascade:
        assert dense_weights is not None and cascade_bias is not None and cascade_threshold is not None
        initializers += [
            numpy_helper.from_array(dense_weights.astype(np.float32), "dense_weights"),
            numpy_helper.from_array(np.asarray(cascade_bias).astype(np.float32), "cascade_bias"),
            numpy_helper.from_array(np.array(cascade_threshold, dtype=np.float32), "cascade_threshold"),
            numpy_helper.from_array(weights.astype(np.float32), "full_table"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        ]
        inputs += [
            helper.make_tensor_value_info(
                "embeddings", TensorProto.FLOAT, ["M", int(dense_weights.shape[0])]
            ),
            helper.make_tensor_value_info("encoded", TensorProto.INT64, ["M"]),
        ]
        nodes += [
            # The n-gram head, for every text: its probabilities and whether it is sure enough.
            helper.make_node("Add", ["sparse_logits", "cascade_bias"], ["cascade_logits"]),
            helper.make_node("Softmax", ["cascade_logits"], ["cascade_probabilities"], axis=-1),
            helper.make_node(
                "ReduceMax", ["cascade_probabilities"], ["cascade_confidence"], axes=[1], keepdims=0
            ),
            helper.make_node("Less", ["cascade_confidence", "cascade_threshold"], ["use_encoder"]),
            # The full model, for the M texts whose embeddings were given: their normalised tf-idf
            # (same features, same idf) times the full model's n-gram weights, plus the embedding's.
            helper.make_node("Gather", ["rows", "encoded"], ["encoded_rows"], axis=0),  # [M, L]
            helper.make_node("Gather", ["w_row", "encoded"], ["encoded_w_row"], axis=0),  # [M, 1, L]
            helper.make_node("Gather", ["full_table", "encoded_rows"], ["full_block"], axis=0),  # [M, L, C]
            helper.make_node("MatMul", ["encoded_w_row", "full_block"], ["encoded_sparse_3d"]),
            helper.make_node("Squeeze", ["encoded_sparse_3d", "axis1"], ["encoded_sparse_logits"]),
            helper.make_node("MatMul", ["embeddings", "dense_weights"], ["dense_logits"]),
            helper.make_node("Add", ["encoded_sparse_logits", "dense_logits"], ["full_logits_no_bias"]),
            helper.make_node("Add", ["full_logits_no_bias", "bias"], ["full_logits"]),
            helper.make_node("Softmax", ["full_logits"], ["full_probabilities"], axis=-1),
            helper.make_node("Unsqueeze", ["encoded", "last_axis"], ["encoded_index"]),
            helper.make_node(
                "ScatterND",
                ["cascade_probabilities", "encoded_index", "full_probabilities"],
                ["probabilities"],
            ),
        ]
        outputs.append(helper.make_tensor_value_info("use_encoder", TensorProto.BOOL, ["N"]))
    elif dense_weights is None:
        nodes.append(helper.make_node("Identity", ["sparse_logits"], ["logits_no_bias"]))
    else:
        initializers.append(numpy_helper.from_array(dense_weights.astype(np.float32), "dense_weights"))
        inputs.append(
            helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", int(dense_weights.shape[0])])
        )
        nodes += [
            helper.make_node("MatMul", ["embeddings", "dense_weights"], ["dense_logits"]),
            helper.make_node("Add", ["sparse_logits", "dense_logits"], ["logits_no_bias"]),
        ]
    if not cascade:
        nodes += [
            helper.make_node("Add", ["logits_no_bias", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ]
    graph = helper.make_graph(nodes, name, inputs=inputs, outputs=outputs, initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="civicsignals-classifier",
        doc_string="Feature rows and counts -> tf-idf -> multinomial logistic regression -> probabilities.",
    )
    model.ir_version = IR_VERSION
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model
