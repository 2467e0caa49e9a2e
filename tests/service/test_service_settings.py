"""ServerSettings and the `serve` command line: documented fields, flags over environment, and
clear errors for bad values."""

from __future__ import annotations

import argparse

from service.cli import add_serve_arguments, run_serve, settings_from_args
from service.settings import ServerSettings


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_every_field_is_documented() -> None:
    undocumented = [name for name, f in ServerSettings.model_fields.items() if not f.description]
    assert not undocumented


def test_flags_override_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PSEUDOSERVE_GRPC_PORT", "9001")
    monkeypatch.setenv("PSEUDOSERVE_METRICS_PORT", "9002")
    monkeypatch.setenv("PSEUDOSERVE_CAPTURE_MODELS", '["mlp"]')
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    settings = settings_from_args(_parse("--grpc-port", "0", "--model-repository", str(tmp_path),
                                         "--auth-token-file", str(token)))
    assert settings.grpc_port == 0 and settings.metrics_port == 9002 and settings.capture_models == ["mlp"]
    assert settings.auth_token.get_secret_value() == "s3cret" and settings.model_repository == tmp_path


def test_bad_values_exit_2_naming_the_field(tmp_path, capsys) -> None:
    assert run_serve(_parse("--grpc-port", "70000", "--model-repository", str(tmp_path))) == 2
    assert "grpc_port" in capsys.readouterr().err
    assert run_serve(_parse("--capture-sampling", "1.5", "--model-repository", str(tmp_path))) == 2
    assert "capture_sampling" in capsys.readouterr().err
    assert run_serve(_parse("--model-repository", str(tmp_path / "absent"))) == 2
    assert "is not a folder" in capsys.readouterr().err
