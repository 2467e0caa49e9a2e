"""Where the serving floor lies: minimal Open Inference Protocol servers against the bare echo.

    .venv/bin/python bench/floor_variants.py [--repeats 3] [--concurrency 1,8] [--workers 2]
                                             [--variants echo,aio-ort,sync,sync-ort,pseudoserve,sync-ps,sync-lean]

Issue 2's targets compare pseudoserve with a bare grpc.aio echo. This benchmark asks how close
any server can get on this machine, by measuring, in one run and with the same client
(perf_analyzer, alternating order, medians of `--repeats`), servers that each do less than
pseudoserve:

  echo         bench/echo_server.py's protocol twin: grpc.aio, parse the request, answer its raw
               input as the raw output (the floor of the targets);
  aio-ort      grpc.aio, ModelInfer = parse, np.frombuffer, ONE onnxruntime call of the benchmark
               model, response: no validation, metrics, batching or capture, i.e. the least a
               grpc.aio server that runs the model can do;
  sync         grpc's thread-pool server (`grpc.server`, `--workers` threads), the echo's handler;
  sync-ort     grpc's thread-pool server, the aio-ort handler;
  pseudoserve  `pseudoserve serve` on the same model;
  sync-ps      pseudoserve's own request path on grpc's thread-pool server: the real converters,
               ModelManager, ModelVersion.validate, its onnxruntime call and batch metrics, the
               request metrics and the response, run synchronously in the worker thread (no
               batcher, no capture). It asks whether the thread-pool front end alone would bring
               pseudoserve to the targets. It times its parts in place (perf_counter, ~1 µs in
               all) and writes the means to bench/results/floor_variants_breakdown.json on exit;
  sync-lean    sync-ps with the least complete request path in front: for the common request (the
               served model, one raw input of the expected name, datatype, shape and byte size,
               no capture parameter) it checks exactly that, rejects non-finite input through a
               float64 sum, counts the request in flight, calls onnxruntime, answers the
               requested outputs raw and records its metrics as one appended tuple; any other
               request takes sync-ps's path. It asks how far specialising the handler would go.

Each variant runs as a subprocess of this file (`--serve VARIANT --ready-file F`). It prints
throughput, p50 and the ratios to the echo. The model and its config are the serving benchmark's
(bench/serving.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import echo_server
import grpc
import numpy as np
import serving

from protos import inference_pb2 as pb

VARIANTS = ("echo", "aio-ort", "sync", "sync-ort", "pseudoserve", "sync-ps", "sync-lean")
BREAKDOWN = ROOT / "bench" / "results" / "floor_variants_breakdown.json"


# --- the servers ----------------------------------------------------------------------------------
def _onnx_handler(model_path: Path):
    """ModelInfer reduced to parse, decode, one onnxruntime call and the response."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    run = session._sess.run  # as pseudoserve's request path calls it (service.runtime.request_runner)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    def infer(request: pb.ModelInferRequest, context=None) -> pb.ModelInferResponse:
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tuple(tensor.shape))
        outputs = run(output_names, {input_name: x}, None)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for name, value in zip(output_names, outputs):
            response.outputs.add(name=name, datatype="FP32", shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response

    return infer


def _finish(result):
    """The value of an echo_server coroutine handler that never awaits (they do not)."""
    try:
        result.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("handler suspended")


def serve(variant: str, model_path: Path, ready_file: Path, workers: int) -> None:
    if variant in ("sync-ps", "sync-lean"):
        return serve_pseudoserve_sync(model_path.parents[2], ready_file, workers, lean=variant == "sync-lean")
    with_model = variant.endswith("-ort")
    # metadata and config are the echo's for every variant: perf_analyzer only needs the two to
    # agree (it reads the raw outputs whatever their names)
    infer = _onnx_handler(model_path) if with_model else echo_server._echo

    def model_metadata(request, context):
        return _finish(echo_server._model_metadata(request, context))

    def model_config(request, context):
        return _finish(echo_server._model_config(request, context))

    def server_metadata(request, context):
        return _finish(echo_server._server_metadata(request, context))

    def handlers(wrap) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(echo_server.INFERENCE, {
            "ModelInfer": echo_server._unary(wrap(lambda r, c: infer(r)), pb.ModelInferRequest),
            "ServerMetadata": echo_server._unary(wrap(server_metadata), pb.ServerMetadataRequest),
            "ModelMetadata": echo_server._unary(wrap(model_metadata), pb.ModelMetadataRequest),
            "ModelConfig": echo_server._unary(wrap(model_config), pb.ModelConfigRequest),
        })

    def publish(port: int) -> None:
        ready_file.write_text(json.dumps({"pid": os.getpid(), "grpc_port": port}))

    if variant.startswith("sync"):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        server.add_generic_rpc_handlers((handlers(lambda fn: fn),))
        publish(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
        server.wait_for_termination()
        return

    def as_coroutine(fn):
        async def handler(request, context):
            return fn(request, context)
        return handler

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handlers(as_coroutine),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        publish(port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


def serve_pseudoserve_sync(repo: Path, ready_file: Path, workers: int, *, lean: bool = False) -> None:
    """sync-ps: DataPlane.infer's steps, synchronously, on grpc's thread-pool server (sync-lean:
    a specialised path for the common request in front of them)."""
    import threading
    import time

    from prometheus_client import CollectorRegistry

    from service import converters
    from service.dataplane import DataPlane
    from service.domain import InferOutput, InferResponse
    from service.manager import ModelManager
    from service.metrics import ServiceMetrics
    from service.repository import ModelRepository
    from service.servicer import InferenceServicer
    from service.settings import ServerSettings

    settings = ServerSettings(model_repository=repo)
    metrics = ServiceMetrics(CollectorRegistry())
    loop = asyncio.new_event_loop()  # the manager loads on an event loop; requests never touch it
    threading.Thread(target=loop.run_forever, daemon=True).start()
    manager = ModelManager(ModelRepository(repo), settings, metrics, futures.ThreadPoolExecutor(1))
    asyncio.run_coroutine_threadsafe(manager.load_all(), loop).result()
    dataplane = DataPlane(manager, metrics, version="sync-ps")
    inflight = threading.Lock()
    clock = time.perf_counter
    parts = dict.fromkeys(("decode", "version", "validate", "onnxruntime", "batch_metrics", "request_metrics",
                           "response"), 0.0)
    count = 0

    def infer(request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        nonlocal count
        t0 = clock()
        req = converters.infer_request_from_proto(request)
        t1 = clock()
        mv = manager.get(req.model_name, req.model_version)
        with inflight:
            mv.inflight += 1
        try:
            t2 = clock()
            feeds, rows = mv.validate(req.inputs)
            positions = mv.output_positions(req.outputs) if req.outputs else None
            t3 = clock()
            computed = mv._run(0, feeds)  # the batcher's call for a lone request
            t4 = clock()
            mv._on_batch(computed, rows, t4 - t3)
        finally:
            with inflight:
                mv.inflight -= 1
        t5 = clock()
        specs = mv.outputs
        chosen = range(len(specs)) if positions is None else positions
        outputs = [InferOutput(specs[i].name, specs[i].datatype, computed[i]) for i in chosen]
        mv.metrics.request_succeeded(rows, clock() - t0, 0.0)
        t6 = clock()
        response = converters.infer_response_to_proto(
            InferResponse(req.model_name, mv.version_str, req.id, outputs, req.raw_outputs))
        t7 = clock()
        with inflight:
            for key, start, end in (("decode", t0, t1), ("version", t1, t2), ("validate", t2, t3),
                                    ("onnxruntime", t3, t4), ("batch_metrics", t4, t5),
                                    ("request_metrics", t5, t6), ("response", t6, t7)):
                parts[key] += end - start
            count += 1
        return response

    handler = _lean_handler(manager.get(serving.MODEL), infer, inflight) if lean else infer

    servicer = InferenceServicer(dataplane)  # metadata RPCs: its coroutines never suspend

    def model_metadata(request, context):
        return _finish(servicer.ModelMetadata(request, context))

    def model_config(request, context):
        return _finish(servicer.ModelConfig(request, context))

    def server_metadata(request, context):  # the echo's: no "statistics" extension, so perf_analyzer
        return _finish(echo_server._server_metadata(request, context))  # asks no ModelStatistics

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(echo_server.INFERENCE, {
        "ModelInfer": echo_server._unary(handler, pb.ModelInferRequest),
        "ServerMetadata": echo_server._unary(server_metadata, pb.ServerMetadataRequest),
        "ModelMetadata": echo_server._unary(model_metadata, pb.ModelMetadataRequest),
        "ModelConfig": echo_server._unary(model_config, pb.ModelConfigRequest),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready_file.write_text(json.dumps({"pid": os.getpid(), "grpc_port": port}))

    def stop(*_) -> None:
        if not lean:  # sync-lean's general path sees only the odd request: sync-ps's breakdown stands
            BREAKDOWN.parent.mkdir(parents=True, exist_ok=True)
            BREAKDOWN.write_text(json.dumps({"requests": count, "mean_us": {k: v / max(count, 1) * 1e6
                                                                           for k, v in parts.items()}}, indent=2))
        server.stop(0)

    signal.signal(signal.SIGTERM, stop)
    server.wait_for_termination()


def _lean_handler(mv, general, inflight):
    """sync-lean's ModelInfer for one-input models: the common request checked and answered in
    one function, everything else (and every error) left to `general`."""
    import math
    import time

    name, version = mv.name, mv.version_str
    ((input_name, spec),) = mv.inputs.items()
    width = spec.shape[1:]
    row_bytes = math.prod(width) * spec.dtype.itemsize
    max_rows = mv.options.max_batch_size
    run = mv._runners[0]  # the batcher's call for a lone request
    names = [o.name for o in mv.outputs]
    datatypes = [o.datatype for o in mv.outputs]
    every = range(len(names))
    observed = []  # (rows, start, compute start, compute end, end, probabilities): the metrics' cost, never read
    clock = time.perf_counter

    def infer(request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        start = clock()
        inputs, raws = request.inputs, request.raw_input_contents
        if (request.model_name != name or request.model_version not in ("", version) or len(inputs) != 1
                or len(raws) != 1 or "capture" in request.parameters):
            return general(request, context)
        tensor, raw = inputs[0], raws[0]
        shape = tensor.shape
        if (tensor.name != input_name or tensor.datatype != spec.datatype or len(shape) != len(width) + 1
                or tuple(shape[1:]) != width or not 0 < shape[0] <= max_rows
                or len(raw) != shape[0] * row_bytes or tensor.HasField("contents")):
            return general(request, context)
        x = np.frombuffer(raw, spec.dtype).reshape(tuple(shape))
        if not math.isfinite(x.sum(dtype=np.float64)):  # NaN/inf (or an overflowing sum): exact check
            return general(request, context)
        wanted = request.outputs
        positions = [mv.output_index.get(o.name) for o in wanted] if wanted else every
        if None in positions:
            return general(request, context)
        with inflight:
            mv.inflight += 1
        try:
            compute = clock()
            outputs = run(names, {input_name: x})
            computed = clock()
        finally:
            with inflight:
                mv.inflight -= 1
        response = pb.ModelInferResponse(model_name=name, model_version=version, id=request.id)
        add, contents = response.outputs.add, response.raw_output_contents
        for i in positions:
            add(name=names[i], datatype=datatypes[i], shape=outputs[i].shape)
            contents.append(outputs[i].tobytes())
        observed.append((shape[0], start, compute, computed, clock(), outputs[mv.prob_index]))
        return response

    return infer


# --- the measurement ------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="threads of the sync variants' pool")
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.model, args.ready_file, args.workers)
        return 0

    from tests.fixtures.onnx_models import write_version

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "echo" not in variants:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}, echo included (unknown: {sorted(unknown)})")
    variants.remove("echo")
    variants.insert(0, "echo")
    with tempfile.TemporaryDirectory(prefix="pseudoserve-floor-") as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "models"
        write_version(repo, serving.MODEL, 1, config=serving.CONFIG)
        model_path = repo / serving.MODEL / "1" / "model.onnx"
        procs = {}
        try:
            for v in variants:
                ready = tmp / f"{v}.json"
                if v == "pseudoserve":
                    cmd = [str(ROOT / ".venv" / "bin" / "pseudoserve"), "serve", "--model-repository", str(repo),
                           "--grpc-port", "0", "--metrics-port", "0", "--log-level", "WARNING",
                           "--ready-file", str(ready)]
                else:
                    cmd = [sys.executable, __file__, "--serve", v, "--model", str(model_path),
                           "--ready-file", str(ready), "--workers", str(args.workers)]
                procs[v] = serving._start(cmd, ready, tmp / f"{v}.log")
            results: dict = {}
            for c in (int(x) for x in args.concurrency.split(",")):
                runs: dict[str, list[dict]] = {v: [] for v in variants}
                for rep in range(args.repeats):
                    for v in (variants if rep % 2 == 0 else variants[::-1]):
                        r = serving.perf_analyzer(f"127.0.0.1:{procs[v][1]['grpc_port']}", c, False, tmp,
                                                  args.window_ms)
                        if r:
                            runs[v].append(r)
                echo = None
                for v in variants:
                    if not runs[v]:
                        print(f"c={c} {v:12s} no result")
                        continue
                    thr = statistics.median(r["throughput"] for r in runs[v])
                    p50 = statistics.median(r["p50_us"] for r in runs[v])
                    echo = echo or (thr, p50)
                    results[f"{v}/{c}"] = {"throughput": thr, "p50_us": p50}
                    print(f"c={c} {v:12s} {thr:7.0f}/s p50 {p50:6.0f} µs   thr/echo {thr / echo[0]:.3f}"
                          f"   p50/echo {p50 / echo[1]:.3f}", flush=True)
        finally:
            for proc, _ in procs.values():
                serving._stop(proc)
    out = ROOT / "bench" / "results" / "floor_variants.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workers": args.workers, "repeats": args.repeats, "results": results}, indent=2))
    print(f"written {out}")
    if "sync-ps" in variants and BREAKDOWN.exists():
        parts = json.loads(BREAKDOWN.read_text())
        print(f"sync-ps request path in place, mean µs over {parts['requests']} requests: "
              + ", ".join(f"{k} {v:.1f}" for k, v in parts["mean_us"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
