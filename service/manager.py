"""`ModelManager`: which versions of which models are loaded, and zero-downtime changes to that.

`load(name)` reads the repository, loads and warms every wanted version that is not loaded yet in a
worker thread while the current versions keep serving, then swaps the model's version table in one
assignment on the event loop. Replaced versions are retired: no new request gets them, the ones
in flight finish, then their sessions are released. If any wanted version fails to load, nothing
is retired (the serving versions stay) and `ModelLoadError` says why. `get(name, version)` is the
request path: two dict lookups.

Optional polling (`poll_forever`) reloads models whose stable version set changed on disk.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field

from protos import model_config_pb2 as mc
from service.domain import ModelIndexEntry
from service.errors import (
    ConfigError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ServingError,
)
from service.metrics import ServiceMetrics
from service.model import ModelVersion, load_version
from service.repository import DEFAULT_MODEL_FILENAME, ModelRepository, select_versions
from service.settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass
class _Model:
    """A model's serving state; `versions` is replaced, never mutated, on a swap."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    latest: ModelVersion | None = None
    state: str = "UNAVAILABLE"
    reason: str = ""
    failed: dict[int, str] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_attempt: tuple | None = None


class ModelManager:
    """Loads, swaps, retires and hands out model versions."""

    def __init__(self, repository: ModelRepository, settings: ServerSettings, metrics: ServiceMetrics,
                 executor: Executor) -> None:
        self.repository = repository
        self._settings = settings
        self._metrics = metrics
        self._executor = executor
        self._models: dict[str, _Model] = {}
        self._retiring: set[asyncio.Task] = set()

    # --- request path -------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: `version` "" = the highest ready one."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}")
        if not version:
            chosen = model.latest
            if chosen is None:
                raise ModelNotReady(f"model {name!r} is not ready" + (f": {model.reason}" if model.reason else ""))
            return chosen
        try:
            number = int(version)
        except ValueError:
            raise ModelNotFound(f"model {name!r} has no version {version!r} (versions are integers)") from None
        chosen = model.versions.get(number)
        if chosen is None:
            ready = ", ".join(map(str, sorted(model.versions))) or "none"
            raise ModelNotFound(f"model {name!r} version {number} is not loaded (ready versions: {ready})")
        return chosen

    def ready_versions(self, name: str) -> list[ModelVersion]:
        """Loaded versions of a model, ascending (NOT_FOUND for an unknown model)."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}")
        return [model.versions[v] for v in sorted(model.versions)]

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ServingError:
            return False
        return True

    # --- control path -------------------------------------------------------------------------
    async def load_all(self) -> None:
        """Load every model in the repository; failures are logged and left UNAVAILABLE."""
        for name in self.repository.model_names():
            try:
                await self.load(name)
            except ServingError as exc:
                log.error("%s", exc.message)

    async def load(self, name: str, *, available: list[int] | None = None) -> None:
        """(Re)load a model's wanted versions with zero downtime; ModelLoadError says why not.
        `available` overrides the complete versions found on disk (the poller passes stable ones)."""
        if not self.repository.has_model(name):
            raise ModelNotFound(f"model {name!r} is not in the repository {self.repository.root}")
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = _Model(name)
        async with model.lock:
            await self._load_locked(model, available)

    async def _load_locked(self, model: _Model, available: list[int] | None) -> None:
        name = model.name
        try:
            config = await asyncio.to_thread(self.repository.read_config, name)
        except ConfigError as exc:
            return self._fail(model, exc.message)
        filename = (config.default_model_filename if config else "") or DEFAULT_MODEL_FILENAME
        if available is None:
            available = await asyncio.to_thread(self.repository.versions, name, filename)
        policy = config.version_policy if config is not None and config.HasField("version_policy") \
            else mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1))
        wanted = select_versions(available, policy)
        if not wanted:
            return self._fail(model, f"model {name!r} has no complete version folder with {filename} "
                                     f"in {self.repository.root / name}")
        signature = config.SerializeToString(deterministic=True) if config is not None else b""
        keep = {v: mv for v, mv in model.versions.items() if v in wanted and mv.signature == signature}
        new: dict[int, ModelVersion] = {}
        errors: dict[int, str] = {}
        for version in wanted:
            if version in keep:
                continue
            try:
                new[version] = await asyncio.wait_for(asyncio.to_thread(
                    load_version, name=name, version=version, path=self.repository.version_path(name, version, filename),
                    config=config, signature=signature, settings=self._settings, metrics=self._metrics,
                    executor=self._executor), self._settings.load_timeout_seconds)
            except ServingError as exc:
                errors[version] = exc.message
            except TimeoutError:
                errors[version] = f"model {name!r} version {version}: loading took longer than {self._settings.load_timeout_seconds} s"
            except Exception as exc:
                log.exception("model %r version %d: unexpected load failure", name, version)
                errors[version] = f"model {name!r} version {version}: {type(exc).__name__}: {exc}"
        model.failed = errors
        if errors:
            table = {**model.versions, **new}  # keep everything that serves; add what did load
        else:
            table = {**keep, **new}
        retired = [mv for v, mv in model.versions.items() if table.get(v) is not mv]
        self._swap(model, table)
        for mv in retired:
            self._retire(mv)
        if errors:
            reason = "; ".join(errors[v] for v in sorted(errors))
            model.reason = reason
            raise ModelLoadError(reason + (f" (still serving version(s) {', '.join(map(str, sorted(table)))})"
                                           if table else ""))
        model.reason = ""

    def _fail(self, model: _Model, reason: str) -> None:
        model.reason = reason
        if not model.versions:
            model.state = "UNAVAILABLE"
        raise ModelLoadError(reason + (f" (still serving version(s) {', '.join(map(str, sorted(model.versions)))})"
                                       if model.versions else ""))

    def _swap(self, model: _Model, table: dict[int, ModelVersion]) -> None:
        model.versions = table
        model.latest = table[max(table)] if table else None
        model.state = "READY" if table else "UNAVAILABLE"
        self._metrics.set_loaded(model.name, len(table))
        for mv in table.values():
            self._metrics.version_loaded(mv.metrics)
        if table:
            log.info("model %r now serves version(s) %s", model.name, ", ".join(map(str, sorted(table))))

    def _retire(self, mv: ModelVersion) -> None:
        mv.retired = True

        async def release() -> None:
            await mv.drained()
            mv.close()
            log.info("model %r version %d released", mv.name, mv.version)

        task = asyncio.get_running_loop().create_task(release())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model; in-flight requests finish first."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}")
        async with model.lock:
            retired = list(model.versions.values())
            self._swap(model, {})
            model.reason = "unloaded"
            for mv in retired:
                self._retire(mv)
        await self.wait_retired()

    async def wait_retired(self) -> None:
        """Wait until every retired version has been released."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        """RepositoryIndex rows: every model in the repository or loaded, with version states."""
        rows = []
        for name in sorted(set(self.repository.model_names()) | set(self._models)):
            model = self._models.get(name)
            if model is None:
                if not ready_only:
                    rows.append(ModelIndexEntry(name, "", "UNAVAILABLE", "not loaded"))
                continue
            for version in sorted(model.versions):
                rows.append(ModelIndexEntry(name, str(version), "READY"))
            if not ready_only:
                for version, reason in sorted(model.failed.items()):
                    if version not in model.versions:
                        rows.append(ModelIndexEntry(name, str(version), "UNAVAILABLE", reason))
                if not model.versions and not model.failed:
                    rows.append(ModelIndexEntry(name, "", model.state, model.reason))
        return rows

    async def poll_forever(self, interval_s: float) -> None:
        """Reload models whose stable version set changed; unload models removed from disk."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """One polling pass (see `poll_forever`)."""
        on_disk = set(await asyncio.to_thread(self.repository.model_names))
        for name in sorted(on_disk):
            model = self._models.get(name)
            try:
                config = await asyncio.to_thread(self.repository.read_config, name)
                filename = (config.default_model_filename if config else "") or DEFAULT_MODEL_FILENAME
                versions = await asyncio.to_thread(self.repository.versions, name, filename, stable=True)
                signature = config.SerializeToString(deterministic=True) if config is not None else b""
            except ConfigError as exc:
                versions, signature = [], exc.message
            attempt = (tuple(versions), signature)
            if model is not None and model.last_attempt == attempt:
                continue
            if not versions:
                continue  # nothing complete yet: wait for the next poll
            if model is None:
                model = self._models[name] = _Model(name)
            model.last_attempt = attempt
            try:
                await self.load(name, available=versions)
            except ServingError as exc:
                log.warning("poll: %s", exc.message)
        for name in sorted(set(self._models) - on_disk):
            if self._models[name].versions:
                log.info("poll: model %r removed from the repository; unloading", name)
                await self.unload(name)

    async def close(self) -> None:
        """Retire every version and wait for them to drain."""
        for model in self._models.values():
            retired = list(model.versions.values())
            self._swap(model, {})
            for mv in retired:
                self._retire(mv)
        await self.wait_retired()
