"""Which model serves which municipality, loaded in memory and swapped without a restart.

Files::

    <models_dir>/_coldstart/default/         the cold-start model of the default taxonomy
    <models_dir>/_coldstart/<fingerprint>/   the cold-start model of a tenant's own taxonomy.yaml
    <models_dir>/<tenant>/<version>/         the tenant's trained versions (``model.onnx``, ...)

(``_`` cannot start a tenant code, so the two never collide.) The version in force per tenant
is in the database (:class:`~.models.ModelActivation`); a tenant without one is served by the
cold-start model of its taxonomy. Every replica reads the database every ``refresh_s`` seconds
and loads a newly activated version in a thread before it swaps it in, so activation and rollback
need no restart; the replica that handled the API call swaps at once.

A cold-start bundle is built on first need (92 s measured on a slow 2-core machine, 2026-12-07:
a logistic regression over 3,546 examples and 148 subtopics) and reused by every later start.

A tenant with a ``taxonomy.yaml`` of its own is never served the default taxonomy's model: its
signals would get topics its routing rules do not know. When its taxonomy cannot be used (a change
the tenant registry should have refused already, since the schema accepts what the classifier
accepts), the last good taxonomy of that tenant stays in force; when there never was a good one,
the tenant is not served at all (:class:`TaxonomyRefused`: its signals wait, ``/v1/classify``
answers 503) until the file is fixed. Other tenants are not affected.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
from pathlib import Path

from civicsignals.classifier.model.inference import BundleError, TopicModel
from civicsignals.classifier.service import version_dir
from civicsignals.classifier.taxonomy import Taxonomy, TaxonomyError, load_taxonomy, taxonomy_from_data

log = logging.getLogger(__name__)

COLDSTART_DIR = "_coldstart"
DEFAULT_COLDSTART = "default"


class ModelNotReady(RuntimeError):
    """The tenant's model is still being loaded or built; try again shortly."""


class TaxonomyRefused(ModelNotReady):
    """The tenant has a taxonomy of its own, but none that can be used yet: it is not served (rather
    than served the default taxonomy) until its ``taxonomy.yaml`` is fixed."""


class ModelRegistry:
    """Loaded models: one per cold-start taxonomy, one per tenant with an active version."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._coldstart: dict[str, TopicModel] = {}
        self._tenant_models: dict[str, TopicModel] = {}
        #: What the database says is in force, as last read (None: the cold start).
        self._wanted: dict[str, str | None] = {}
        #: The cold-start key of each tenant's own (last good) taxonomy; absent: the default one.
        self._tenant_taxonomy: dict[str, str] = {}
        #: Tenants with a taxonomy of their own and no good one yet: why they are not served.
        self.refused: dict[str, str] = {}
        self._building: dict[str, asyncio.Task[TopicModel]] = {}
        self._lock = asyncio.Lock()
        #: Counts every :meth:`apply`; per tenant, the count at its last one. A refresh that read
        #: the database before a tenant's last apply must not undo it with what it read.
        self.applied = 0
        self._applied_at: dict[str, int] = {}

    @property
    def loaded(self) -> bool:
        """The default cold-start model is there: the service can classify."""
        return DEFAULT_COLDSTART in self._coldstart

    # ------------------------------------------------------------------ cold start

    def coldstart_dir(self, key: str = DEFAULT_COLDSTART) -> Path:
        return self.models_dir / COLDSTART_DIR / key

    def _build_coldstart(self, key: str, taxonomy: Taxonomy | None) -> TopicModel:
        """The cold-start model of ``taxonomy`` (None: the default one), built unless on disk.

        A bundle on disk that was built from another taxonomy is built again: after an upgrade
        that changed the default taxonomy (its examples, a new subtopic), ``_coldstart/default``
        still holds the old one, which would go on serving the old labels and words."""
        from civicsignals.classifier.model.coldstart import build_default_bundle

        target = self.coldstart_dir(key)
        taxonomy = taxonomy or load_taxonomy()
        built_from = _taxonomy_fingerprint(target)
        if built_from != taxonomy.fingerprint():
            if built_from is None:
                log.info("building the cold-start model %s from its taxonomy", key)
            else:
                log.info("the taxonomy of cold-start model %s changed; building it again", key)
            staging = target.with_name(f".{key}.building-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            build_default_bundle(staging, taxonomy)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        return TopicModel(target)

    async def _coldstart_model(self, key: str, taxonomy: Taxonomy | None) -> TopicModel:
        if key in self._coldstart:
            return self._coldstart[key]
        task = self._building.get(key)
        if task is None:
            task = asyncio.create_task(asyncio.to_thread(self._build_coldstart, key, taxonomy))
            self._building[key] = task
        try:
            model = await task
        finally:
            self._building.pop(key, None)
        self._coldstart[key] = model
        return model

    async def load(self) -> TopicModel:
        """Load (or build) the default cold-start model; the service is ready after this."""
        return await self._coldstart_model(DEFAULT_COLDSTART, None)

    def set_tenant_taxonomy(
        self, tenant: str, taxonomy: dict[str, object] | None, *, source: str = "taxonomy.yaml"
    ) -> str | None:
        """Tell the registry the taxonomy of a tenant (from its folder); returns its cold-start key.

        ``None`` (or an empty file): the tenant has none and gets the default taxonomy. A taxonomy
        that cannot be used is refused: the tenant keeps its last good one, or, without one, is not
        served (:meth:`refuse_taxonomy`); then the key in force (or None) is returned.
        """
        if not taxonomy:
            self._tenant_taxonomy.pop(tenant, None)
            self.refused.pop(tenant, None)
            return DEFAULT_COLDSTART
        try:
            parsed = taxonomy_from_data(taxonomy, source=source)
        except TaxonomyError as exc:
            self.refuse_taxonomy(tenant, str(exc))
            return self._tenant_taxonomy.get(tenant)
        key = parsed.fingerprint()[:16]
        self._tenant_taxonomy[tenant] = key
        self.refused.pop(tenant, None)
        if key not in self._coldstart and key not in self._building:
            task = asyncio.create_task(asyncio.to_thread(self._build_coldstart, key, parsed))
            self._building[key] = task
            task.add_done_callback(functools.partial(self._built, key))
        return key

    def refuse_taxonomy(self, tenant: str, reason: str) -> None:
        """The tenant has a taxonomy of its own that cannot be used: keep its last good one, and
        without one, serve the tenant nothing (never the default taxonomy) until it is fixed."""
        if tenant in self._tenant_taxonomy:
            log.error(
                "tenant %s: taxonomy refused, keeping its last good taxonomy (%s): %s",
                tenant,
                self._tenant_taxonomy[tenant],
                reason,
            )
            return
        self.refused[tenant] = reason
        log.error(
            "tenant %s: taxonomy refused and no good one loaded before; its signals are not classified "
            "until it is fixed: %s",
            tenant,
            reason,
        )

    def _built(self, key: str, task: asyncio.Task[TopicModel]) -> None:
        self._building.pop(key, None)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("cold-start model %s could not be built: %s", key, task.exception())
            return
        self._coldstart[key] = task.result()

    # ------------------------------------------------------------------ tenants

    def model_for(self, tenant: str) -> TopicModel:
        """The model serving ``tenant`` now; :class:`ModelNotReady` while it loads."""
        wanted = self._wanted.get(tenant)
        if wanted is not None:
            model = self._tenant_models.get(tenant)
            if model is None or model.version != wanted:
                raise ModelNotReady(f"model {wanted} of tenant {tenant} is loading")
            return model
        if tenant in self.refused:
            raise TaxonomyRefused(f"tenant {tenant}: {self.refused[tenant]}")
        key = self._tenant_taxonomy.get(tenant, DEFAULT_COLDSTART)
        model = self._coldstart.get(key)
        if model is None:
            raise ModelNotReady(f"the cold-start model of tenant {tenant} is being built")
        return model

    def serving_version(self, tenant: str) -> str | None:
        try:
            return self.model_for(tenant).version
        except ModelNotReady:
            return None

    def load_version(self, tenant: str, version: str) -> TopicModel:
        """Load a tenant's bundle from disk (blocking; call it in a thread)."""
        path = version_dir(self.models_dir, tenant, version)
        if not (path / "card.json").exists():
            raise BundleError(f"model bundle {path} is missing")
        model = TopicModel(path)
        if model.version != version:
            raise BundleError(f"model bundle {path} says it is version {model.version}, not {version}")
        return model

    async def apply(self, tenant: str, version: str | None, model: TopicModel | None = None) -> None:
        """Serve ``version`` (None: the cold start) for ``tenant`` from now on; loads it if needed."""
        async with self._lock:
            self.applied += 1
            self._applied_at[tenant] = self.applied
            if version is None:
                self._wanted[tenant] = None
                self._tenant_models.pop(tenant, None)
                return
            current = self._tenant_models.get(tenant)
            if current is None or current.version != version:
                if model is None or model.version != version:
                    model = await asyncio.to_thread(self.load_version, tenant, version)
                self._tenant_models[tenant] = model
            self._wanted[tenant] = version

    async def sync(self, wanted: dict[str, str | None], *, read_after: int | None = None) -> None:
        """Bring every tenant to the version the database says (called by the refresh loop).

        ``read_after`` is :attr:`applied` from before ``wanted`` was read: a tenant applied since
        (an activation or rollback through this replica's API) is left alone, as what was read
        may predate it; the next refresh reads it again."""
        for tenant, version in wanted.items():
            if read_after is not None and self._applied_at.get(tenant, 0) > read_after:
                continue
            if self._wanted.get(tenant, None) == version and (
                version is None or tenant in self._tenant_models
            ):
                continue
            try:
                await self.apply(tenant, version)
                log.info("tenant %s: now serving model %s", tenant, version or "cold start")
            except (BundleError, OSError) as exc:
                log.error(
                    "tenant %s: cannot load model %s, keeping the one in force: %s", tenant, version, exc
                )


def _taxonomy_fingerprint(bundle: Path) -> str | None:
    """The fingerprint of the taxonomy a cold-start bundle was built from; None if there is none
    (not built, or its card cannot be read: then it is built again)."""
    try:
        card = json.loads((bundle / "card.json").read_text(encoding="utf-8"))
        fingerprint = card["taxonomy"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return fingerprint if isinstance(fingerprint, str) else None
