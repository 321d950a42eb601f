"""The Redis key layout, derived from the feature view: one hash per (view, spec version, entity)."""

from __future__ import annotations

from iceberg_schemas.features import SPEC_VERSION

PREFIX = "liveml"
EVENT_TIME = "__event_time"
WRITE_TIME = "__write_time"
COMPUTED_AT = "__computed_at"  # with EVENT_TIME and SOURCE_ID: the tie rule's order key
SOURCE_ID = "__source_id"


def entity_key(view: str, entity: object, spec_version: int = SPEC_VERSION) -> str:
    """``liveml:{view}:v{spec_version}:{entity}``, e.g. ``liveml:pickup_area_1h:v2:8``."""
    return f"{PREFIX}:{view}:v{spec_version}:{entity}"
