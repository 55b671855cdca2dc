"""Topic taxonomies: the default one shipped with the classifier and a validating loader.

See ``default.yaml`` for the format and ``NOTICE`` for the origin of its public-space part.
"""

from civicsignals.classifier.taxonomy.loader import (
    CODE_PATTERN,
    DEFAULT_TAXONOMY_PATH,
    DEFAULT_VERSION,
    LABEL_SEPARATOR,
    Subtopic,
    Taxonomy,
    TaxonomyError,
    Topic,
    label_key,
    load_taxonomy,
    parse_taxonomy,
    split_label,
    taxonomy_from_data,
)

__all__ = [
    "CODE_PATTERN",
    "DEFAULT_TAXONOMY_PATH",
    "DEFAULT_VERSION",
    "LABEL_SEPARATOR",
    "Subtopic",
    "Taxonomy",
    "TaxonomyError",
    "Topic",
    "label_key",
    "load_taxonomy",
    "parse_taxonomy",
    "split_label",
    "taxonomy_from_data",
]
