"""The online self-training loop inside `pseudoserve trainer`: when to run a round, and what a
round does with the sample store, the engine, the model repository and the running service.

`OnlineTrainer` is the `RoundRunner` the control API (`trainer.control`) and the trainer process
(`trainer.server`) drive. Rounds run one at a time. A round is triggered by `TriggerRound`, every
`round_interval_seconds`, after `round_min_new_samples` new captured samples, or when the served
confidence distribution drifts (two-sample Kolmogorov–Smirnov test between the confidences served
right after the last round and the newest ones, `drift_threshold` > 0).

One round (`trainer.rounds.compute_round` does the CPU part off the event loop):
1. teacher = the version the service serves now (RepositoryIndex), loaded from the repository
   (`model.onnx` for fresh predictions of the pool, `model.pt` for preprocessing and weights);
2. the engine's `run_round`: pseudo-labels, OOD filter, generators, student, holdout evaluation,
   gate;
3. promoted students are exported to ONNX (parity-checked), published atomically as the next
   version, loaded into the service with RepositoryModelLoad, and confirmed: a request without a
   version must be answered by the new version with the exported model's output;
4. the round's summary, pseudo-labels and report are stored; metrics are updated.
Anything that fails is recorded as a `failed` round with its reason; the served model is never
touched unless the student passed the gate and its export passed the parity check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry

from protos import trainer_pb2
from trainer.control import ACTIVE_VERSION_KEY
from trainer.engine.settings import EngineSettings
from trainer.metrics import TrainerMetrics, trainer_metrics
from trainer.rounds import RoundInputs, RoundOutput, compute_round, seed_labels
from trainer.service_client import ServiceClient, ServiceError
from trainer.settings import TrainerSettings
from trainer.store import SampleStore

log = logging.getLogger(__name__)

T = TypeVar("T")
StoreCall = Callable[[Callable[[], T]], Awaitable[T]]
CHECK_SECONDS = 1.0
REFRESH_TICKS = 5  # ask the service for its served version every 5 checks
REFRESH_TIMEOUT = 2.0


def build_round_runner(settings: TrainerSettings, store: SampleStore, registry: CollectorRegistry,
                       store_executor: Executor | None = None) -> OnlineTrainer:
    """Called by trainer.server when self-training is enabled."""
    engine = (EngineSettings.from_yaml(settings.engine_config_file) if settings.engine_config_file
              else EngineSettings())
    service = ServiceClient(settings.service_address,
                            token=settings.service_token.get_secret_value() if settings.service_token else None,
                            ca_file=settings.service_tls_ca_file)

    async def store_call(fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(store_executor, fn)

    return OnlineTrainer(settings, engine, store, trainer_metrics(registry), service, store_call)


class OnlineTrainer:
    """Schedules and runs self-training rounds; one at a time, never blocking the event loop."""

    def __init__(self, settings: TrainerSettings, engine: EngineSettings, store: SampleStore,
                 metrics: TrainerMetrics, service: ServiceClient, store_call: StoreCall) -> None:
        self._settings = settings
        self._engine = engine
        self._store = store
        self._metrics = metrics
        self._service = service
        self._store_call = store_call
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task | None = None
        self._running: asyncio.Task | None = None
        self._triggered: set[asyncio.Task] = set()  # TriggerRound rounds (held: the loop keeps weak refs)
        self._active = ""
        self._last_round_at = time.monotonic()
        self._unlabeled_at_last_round = 0
        self._reference_confidences: np.ndarray | None = None

    # --- RoundRunner ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        s = self._settings
        if s.labeled_file is not None or s.holdout_file is not None:
            added = await self._store_call(lambda: seed_labels(self._store, s.labeled_file, s.holdout_file,
                                                               s.label_column, self._engine,
                                                               repo=s.model_repository, model=s.model_name))
            if added:
                log.info("seeded the store with labeled data: %s", added)
        self._active = await self._store_call(lambda: self._store.get_state(ACTIVE_VERSION_KEY)) or ""
        if not await self._refresh_active():
            # the service may start after us: until it answers, the newest published version
            from trainer.publish import version_numbers

            versions = version_numbers(s.model_repository / s.model_name)
            if not self._active and versions:
                self._active = str(versions[-1])
        counts = await self._store_call(self._store.counts)
        self._unlabeled_at_last_round = counts["unlabeled"]
        self._task = asyncio.create_task(self._schedule(), name="round-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in self._triggered:  # rounds still waiting for their turn never start
            if task is not self._running:
                task.cancel()
        if self._running is not None:  # let a round in progress finish: it may be mid-publish
            await asyncio.gather(self._running, return_exceptions=True)
        await asyncio.gather(*self._triggered, return_exceptions=True)
        await self._service.close()

    def in_progress(self) -> bool:
        return self._lock is not None and self._lock.locked()

    def active_version(self) -> str:
        return self._active

    async def trigger(self, wait: bool) -> trainer_pb2.TriggerRoundResponse:
        round_index = len(await self._store_call(self._store.rounds)) + 1 + int(self.in_progress())
        task = asyncio.ensure_future(self._round("TriggerRound"))
        self._triggered.add(task)
        task.add_done_callback(self._triggered.discard)
        if not wait:
            return trainer_pb2.TriggerRoundResponse(round=round_index)
        summary = await asyncio.shield(task)
        return trainer_pb2.TriggerRoundResponse(round=summary.round, summary=summary)

    # --- scheduling -----------------------------------------------------------------------------

    async def _refresh_active(self) -> bool:
        """Ask the service which version it serves (it may have been rolled back or restarted)."""
        try:
            served = await self._service.served_version(self._settings.model_name, timeout=REFRESH_TIMEOUT)
        except ServiceError as exc:
            log.debug("service not reachable: %s", exc)
            return False
        if served and served != self._active:
            await self._set_active(served)
        return bool(served)

    async def _schedule(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            if self.in_progress():
                continue
            ticks += 1
            if ticks % REFRESH_TICKS == 1:
                await self._refresh_active()
            try:
                reason = await self._due()
            except Exception:
                log.exception("round trigger check failed")
                continue
            if reason:
                log.info("starting a round: %s", reason)
                await self._round(reason)

    async def _due(self) -> str | None:
        s = self._settings
        if s.round_interval_seconds > 0 and time.monotonic() - self._last_round_at >= s.round_interval_seconds:
            return f"{s.round_interval_seconds:g} s since the last round"
        counts = await self._store_call(self._store.counts)
        new = counts["unlabeled"] - self._unlabeled_at_last_round
        if s.round_min_new_samples > 0 and new >= s.round_min_new_samples:
            return f"{new} new samples"
        if s.drift_threshold > 0:
            return await self._drift()
        return None

    async def _drift(self) -> str | None:
        from scipy.stats import ks_2samp

        window = self._settings.drift_window
        proba = await self._store_call(lambda: self._store.served_probabilities(limit=window))
        confidences = _confidences(proba)
        if len(confidences) < window:
            return None
        if self._reference_confidences is None:
            self._reference_confidences = confidences
            return None
        statistic = ks_2samp(self._reference_confidences, confidences).statistic
        if statistic >= self._settings.drift_threshold:
            return f"served confidence drifted (KS statistic {statistic:.3f})"
        return None

    # --- one round ------------------------------------------------------------------------------

    async def _round(self, reason: str) -> trainer_pb2.RoundSummary:
        assert self._lock is not None, "start() first"
        async with self._lock:
            self._running = asyncio.current_task()
            try:
                return await self._run_round(reason)
            finally:
                self._running = None
                self._last_round_at = time.monotonic()

    async def _run_round(self, reason: str) -> trainer_pb2.RoundSummary:
        s, store = self._settings, self._store
        history = await self._store_call(store.rounds)
        index = len(history) + 1
        started_ns, t0 = time.time_ns(), time.perf_counter()
        summary = trainer_pb2.RoundSummary(round=index, outcome="running", started_unix_ns=started_ns)
        output: RoundOutput | None = None
        try:
            teacher = await self._service.served_version(s.model_name)
            if teacher is None:
                raise ServiceError(f"the service serves no version of {s.model_name!r}: run `pseudoserve bootstrap` first")
            summary.teacher_version = teacher
            inputs = await self._store_call(lambda: RoundInputs.from_store(store, self._engine))
            self._unlabeled_at_last_round = inputs.unlabeled_count
            output = await asyncio.to_thread(
                compute_round, inputs, repo=s.model_repository, model=s.model_name, teacher_version=teacher,
                round_index=index, engine=self._engine, reports_dir=s.reports_dir, history=list(history))
            result = output.result
            summary.teacher_holdout_accuracy = result.teacher_eval.accuracy
            summary.student_holdout_accuracy = result.student_eval.accuracy
            summary.pseudo_labels_accepted = len(result.accepted_idx)
            summary.pseudo_labels_rejected = int(sum(result.rejected.values()))
            summary.report_path = str(output.report_path or "")
            await self._store_call(lambda: store.set_pseudo_labels(
                inputs.pool_ids[result.accepted_idx], result.pseudo_labels, result.pseudo_confidences, index))
            if result.promoted and output.published_version is not None:
                version = str(output.published_version)
                await self._service.load(s.model_name)
                await self._service.confirm_serving(s.model_name, version, output.confirm_sample, output.confirm_expected)
                summary.outcome, summary.student_version = "promoted", version
                summary.reason = result.reason
                await self._set_active(version)
            else:
                summary.outcome, summary.reason = "rejected", result.reason
            self._observe(result, summary)
        except Exception as exc:
            log.exception("round %d failed", index)
            summary.outcome, summary.reason = "failed", f"{type(exc).__name__}: {exc}"
        summary.duration_seconds = time.perf_counter() - t0
        await self._store_call(lambda: store.record_round(summary))
        self._metrics.rounds.labels(summary.outcome).inc()
        self._metrics.round_duration.observe(summary.duration_seconds)
        self._reference_confidences = None  # drift is measured against the new version's traffic
        log.info("round %d %s (%s) in %.1f s: teacher v%s %.4f, student %.4f, %d pseudo-labels accepted, %d rejected",
                 index, summary.outcome, summary.reason, summary.duration_seconds, summary.teacher_version,
                 summary.teacher_holdout_accuracy, summary.student_holdout_accuracy,
                 summary.pseudo_labels_accepted, summary.pseudo_labels_rejected,
                 extra={"event": "round", "round": index, "outcome": summary.outcome, "reason": summary.reason,
                        "trigger": reason, "teacher_version": summary.teacher_version,
                        "student_version": summary.student_version,
                        "teacher_holdout_accuracy": summary.teacher_holdout_accuracy,
                        "student_holdout_accuracy": summary.student_holdout_accuracy,
                        "pseudo_labels_accepted": summary.pseudo_labels_accepted,
                        "pseudo_labels_rejected": summary.pseudo_labels_rejected,
                        "duration_seconds": round(summary.duration_seconds, 3)})
        return summary

    def _observe(self, result: Any, summary: trainer_pb2.RoundSummary) -> None:
        m = self._metrics
        m.pseudo_labels_accepted.inc(summary.pseudo_labels_accepted)
        for why, count in result.rejected.items():
            m.pseudo_labels_rejected.labels(why).inc(count)
        m.holdout_accuracy.labels(summary.teacher_version).set(summary.teacher_holdout_accuracy)
        if summary.outcome == "promoted":
            m.holdout_accuracy.labels(summary.student_version).set(summary.student_holdout_accuracy)

    async def _set_active(self, version: str) -> None:
        self._active = version
        self._metrics.active_version.set(int(version))
        await self._store_call(lambda: self._store.set_state(ACTIVE_VERSION_KEY, version))


def _confidences(proba: Any) -> np.ndarray:
    """Max probability per row of what `SampleStore.served_probabilities` returns."""
    if isinstance(proba, tuple):  # (ids, probabilities, ...)
        proba = next(p for p in proba if isinstance(p, np.ndarray) and p.ndim == 2)
    proba = np.asarray(proba, dtype=np.float32)
    return proba.max(axis=1) if len(proba) else np.empty(0, np.float32)
