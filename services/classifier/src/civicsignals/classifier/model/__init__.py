"""Topic models: hashed features in Python, everything numeric in an ONNX graph.

* :mod:`.features` — text -> hashed feature ids and counts (looked up in the bundle's vocabulary,
  the graph's inputs);
* :mod:`.onnx_graph` — the graph: tf-idf, L2 norm, linear layer, softmax;
* :mod:`.training` — fit with scikit-learn, export a bundle (``model.onnx``, ``vocabulary.npy``,
  ``labels.json``, ``card.json``);
* :mod:`.inference` — :class:`TopicModel` serves a bundle with onnxruntime;
* :mod:`.coldstart` — a first model from the taxonomy alone.
"""

from civicsignals.classifier.model.coldstart import (
    COLDSTART_THRESHOLD,
    build_default_bundle,
    coldstart_examples,
)
from civicsignals.classifier.model.features import (
    DEFAULT_FEATURE_CONFIG,
    TRAINED_FEATURE_CONFIG,
    FeatureBatch,
    FeatureConfig,
    FeatureExtractor,
    encode_batch,
)
from civicsignals.classifier.model.inference import (
    Alternative,
    BundleError,
    Prediction,
    TopicModel,
    read_card,
)
from civicsignals.classifier.model.training import TrainedModel, export_bundle, train

__all__ = [
    "COLDSTART_THRESHOLD",
    "DEFAULT_FEATURE_CONFIG",
    "TRAINED_FEATURE_CONFIG",
    "Alternative",
    "BundleError",
    "FeatureBatch",
    "FeatureConfig",
    "FeatureExtractor",
    "Prediction",
    "TopicModel",
    "TrainedModel",
    "build_default_bundle",
    "coldstart_examples",
    "encode_batch",
    "export_bundle",
    "read_card",
    "train",
]
