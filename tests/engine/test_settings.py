import pytest

from trainer.engine import EngineSettings, SettingsError


def test_yaml_values_env_override_and_unknown_key(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 5\ngenerator: vae\n")
    assert EngineSettings.from_yaml(cfg).epochs == 5
    monkeypatch.setenv("PSEUDOSERVE_TRAINER_EPOCHS", "7")
    s = EngineSettings.from_yaml(cfg)
    assert (s.epochs, s.generator) == (7, "vae")
    cfg.write_text("epochz: 3\n")
    with pytest.raises(SettingsError, match="unknown key 'epochz'"):
        EngineSettings.from_yaml(cfg)


def test_invalid_values_name_the_field(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generator: diffusion\n")
    with pytest.raises(SettingsError, match="generator"):
        EngineSettings.from_yaml(cfg)
    cfg.write_text("threshold_start: 0.3\n")
    with pytest.raises(SettingsError, match="threshold_start"):
        EngineSettings.from_yaml(cfg)
    cfg.write_text("epochs: [1\n")
    with pytest.raises(SettingsError, match=r"c\.yaml:\d+:\d+"):
        EngineSettings.from_yaml(cfg)
    with pytest.raises(ValueError, match="threshold_end"):
        EngineSettings(threshold_start=0.6, threshold_end=0.8)


def test_model_dump_is_json_ready():
    import json

    assert json.loads(json.dumps(EngineSettings().model_dump()))["pseudo_labeler"] == "graph"
