"""The trainer's control API, `pseudoserve.v1.Trainer`: Status, SubmitLabels, ListUncertain,
TriggerRound and ListRounds, as a thin servicer over the `SampleStore` and a `RoundRunner`.

ListUncertain rescores the unlabeled pool with the model the service currently serves: it loads
`<repo>/<model>/<active version>/model.onnx` with onnxruntime (CPU) when that file exists and its
input fits the stored features; otherwise it ranks by the probabilities the service answered
when it served each sample (stored with the capture). Either way the reply says which version the
probabilities come from. The strategies (margin, entropy, least_confidence) are a registry of
functions from probabilities (n, classes) to scores where higher means less sure.

Errors are mapped to gRPC status codes in one place (`_rpc`): ControlError subclasses and the
store's InvalidSampleError carry their code; anything else is INTERNAL "internal error" for the
client and logged in full here. Rounds are run by a `RoundRunner` (trainer.online, built by
trainer.server only when self-training is enabled); without one TriggerRound is refused.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np

from protos import trainer_pb2, trainer_pb2_grpc
from trainer.store import InvalidSampleError, SampleStore

log = logging.getLogger(__name__)

ACTIVE_VERSION_KEY = "active_version"  # store state key the online loop keeps up to date
MAX_K = 1000
MAX_CANDIDATES = 100_000  # newest unlabeled samples considered by ListUncertain


class RoundRunner(Protocol):
    """What the control API needs from the self-training loop (implemented in trainer.online)."""

    async def trigger(self, wait: bool) -> trainer_pb2.TriggerRoundResponse: ...
    def in_progress(self) -> bool: ...
    def active_version(self) -> str: ...
    async def start(self) -> None: ...  # background scheduling of rounds
    async def stop(self) -> None: ...


class ControlError(Exception):
    """An error the client caused or can act on; carries its gRPC status code."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ControlError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(ControlError):
    code = grpc.StatusCode.FAILED_PRECONDITION


# -- uncertainty strategies: probabilities (n, classes) -> score (n,), higher = less sure ----------

def _margin(p: np.ndarray) -> np.ndarray:
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.hstack([np.zeros_like(p), p])
    return 1.0 - (top2[:, 1] - top2[:, 0])


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return -(q * np.log(q)).sum(axis=1)


def _least_confidence(p: np.ndarray) -> np.ndarray:
    return 1.0 - p.max(axis=1)


UNCERTAINTY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "margin": _margin,
    "entropy": _entropy,
    "least_confidence": _least_confidence,
}


def uncertainty_scores(strategy: str, probabilities: np.ndarray) -> np.ndarray:
    """Scores of `strategy` (registry `UNCERTAINTY`); InvalidArgument naming `strategy` if unknown."""
    try:
        fn = UNCERTAINTY[strategy]
    except KeyError:
        raise InvalidArgument(f"strategy: unknown strategy {strategy!r} "
                              f"(expected one of {', '.join(UNCERTAINTY)})") from None
    return fn(np.asarray(probabilities, dtype=np.float64))


def latest_version(repository: Path, model_name: str) -> str:
    """Highest numeric version folder of the model ("" when none)."""
    folder = repository / model_name
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return str(max(versions)) if versions else ""


class OnnxScorer:
    """Probabilities of a published model version for stored feature rows (sessions cached)."""

    def __init__(self, repository: Path, model_name: str) -> None:
        self._repository = repository
        self._model_name = model_name
        self._sessions: dict[tuple[str, int], Any] = {}

    def predict(self, version: str, X: np.ndarray) -> np.ndarray | None:
        """(n, classes) probabilities, or None when the version has no usable model.onnx."""
        path = self._repository / self._model_name / version / "model.onnx"
        if not version or not path.is_file() or len(X) == 0:
            return None
        try:
            session = self._session(path)
            name = session.get_inputs()[0].name
            outputs = [o.name for o in session.get_outputs()]
            out = "probabilities" if "probabilities" in outputs else outputs[0]
            parts = [session.run([out], {name: X[i:i + 1024]})[0] for i in range(0, len(X), 1024)]
        except Exception as e:  # noqa: BLE001 - fall back to served probabilities, say why
            log.warning("ListUncertain: cannot rescore with %s (%s); using served probabilities", path, e)
            return None
        probs = np.concatenate(parts).astype(np.float64)
        if probs.ndim != 2 or len(probs) != len(X):
            return None
        return probs

    def _session(self, path: Path) -> Any:
        import onnxruntime as ort  # lazy: only ListUncertain needs it

        key = (str(path), path.stat().st_mtime_ns)
        session = self._sessions.get(key)
        if session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._sessions = {key: session}  # keep only the newest version's session
        return session


_R = TypeVar("_R")


def _rpc(method: Callable[..., Awaitable[_R]]) -> Callable[..., Awaitable[_R]]:
    """Map errors to gRPC status: the one place where that happens for the control API."""

    @functools.wraps(method)
    async def wrapper(self: TrainerControlServicer, request: Any, context: grpc.aio.ServicerContext) -> _R:
        try:
            return await method(self, request, context)
        except ControlError as e:
            await context.abort(e.code, str(e))
        except InvalidSampleError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Trainer/%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable")  # context.abort raises

    return wrapper


class TrainerControlServicer(trainer_pb2_grpc.TrainerServicer):
    """The `pseudoserve.v1.Trainer` servicer; store calls run in the store's writer executor."""

    def __init__(self, store: SampleStore, executor: Executor, *, model_repository: Path, model_name: str,
                 round_runner: RoundRunner | None = None) -> None:
        self._store = store
        self._executor = executor
        self._repository = Path(model_repository)
        self._model_name = model_name
        self._runner = round_runner
        self._scorer = OnnxScorer(self._repository, model_name)

    async def _call(self, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def active_version(self) -> str:
        """The round runner's view, else the one the store recorded, else the newest published."""
        if self._runner is not None:
            return self._runner.active_version()
        return await self._call(self._recorded_version)

    def _recorded_version(self) -> str:
        return self._store.get_state(ACTIVE_VERSION_KEY) or latest_version(self._repository, self._model_name)

    @_rpc
    async def Status(self, request: trainer_pb2.StatusRequest,
                     context: grpc.aio.ServicerContext) -> trainer_pb2.StatusResponse:
        counts = await self._call(self._store.counts)
        rounds = await self._call(self._store.rounds)
        version = await self.active_version()
        response = trainer_pb2.StatusResponse(
            unlabeled=counts["unlabeled"], labeled=counts["labeled"], holdout=counts["holdout"],
            feedback=counts["feedback"], pseudo_labeled=counts["pseudo_labeled"], stored_bytes=counts["bytes"],
            rounds=sum(1 for r in rounds if r.outcome != "running"), active_version=version,
            model_name=self._model_name, round_in_progress=self._runner is not None and self._runner.in_progress())
        promoted = [r for r in rounds if r.outcome == "promoted"]
        if promoted:
            response.last_promotion.CopyFrom(promoted[-1])
        return response

    @_rpc
    async def SubmitLabels(self, request: trainer_pb2.SubmitLabelsRequest,
                           context: grpc.aio.ServicerContext) -> trainer_pb2.SubmitLabelsResponse:
        accepted, unknown = await self._call(self._store.submit_labels, list(request.items))
        return trainer_pb2.SubmitLabelsResponse(accepted=accepted, unknown_ids=unknown)

    @_rpc
    async def ListUncertain(self, request: trainer_pb2.ListUncertainRequest,
                            context: grpc.aio.ServicerContext) -> trainer_pb2.ListUncertainResponse:
        strategy = request.strategy or "margin"
        if strategy not in UNCERTAINTY:
            uncertainty_scores(strategy, np.zeros((0, 2)))  # raises InvalidArgument naming the field
        if request.k > MAX_K:
            raise InvalidArgument(f"k: at most {MAX_K} samples per call, got {request.k}")
        k = request.k or 10
        version = await self.active_version()
        ids, X = await self._call(self._store.unlabeled_arrays, limit=MAX_CANDIDATES, model_name=self._model_name)
        probs = await asyncio.to_thread(self._scorer.predict, version, X)
        rescored = probs is not None
        if not rescored:  # served probabilities, including samples captured without features
            ids, probs = await self._call(self._store.served_probabilities, limit=MAX_CANDIDATES,
                                          model_name=self._model_name)
        if len(ids) == 0:
            return trainer_pb2.ListUncertainResponse()
        scores = uncertainty_scores(strategy, probs)
        order = np.argsort(-scores, kind="stable")[:k]
        samples = await self._call(self._store.samples_by_id, ids[order].tolist())
        response = trainer_pb2.ListUncertainResponse()
        for index, sample in zip(order, samples):
            row = probs[index]
            response.samples.add(
                request_id=sample.request_id, score=float(scores[index]), probabilities=row.tolist(),
                predicted_class=int(np.argmax(row)), model_version=version if rescored else sample.model_version,
                inputs=sample.inputs)
        return response

    @_rpc
    async def TriggerRound(self, request: trainer_pb2.TriggerRoundRequest,
                           context: grpc.aio.ServicerContext) -> trainer_pb2.TriggerRoundResponse:
        if self._runner is None:
            raise FailedPrecondition("self-training is disabled (trainer started with --no-self-training)")
        return await self._runner.trigger(request.wait)

    @_rpc
    async def ListRounds(self, request: trainer_pb2.ListRoundsRequest,
                         context: grpc.aio.ServicerContext) -> trainer_pb2.ListRoundsResponse:
        return trainer_pb2.ListRoundsResponse(rounds=await self._call(self._store.rounds))
