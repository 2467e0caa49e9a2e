"""The offline subcommands: `pseudoserve fit`, `pseudoserve bootstrap` and `pseudoserve rollback`.

- `fit`: files in (labeled, unlabeled, optional holdout), self-training (`trainer.engine.self_train`),
  then `DIR/model.onnx` (raw features in, class probabilities out, preprocessing baked in),
  `DIR/model.pt`, `DIR/fit.json`, `DIR/report.html` + `DIR/index.html` and `DIR/rounds/<n>/`.
  Everything is written into a hidden sibling temp folder and moved into DIR only after all of it
  succeeded, so a failure writes nothing.
- `bootstrap`: version 1 from the labels alone (`train_supervised`), exported and published into a
  model repository with model.pt (classifier + preprocessor) for the online trainer to continue.
- `rollback`: republish an earlier version as the newest, optionally telling the service to load it.

Errors in the user's input (files, YAML, options) print one line `pseudoserve: error: ...` and
exit with 2; an unexpected failure prints one line too and exits with 1 (`PSEUDOSERVE_DEBUG=1`
shows the traceback). Heavy imports (torch, the engine) happen inside the run functions only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("pseudoserve.offline")


# ---------------------------------------------------------------------------------------------
# arguments


def _add_data_arguments(parser: argparse.ArgumentParser, *, unlabeled_required: bool) -> None:
    parser.add_argument("--labeled", type=Path, required=True, help="labeled data (.csv .json .jsonl .parquet .npz or IDX .gz)")
    parser.add_argument("--unlabeled", type=Path, required=unlabeled_required, default=None,
                        help="unlabeled data in the same format (a label column in it is ignored)")
    parser.add_argument("--holdout", type=Path, default=None,
                        help="labeled holdout file (default: split holdout_fraction of --labeled off, stratified)")
    parser.add_argument("--label-column", default=None,
                        help="name of the label column (CSV/JSON/Parquet; .npz/IDX name their label arrays)")
    parser.add_argument("--config", type=Path, default=None, help="YAML file of engine options (EngineSettings keys)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (overrides the config's seed)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser, unlabeled_required=True)
    parser.add_argument("--out", type=Path, required=True, help="output folder (model.onnx, report.html, rounds/)")


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser, unlabeled_required=False)
    parser.add_argument("--model-repository", type=Path, required=True, help="the service's model repository folder")
    parser.add_argument("--model", required=True, help="model name (folder in the repository)")
    parser.add_argument("--force", action="store_true",
                        help="publish even if the model already has versions (as the next version)")
    _add_service_arguments(parser)


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, required=True, help="the service's model repository folder")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--to", type=int, required=True, metavar="VERSION", help="the earlier version to serve again")
    _add_service_arguments(parser)


def _add_service_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service-address", default=None, metavar="HOST:PORT",
                        help="also call RepositoryModelLoad on this service so it serves the new version now")
    parser.add_argument("--token", default=os.environ.get("PSEUDOSERVE_TOKEN"),
                        help="bearer token for the service (default: $PSEUDOSERVE_TOKEN)")
    parser.add_argument("--ca-file", type=Path, default=None, help="CA certificate for a TLS service address")


# ---------------------------------------------------------------------------------------------
# shared plumbing


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or environment (exit 2), as opposed to a bug (exit 1)."""
    from trainer.export import ExportError
    from trainer.publish import PublishError

    errors: list[type[BaseException]] = [ValueError, OSError, ExportError, PublishError]
    try:
        from trainer.service_client import ServiceError
        errors.append(ServiceError)
    except ImportError:  # the service client needs the service package; absent in partial installs
        pass
    return tuple(errors)


def _guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    debug = bool(os.environ.get("PSEUDOSERVE_DEBUG"))
    try:
        return run(args)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback, for any failure
        if debug:
            traceback.print_exc()
        if isinstance(exc, _user_errors()):
            if isinstance(exc, OSError) and exc.filename:
                message = f"{exc.filename}: {exc.strerror or exc}"
            elif hasattr(exc, "errors") and callable(exc.errors):  # pydantic ValidationError (env vars)
                err = exc.errors()[0]
                message = f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            else:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"pseudoserve: error: {message}", file=sys.stderr)
            return 2
        print(f"pseudoserve: error: internal error: {type(exc).__name__}: {exc} "
              "(set PSEUDOSERVE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _settings(args: argparse.Namespace):
    from trainer.engine.settings import EngineSettings

    overrides = {"seed": args.seed} if args.seed is not None else {}
    if args.config is not None:
        settings = EngineSettings.from_yaml(args.config, **overrides)
    else:
        settings = EngineSettings(**overrides)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return settings


class RichProgress:
    """`progress(task, completed, total)` backed by rich.progress bars on stderr."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> RichProgress:  # noqa: PYI034 - final class
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, task: str, completed: int, total: int) -> None:
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(task, total=total)
        self._progress.update(self._tasks[task], completed=completed, total=total)


def _prepare(args: argparse.Namespace, settings):
    from trainer.data.dataset import prepare

    return prepare(labeled=args.labeled, label_column=args.label_column, unlabeled=args.unlabeled,
                   holdout=args.holdout, scaler=settings.scaler, holdout_fraction=settings.holdout_fraction,
                   seed=settings.seed)


def _install(tmp: Path, out: Path) -> None:
    """Move everything from the finished temp folder into `out` (replacing same-named entries)."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not out.is_dir():
        raise NotADirectoryError(20, "not a directory", str(out))
    for entry in tmp.iterdir():
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.rename(entry, target)
    tmp.rmdir()


def _load_on_service(args: argparse.Namespace, model: str, version: int) -> str:
    import asyncio

    from trainer.service_client import ServiceClient

    async def go() -> str | None:
        client = ServiceClient(args.service_address, token=args.token, ca_file=args.ca_file, timeout=60.0)
        try:
            await client.load(model)
            return await client.served_version(model)
        finally:
            await client.close()

    served = asyncio.run(go())
    if served != str(version):
        log.warning("the service at %s serves %s version %s after RepositoryModelLoad (published %d)",
                    args.service_address, model, served, version)
    return served or ""


# ---------------------------------------------------------------------------------------------
# fit


def run_fit(args: argparse.Namespace) -> int:
    return _guarded(_fit, args)


def _fit(args: argparse.Namespace) -> int:
    from trainer.data.dataset import Prepared

    settings = _settings(args)
    data: Prepared = _prepare(args, settings)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        summary = _fit_into(tmp, data, settings, quiet=args.quiet)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(json.dumps({"out": str(out), **{k: summary[k] for k in (
        "labeled", "unlabeled", "holdout", "rounds", "promotions", "holdout_accuracy", "supervised_holdout_accuracy")}}))
    return 0


def _fit_into(folder: Path, data, settings, *, quiet: bool) -> dict:
    import torch

    from trainer.engine import evaluate, self_train
    from trainer.export import export_onnx
    from trainer.publish import make_checkpoint
    from trainer.report import history_entry, write_index, write_round_report

    started = time.monotonic()
    history: list[dict] = []
    report_kw = {"class_names": data.class_names, "sample_shape": data.preprocessor.output_shape,
                 "X_lab_pre": data.X_lab, "X_pool_pre": data.X_unlab, "y_lab": data.y_lab,
                 "feature_names": data.preprocessor.output_names}

    def on_round(result) -> None:
        write_round_report(folder, result, list(history), **report_kw)
        history.append(history_entry(result))
        log.info("round %d: %s (%s)", result.round_index, "promoted" if result.promoted else "rejected", result.reason)

    with RichProgress(enabled=not quiet) as progress:
        final, rounds, baseline = self_train(data.X_lab, data.y_lab, data.X_unlab, data.engine_holdout,
                                             n_classes=data.n_classes, settings=settings, seed=settings.seed,
                                             progress=progress, on_round=on_round, class_names=data.class_names)
    final_eval = evaluate(final.predict_proba(data.X_hold), data.holdout_y, data.n_classes)
    base_eval = evaluate(baseline.predict_proba(data.X_hold), data.holdout_y, data.n_classes)
    diff = export_onnx(final, data.preprocessor, folder / "model.onnx", class_names=data.class_names,
                       feature_names=data.feature_names, parity_sample=data.parity_sample(seed=settings.seed))
    checkpoint = make_checkpoint(classifier=final, preprocessor=data.preprocessor, class_names=data.class_names,
                                 feature_names=data.feature_names, settings=settings, source="fit",
                                 rounds=len(rounds))
    torch.save(checkpoint, folder / "model.pt")
    summary = {
        "labeled": len(data.y_lab), "unlabeled": len(data.X_unlab), "holdout": len(data.holdout_y),
        "holdout_source": data.holdout_source, "classes": data.class_names, "features": data.feature_names,
        "categorical": data.labeled.categorical, "rounds": len(rounds),
        "promotions": sum(1 for r in rounds if r.promoted),
        "holdout_accuracy": final_eval.accuracy, "supervised_holdout_accuracy": base_eval.accuracy,
        "holdout_ece": final_eval.ece, "parity_max_abs_diff": diff, "seconds": round(time.monotonic() - started, 2),
    }
    (folder / "fit.json").write_text(json.dumps({**summary, "settings": settings.model_dump(mode="json")}, indent=2))
    write_index(folder, filename="report.html", title="pseudoserve fit", summary=summary)
    write_index(folder)
    return summary


# ---------------------------------------------------------------------------------------------
# bootstrap


def run_bootstrap(args: argparse.Namespace) -> int:
    return _guarded(_bootstrap, args)


def _bootstrap(args: argparse.Namespace) -> int:
    from trainer.engine import evaluate, train_supervised
    from trainer.publish import PublishError, export_and_publish, version_numbers

    existing = version_numbers(args.model_repository / args.model)
    if existing and not args.force:
        raise PublishError(f"{args.model_repository / args.model}: model {args.model!r} already has versions "
                           f"{', '.join(map(str, existing))} (pass --force to publish the bootstrap model as the next one)")
    settings = _settings(args)
    data = _prepare(args, settings)
    with RichProgress(enabled=not args.quiet) as progress:
        classifier = train_supervised(data.X_lab, data.y_lab, n_classes=data.n_classes, settings=settings,
                                      seed=settings.seed, progress=progress)
    holdout = evaluate(classifier.predict_proba(data.X_hold), data.holdout_y, data.n_classes)
    meta = {"source": "bootstrap", "round": 0, "created": time.time(), "labeled": len(data.y_lab),
            "labeled_file": str(args.labeled), "holdout_source": data.holdout_source, "holdout": holdout.to_dict(),
            "class_names": data.class_names, "feature_names": data.feature_names,
            "categories": data.preprocessor.metadata()}
    version, _ = export_and_publish(args.model_repository, args.model, classifier=classifier,
                                    preprocessor=data.preprocessor, class_names=data.class_names,
                                    feature_names=data.feature_names, settings=settings,
                                    parity_sample=data.parity_sample(seed=settings.seed), meta=meta,
                                    source="bootstrap", round=0)
    result = {"model": args.model, "version": version, "holdout_accuracy": holdout.accuracy,
              "labeled": len(data.y_lab), "holdout": len(data.holdout_y)}
    if args.service_address:
        result["served_version"] = _load_on_service(args, args.model, version)
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------
# rollback


def run_rollback(args: argparse.Namespace) -> int:
    return _guarded(_rollback, args)


def _rollback(args: argparse.Namespace) -> int:
    from trainer.publish import rollback

    version = rollback(args.model_repository, args.model, args.to)
    result = {"model": args.model, "rolled_back_to": args.to, "version": version}
    if args.service_address:
        result["served_version"] = _load_on_service(args, args.model, version)
    print(json.dumps(result))
    return 0
