"""Which model bundle serves: the embedded default is the cold-start model built from the taxonomy.

Bundles live under ``<models_dir>/<name>/``. When no bundle exists yet, the cold-start bundle is
built from the default taxonomy (a few seconds), so the service classifies from its first minute.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from civicsignals.classifier.model.inference import TopicModel

log = logging.getLogger(__name__)

DEFAULT_BUNDLE = "default"


class ModelRegistry:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.active: TopicModel | None = None

    @property
    def loaded(self) -> bool:
        return self.active is not None

    def bundle_dir(self, name: str = DEFAULT_BUNDLE) -> Path:
        return self.models_dir / name

    def _ensure_default(self) -> Path:
        target = self.bundle_dir(DEFAULT_BUNDLE)
        if (target / "model.onnx").exists():
            return target
        from civicsignals.classifier.model.coldstart import build_default_bundle

        log.info("no model bundle yet: building the cold-start model from the default taxonomy")
        staging = target.with_name(target.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        build_default_bundle(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    async def load(self) -> TopicModel:
        model = await asyncio.to_thread(lambda: TopicModel(self._ensure_default()))
        self.active = model
        return model

    def model(self) -> TopicModel:
        if self.active is None:
            raise RuntimeError("no model is loaded yet")
        return self.active
