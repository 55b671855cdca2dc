"""What intake reads from a tenant's folder: bounding box, areas, CORS origins, retention, and how
long a resident may reopen their case.

``tenant.yaml`` keys used here (all optional):

```yaml
bounding_box: {min_lat: 51.95, min_lon: 4.60, max_lat: 52.08, max_lon: 4.80}
cors_origins: ["https://meldingen.gouda.nl"]
retention:
  contact_days_after_close: 90   # after the case reached resolved, closed, rejected, duplicate or cancelled
residents:
  reopen_within_days: 30         # how long after the case ended its reporter may reopen it; null: always
```

(``residents`` is read by ``civicsignals.common.wording.reopen_within_days``: notifier's resolution
mail states the same window.)

and ``areas.geojson``: a FeatureCollection of (Multi)Polygons in WGS84 whose properties carry
``code`` (the area) and ``district``. A point gets the first area that covers it (a point on a
shared border belongs to the first in the file). A file that fails to load is refused with a
message naming it, and the last good version stays in force.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from civicsignals.common.tenants import Tenant

log = logging.getLogger(__name__)

DEFAULT_CLOSED_STATUSES = frozenset({"resolved", "closed", "rejected", "duplicate", "cancelled"})


@dataclass(frozen=True)
class BoundingBox:
    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float

    def contains(self, lat: float, lon: float) -> bool:
        return self.min_lat <= lat <= self.max_lat and self.min_lon <= lon <= self.max_lon


def bounding_box(tenant: Tenant) -> BoundingBox | None:
    raw = tenant.settings.get("bounding_box")
    if not isinstance(raw, dict):
        return None
    try:
        return BoundingBox(
            float(raw["min_lat"]), float(raw["min_lon"]), float(raw["max_lat"]), float(raw["max_lon"])
        )
    except (KeyError, TypeError, ValueError):
        log.error("tenant %s: bounding_box in tenant.yaml is incomplete; not checking locations", tenant.code)
        return None


def cors_origins(tenant: Tenant) -> frozenset[str]:
    raw = tenant.settings.get("cors_origins") or []
    return frozenset(str(origin).rstrip("/") for origin in raw) if isinstance(raw, list) else frozenset()


def open311_public_descriptions(tenant: Tenant) -> bool:
    """Whether Open311's public request lists show the redacted description of a request an Open311
    client posted (``open311.public_descriptions``, default true, as GeoReport clients expect).
    A municipality that does not want even redacted words of residents public sets it false; the
    text still reaches the departments."""
    raw = tenant.settings.get("open311") or {}
    return not (isinstance(raw, dict) and raw.get("public_descriptions") is False)


def retention_days(tenant: Tenant) -> int | None:
    raw = tenant.settings.get("retention") or {}
    days = raw.get("contact_days_after_close") if isinstance(raw, dict) else None
    return int(days) if isinstance(days, int | float) and days >= 0 else None


def closed_statuses(_tenant: Tenant) -> frozenset[str]:
    """The case statuses after which a request counts as closed (Open311) and retention starts.

    The same for every tenant for now; a tenant key for it needs room in tenant.schema.json.
    """
    return DEFAULT_CLOSED_STATUSES


class AreaConfigError(ValueError):
    """``areas.geojson`` is unusable; the message names the file and the feature."""


@dataclass(frozen=True)
class Area:
    code: str
    district: str | None
    name: str | None
    geometry: BaseGeometry


class AreaIndex:
    """The areas of one tenant, for point-in-polygon lookups (prepared geometries, so each lookup
    is a few microseconds for a municipality's few dozen areas)."""

    def __init__(self, areas: list[Area]) -> None:
        self.areas = areas
        # Each area's bounding box (min lon, min lat, max lon, max lat): comparing four floats
        # rules most areas out for less than one call into shapely costs.
        self._boxes = [(area, area.geometry.bounds) for area in areas]
        for area in areas:
            shapely.prepare(area.geometry)

    def locate(self, lat: float, lon: float) -> Area | None:
        for area, (min_lon, min_lat, max_lon, max_lat) in self._boxes:
            if (
                min_lon <= lon <= max_lon
                and min_lat <= lat <= max_lat
                and shapely.intersects_xy(area.geometry, lon, lat)
            ):
                return area
        return None

    @classmethod
    def from_geojson(cls, document: Any, path: Path) -> AreaIndex:
        if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
            raise AreaConfigError(f"{path}: must be a GeoJSON FeatureCollection")
        areas: list[Area] = []
        for number, feature in enumerate(document.get("features") or [], start=1):
            properties = (feature or {}).get("properties") or {}
            code = properties.get("code")
            if not isinstance(code, str) or not code:
                raise AreaConfigError(f"{path}: feature {number} has no properties.code")
            try:
                geometry = shape(feature["geometry"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise AreaConfigError(
                    f"{path}: feature {number} ({code}) has no valid geometry: {exc}"
                ) from exc
            if geometry.geom_type not in ("Polygon", "MultiPolygon") or not geometry.is_valid:
                raise AreaConfigError(f"{path}: feature {number} ({code}) must be a valid (Multi)Polygon")
            district = properties.get("district")
            name = properties.get("name")
            areas.append(
                Area(
                    code=code,
                    district=str(district) if district else None,
                    name=str(name) if name else None,
                    geometry=geometry,
                )
            )
        return cls(areas)


class AreaCache:
    """Each tenant's ``areas.geojson``, reloaded when its modification time changes."""

    def __init__(self, check_interval_s: float = 2.0) -> None:
        self._loaded: dict[str, tuple[float, AreaIndex]] = {}
        self._checked: dict[str, tuple[float, AreaIndex | None]] = {}
        self.check_interval_s = check_interval_s

    def get(self, tenant: Tenant) -> AreaIndex | None:
        """The tenant's areas; the file's time is looked at most every ``check_interval_s``."""
        now = time.monotonic()
        recent = self._checked.get(tenant.code)
        if recent is not None and now - recent[0] < self.check_interval_s:
            return recent[1]
        index = self._load(tenant)
        self._checked[tenant.code] = (now, index)
        return index

    def _load(self, tenant: Tenant) -> AreaIndex | None:
        path = tenant.folder / "areas.geojson"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            self._loaded.pop(tenant.code, None)
            return None
        cached = self._loaded.get(tenant.code)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            index = AreaIndex.from_geojson(json.loads(path.read_text(encoding="utf-8")), path)
        except (OSError, ValueError) as exc:
            log.error("tenant %s: areas refused, keeping the last good ones: %s", tenant.code, exc)
            if cached is not None:
                # Remember the broken stamp so the error is logged once, not on every request.
                self._loaded[tenant.code] = (mtime, cached[1])
                return cached[1]
            return None
        self._loaded[tenant.code] = (mtime, index)
        return index
