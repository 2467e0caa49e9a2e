"""Where the serving floor lies: minimal Open Inference Protocol servers against the bare echo.

    .venv/bin/python bench/floor_variants.py [--repeats 3] [--concurrency 1,8] [--workers 2]
                                             [--variants echo,aio-ort,sync,sync-ort,pseudoserve]

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
  pseudoserve  `pseudoserve serve` on the same model.

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

VARIANTS = ("echo", "aio-ort", "sync", "sync-ort", "pseudoserve")


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
