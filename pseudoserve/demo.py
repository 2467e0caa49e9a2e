"""`pseudoserve demo`: the whole idea, end to end, in a few minutes on a laptop.

It bootstraps version 1 of a classifier from a few labels, starts the inference service and the
trainer sidecar as two real processes on free loopback ports, plays the rest of the data set as
live traffic through the service with tritonclient (exactly as a user's client would), lets the
trainer run self-training rounds and hot-swap better versions, and shows a live table. Test
accuracy is measured through the service on a test split that is never captured (requests carry
the `capture=false` parameter) and never labeled for the trainer.

This process is a client: it imports tritonclient, so it must never import `protos.inference_pb2`
(see protos/__init__.py). It talks to the trainer with our `pseudoserve.v1` stubs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits",
                        help="digits: scikit-learn's built-in 8x8 digits (no download); mnist: IDX files in --data-dir")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PSEUDOSERVE_DATA_DIR", "../shared/data/mnist")),
                        help="folder with the MNIST IDX .gz files (for --dataset mnist)")
    parser.add_argument("--labels", type=int, default=None,
                        help="labeled examples given to the trainer, holdout included (default: 100 digits, 200 mnist)")
    parser.add_argument("--holdout-fraction", type=float, default=0.5,
                        help="share of the labels kept as the promotion holdout (default 0.5: 50 of 100)")
    parser.add_argument("--traffic", type=int, default=None, help="unlabeled requests to play (default: all remaining)")
    parser.add_argument("--rounds", type=int, default=4, help="self-training rounds to run")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent client threads playing the traffic")
    parser.add_argument("--workdir", type=Path, default=None, help="where to keep the repository, store, reports and logs (default: a temp dir)")
    parser.add_argument("--engine-config", type=Path, default=None,
                        help="engine YAML for bootstrap and trainer (default: engine defaults for digits; "
                             "bench/configs/mnist.yaml of this checkout for mnist, when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-seconds", type=float, default=900.0, help="give up (exit 1) after this long")


@dataclass
class Split:
    """The demo's data: labeled seed + holdout for the trainer, traffic for the service, test for us."""

    labeled: tuple[np.ndarray, np.ndarray]
    holdout: tuple[np.ndarray, np.ndarray]
    traffic: np.ndarray
    test: tuple[np.ndarray, np.ndarray]
    sample_shape: tuple[int, ...]


def load_split(dataset: str, data_dir: Path, labels: int, holdout_fraction: float, traffic: int | None, seed: int) -> Split:
    from sklearn.model_selection import train_test_split

    if dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        # served as what they are, 1x8x8 images (pixel values 0-16): the engine picks its CNN and
        # image augmentation for them
        X, y = digits.images[:, None].astype(np.float32), digits.target.astype(np.int64)
        X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
        sample_shape: tuple[int, ...] = (1, 8, 8)
    else:
        from trainer.data.loaders import load

        train = load(_idx(data_dir, "train-images"), label_column=None)
        test = load(_idx(data_dir, "t10k-images"), label_column=None)
        X_rest, y_rest = train.X.astype(np.float32), train.y.astype(np.int64)
        X_test, y_test = test.X.astype(np.float32), test.y.astype(np.int64)
        sample_shape = tuple(X_rest.shape[1:])
    X_lab, X_pool, y_lab, _ = train_test_split(X_rest, y_rest, train_size=labels, stratify=y_rest, random_state=seed)
    X_seed, X_hold, y_seed, y_hold = train_test_split(X_lab, y_lab, test_size=holdout_fraction, stratify=y_lab, random_state=seed)
    if traffic is not None:
        X_pool = X_pool[:traffic]
    return Split((X_seed, y_seed), (X_hold, y_hold), X_pool, (X_test, y_test), sample_shape)


def _engine_config(args: argparse.Namespace, workdir: Path) -> Path | None:
    """The engine YAML to use. MNIST with the engine defaults (a 32/64-channel CNN, up to 4,000
    steps, every core) takes many minutes per round on a small machine, so the MNIST demo uses the
    configuration measured by bench/online_mnist.py when this is a source checkout."""
    if args.engine_config is not None:
        if not args.engine_config.is_file():
            raise SystemExit(f"pseudoserve: error: --engine-config {args.engine_config}: no such file")
        return args.engine_config.resolve()
    if args.dataset == "mnist":
        bundled = Path(__file__).resolve().parents[1] / "bench" / "configs" / "mnist.yaml"
        if bundled.is_file():
            return bundled
        return None
    path = workdir / "engine.yaml"
    path.write_text(yaml.safe_dump(DIGITS_ENGINE, sort_keys=False))
    return path


# The digits demo's engine settings (everything else: the engine defaults). One torch thread: the
# client, the service and the trainer share the cores, and oversubscribed torch threads are ~10x
# slower per step there. Half the epochs of the default keep a round to seconds. The holdout has
# 5 samples per class, so one sample is a recall change of 0.2: the per-class recall guard allows
# one sample, and the accuracy gate decides.
DIGITS_ENGINE = {"torch_threads": 1, "epochs": 15, "max_recall_drop": 0.2}


def _idx(folder: Path, stem: str) -> Path:
    matches = sorted(folder.glob(f"{stem}*"))
    if not matches:
        raise SystemExit(f"pseudoserve: error: {folder}: no {stem}* file (MNIST IDX) found; pass --data-dir")
    return matches[0]


def write_labeled(path: Path, X: np.ndarray, y: np.ndarray) -> None:
    """Vectors as CSV (feature columns then `label`); images as .npz (X, y)."""
    if X.ndim == 2:
        header = ",".join([f"f{i}" for i in range(X.shape[1])] + ["label"])
        np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%g")
    else:
        np.savez_compressed(path, X=X, y=y)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    ready: dict
    log: Path

    def stop(self, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def start_process(name: str, args: list[str], workdir: Path, timeout: float = 120.0) -> Process:
    ready_file = workdir / f"{name}.ready.json"
    ready_file.unlink(missing_ok=True)
    log = workdir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pseudoserve", *args, "--ready-file", str(ready_file)]
    popen = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if popen.poll() is not None:
            raise SystemExit(f"pseudoserve: error: the {name} exited with {popen.returncode} during start-up; see {log}")
        if time.monotonic() > deadline:
            popen.kill()
            raise SystemExit(f"pseudoserve: error: the {name} did not become ready in {timeout:.0f} s; see {log}")
        time.sleep(0.1)
    return Process(name, popen, json.loads(ready_file.read_text()), log)


def start_service(repo: Path, workdir: Path, trainer_port: int) -> Process:
    """`pseudoserve serve` on a free loopback port, capturing to the trainer on `trainer_port`."""
    return start_process("service", ["serve", "--model-repository", str(repo), "--grpc-port", str(free_port()),
                                     "--metrics-port", "0", "--trainer-address", f"127.0.0.1:{trainer_port}"], workdir)


def start_trainer(repo: Path, workdir: Path, model: str, service: Process, trainer_port: int, labeled_file: Path,
                  holdout_file: Path, *extra: str) -> Process:
    """`pseudoserve trainer` for `model`, seeded with the labeled and holdout files; `extra` flags."""
    return start_process("trainer", [
        "trainer", "--store", str(workdir / "store.sqlite"), "--model-repository", str(repo),
        "--service-address", f"127.0.0.1:{service.ready['grpc_port']}", "--grpc-port", str(trainer_port),
        "--metrics-port", "0", "--model-name", model, "--labeled", str(labeled_file), "--holdout", str(holdout_file),
        "--label-column", "label", "--reports-dir", str(workdir / "reports"), *extra], workdir)


@dataclass
class Counters:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ok: bool, error: str = "") -> None:
        with self.lock:
            self.sent += 1
            if not ok:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(error)


class Client:
    """tritonclient, as any user would call the service."""

    def __init__(self, url: str, model: str):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self._url = url
        self.model = model
        self._local = threading.local()

    def _client(self):
        if not hasattr(self._local, "client"):
            self._local.client = self._grpc.InferenceServerClient(self._url)
        return self._local.client

    def infer(self, X: np.ndarray, *, capture: bool = True, request_id: str = "") -> tuple[np.ndarray, str]:
        inp = self._grpc.InferInput("input", list(X.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        params = None if capture else {"capture": False}
        result = self._client().infer(self.model, [inp], parameters=params, request_id=request_id)
        return result.as_numpy("probabilities"), result.get_response().model_version

    def accuracy(self, X: np.ndarray, y: np.ndarray, batch: int = 64) -> tuple[float, str]:
        correct, versions = 0, set()
        for start in range(0, len(X), batch):
            proba, version = self.infer(X[start:start + batch], capture=False)
            correct += int((proba.argmax(1) == y[start:start + batch]).sum())
            versions.add(version)
        return correct / len(X), ",".join(sorted(versions))


def play_traffic(client: Client, traffic: np.ndarray, counters: Counters, concurrency: int, stop: threading.Event) -> None:
    def one(row: np.ndarray) -> None:
        if stop.is_set():
            return
        try:
            client.infer(row[None])
            counters.record(True)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and shown, never hidden
            counters.record(False, str(exc).splitlines()[0][:200])

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, traffic))


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console()
    labels = args.labels or (100 if args.dataset == "digits" else 200)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pseudoserve-demo-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    split = load_split(args.dataset, args.data_dir, labels, args.holdout_fraction, args.traffic, args.seed)
    model = args.dataset
    repo = workdir / "repository"
    ext = ".csv" if len(split.sample_shape) == 1 else ".npz"
    labeled_file, holdout_file = workdir / f"labeled{ext}", workdir / f"holdout{ext}"
    write_labeled(labeled_file, *split.labeled)
    write_labeled(holdout_file, *split.holdout)
    console.print(f"[bold]pseudoserve demo[/] on {args.dataset}: {len(split.labeled[0])} labels + "
                  f"{len(split.holdout[0])} holdout labels, {len(split.traffic)} unlabeled requests, "
                  f"{len(split.test[0])} test samples; working in {workdir}")

    engine_config = _engine_config(args, workdir)
    config_args = ["--config", str(engine_config)] if engine_config else []
    console.print("1. bootstrap: training version 1 on the labels alone"
                  + (f" (engine config {engine_config})" if engine_config else ""))
    boot = subprocess.run([sys.executable, "-m", "pseudoserve", "bootstrap", "--labeled", str(labeled_file),
                           "--holdout", str(holdout_file), "--label-column", "label", "--model-repository", str(repo),
                           "--model", model, "--seed", str(args.seed), *config_args],
                          capture_output=True, text=True, check=False)
    if boot.returncode != 0:
        console.print(boot.stdout[-2000:], boot.stderr[-2000:])
        return 1

    trainer_port = free_port()
    console.print("2. starting the service and the trainer")
    service = start_service(repo, workdir, trainer_port)
    trainer = None
    try:
        trainer = start_trainer(repo, workdir, model, service, trainer_port, labeled_file, holdout_file,
                                *(["--engine-config", str(engine_config)] if engine_config else []))
        return _drive(console, Live, Table, args, split, model, workdir, service, trainer, started)
    finally:
        for proc in (trainer, service):
            if proc is not None:
                code = proc.stop()
                if code not in (0, -signal.SIGTERM):
                    console.print(f"[yellow]{proc.name} exited with {code}; see {proc.log}[/]")


def _drive(console, Live, Table, args, split: Split, model: str, workdir: Path, service: Process, trainer: Process,
           started: float) -> int:
    import grpc

    from protos import trainer_pb2, trainer_pb2_grpc

    client = Client(f"127.0.0.1:{service.ready['grpc_port']}", model)
    control = trainer_pb2_grpc.TrainerStub(grpc.insecure_channel(f"127.0.0.1:{trainer.ready['grpc_port']}"))
    counters, busy = Counters(), Counters()  # captured traffic; uncaptured load during rounds
    test_acc: dict[str, float] = {}
    acc, version = client.accuracy(*split.test)
    test_acc[version] = acc

    def table() -> Table:
        t = Table(title=f"pseudoserve demo ({time.monotonic() - started:.0f} s)")
        for col in ("round", "outcome", "served", "holdout t → s", "test acc", "pseudo acc/rej"):
            t.add_column(col, no_wrap=True)
        t.add_row("-", "bootstrap", "v1", "", f"{test_acc.get('1', float('nan')):.3f}", "")
        for r in control.ListRounds(trainer_pb2.ListRoundsRequest(), timeout=10).rounds:
            v = r.student_version if r.outcome == "promoted" else r.teacher_version
            t.add_row(str(r.round), r.outcome, f"v{v}", f"{r.teacher_holdout_accuracy:.3f} → {r.student_holdout_accuracy:.3f}",
                      f"{test_acc[v]:.3f}" if v in test_acc else "", f"{r.pseudo_labels_accepted}/{r.pseudo_labels_rejected}")
        t.caption = f"requests served {counters.sent + busy.sent - counters.failed - busy.failed}, failed {counters.failed + busy.failed}"
        return t

    chunks = np.array_split(split.traffic, args.rounds)
    stop = threading.Event()
    console.print(f"3. playing traffic and running {args.rounds} self-training rounds")
    with Live(table(), console=console, refresh_per_second=2) as live:
        for chunk in chunks:
            if time.monotonic() - started > args.timeout_seconds:
                console.print("[red]timed out[/]")
                return 1
            play_traffic(client, chunk, counters, args.concurrency, stop)
            _wait_for_capture(control, counters.sent - counters.failed, timeout=60)
            # The round runs while a background client keeps the service busy: the hot-swap
            # happens under load, and every one of those requests must succeed too.
            background = threading.Thread(target=keep_busy, args=(client, split.test[0], busy, stop), daemon=True)
            background.start()
            control.TriggerRound(trainer_pb2.TriggerRoundRequest(wait=True), timeout=args.timeout_seconds)
            stop.set()
            background.join()
            stop.clear()
            acc, version = client.accuracy(*split.test)
            test_acc[version] = acc
            live.update(table())
    status = control.Status(trainer_pb2.StatusRequest(), timeout=10)
    first, final = test_acc.get("1", float("nan")), test_acc[status.active_version or version]
    for r in control.ListRounds(trainer_pb2.ListRoundsRequest(), timeout=10).rounds:
        console.print(f"round {r.round} {r.outcome}: {r.reason}")
    console.print(f"[bold]summary[/]: test accuracy v1 {first:.3f} → v{status.active_version} {final:.3f} "
                  f"({len(split.test[0])} test samples, never captured, never labeled)")
    failed, errors = counters.failed + busy.failed, counters.errors + busy.errors
    console.print(f"requests served {counters.sent + busy.sent - failed}, failed {failed}"
                  + (f" (first errors: {errors})" if errors else ""))
    console.print(f"reports: {workdir / 'reports'} (also http://127.0.0.1:{trainer.ready.get('http_port', trainer.ready['metrics_port'])}/reports/)")
    console.print(f"metrics: http://127.0.0.1:{service.ready['metrics_port']}/metrics (service), "
                  f"http://127.0.0.1:{trainer.ready['metrics_port']}/metrics (trainer)")
    console.print(f"took {time.monotonic() - started:.0f} s")
    return 0 if failed == 0 else 1


def keep_busy(client: Client, X: np.ndarray, counters: Counters, stop: threading.Event,
              rate: float = 100.0) -> None:
    """Uncaptured requests at about `rate` per second (none when `rate` <= 0) until `stop`, so
    that every hot-swap happens while requests are in flight; each one counted."""
    if rate <= 0:
        stop.wait()
        return
    i = 0
    while not stop.wait(1.0 / rate):
        try:
            client.infer(X[i % len(X)][None], capture=False)
            counters.record(True)
        except Exception as exc:  # noqa: BLE001 - counted and shown
            counters.record(False, str(exc).splitlines()[0][:200])
        i += 1


def _wait_for_capture(control, expected: int, timeout: float) -> None:
    """Rounds should see the traffic just played: wait until the trainer has stored it."""
    from protos import trainer_pb2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = control.Status(trainer_pb2.StatusRequest(), timeout=10)
        if status.unlabeled + status.feedback >= expected:
            return
        time.sleep(0.2)
