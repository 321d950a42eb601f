"""The model's inputs, derived from :data:`iceberg_schemas.training.TIPS`: the one place model code learns them.

Feature names, the label and their types come from the training set's Iceberg schema
(``TIPS.table_spec().schema``); this module only adds *how* each is treated (the preprocessing choices):

- string fields -> a vocabulary (top ``VOCAB_SIZE`` + ``OOV_BUCKETS`` out-of-vocabulary buckets);
- integer identifiers (``ID_FEATURES``: community areas) -> a vocabulary of their values as well;
- every other number -> z-score, with a missing-value indicator (features are NULL when a view's TTL expired);
  the ``BUCKET_FEATURES`` are also cut into ``BUCKETS`` quantile buckets for the wide part.

Raw types, as ``tf.Example`` carries them: Iceberg ``string`` -> bytes, ``int``/``long`` -> int64,
``double`` -> float32, the boolean label -> int64 0/1.
"""

from __future__ import annotations

from pyiceberg.types import BooleanType, DoubleType, FloatType, IntegerType, LongType, StringType

from iceberg_schemas.training import TIPS

SPEC = TIPS
LABEL_KEY: str = TIPS.label
DECISION_TIME: str = TIPS.decision_time
TRAINING_TABLE: str = TIPS.table
FEATURE_KEYS: list[str] = TIPS.feature_columns()

_SCHEMA = TIPS.table_spec().schema


def _type_of(name: str):
    return _SCHEMA.find_field(name).field_type


def _kind(name: str) -> str:
    t = _type_of(name)
    if isinstance(t, StringType):
        return "string"
    if isinstance(t, (IntegerType, LongType, BooleanType)):
        return "int"
    if isinstance(t, (DoubleType, FloatType)):
        return "float"
    raise TypeError(f"{name}: no tf.Example type for Iceberg type {t}")


RAW_KIND: dict[str, str] = {name: _kind(name) for name in FEATURE_KEYS}  # "string" | "int" | "float"
STRING_FEATURES: list[str] = [n for n in FEATURE_KEYS if RAW_KIND[n] == "string"]
# integer codes, not quantities: a vocabulary each (the preprocessing choice; each must be an int feature)
ID_FEATURES: list[str] = [n for n in FEATURE_KEYS if n.endswith("_community_area")]
CATEGORICAL_FEATURES: list[str] = STRING_FEATURES + ID_FEATURES
NUMERIC_FEATURES: list[str] = [n for n in FEATURE_KEYS if n not in CATEGORICAL_FEATURES]
BUCKET_FEATURES: list[str] = [n for n in ("fare", "trip_miles", "trip_seconds") if n in NUMERIC_FEATURES]

VOCAB_SIZE = 100
OOV_BUCKETS = 5
BUCKETS = 10

assert _kind(LABEL_KEY) == "int", f"the label {LABEL_KEY} must be boolean/integer"
assert all(RAW_KIND[n] == "int" for n in ID_FEATURES), ID_FEATURES
assert sorted(CATEGORICAL_FEATURES + NUMERIC_FEATURES) == sorted(FEATURE_KEYS)


def transformed_name(key: str) -> str:
    return f"{key}_xf"


def missing_name(key: str) -> str:
    return f"{key}_missing_xf"


def bucket_name(key: str) -> str:
    return f"{key}_bucket_xf"


def vocab_filename(key: str) -> str:
    return f"vocab_{key}"


def categorical_cardinality(key: str) -> int:
    """An upper bound on the ids a vocabulary feature takes: ``VOCAB_SIZE`` + ``OOV_BUCKETS`` (+1 spare).
    A missing value is the ``__missing__`` token, an ordinary vocabulary entry (preprocessing.py)."""
    return VOCAB_SIZE + OOV_BUCKETS + 1


def missing_serving_value(key: str):
    """What ``serving_default`` reads as 'missing' for a raw feature: NaN, '' or a negative integer
    (every integer feature of TIPS is a count, a duration or an area code, none negative)."""
    return {"float": float("nan"), "string": "", "int": -1}[RAW_KIND[key]]
