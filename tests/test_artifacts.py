"""Provenance helpers: fingerprints are stable and content-sensitive; secrets never reach saved configs."""

from __future__ import annotations

from omegaconf import OmegaConf

from exp3rt.artifacts import fingerprint, path_digest, save_config, scrub_secrets


def test_secret_values_are_replaced_wherever_they_sit(tmp_path):
    cfg = OmegaConf.create(
        {
            "teacher": {
                "api_key": "sk-live-123",
                "api_key_env": "OPENAI_API_KEY",
                "headers": {"Authorization": "Bearer sk-live-123"},
            },
            "logger": {"wandb_token": "abc", "project": "exp3rt"},
            "list": [{"password": "pw"}],
        }
    )
    clean = scrub_secrets(OmegaConf.to_container(cfg))
    assert clean["teacher"]["api_key"] == "***" and clean["teacher"]["headers"]["Authorization"] == "***"
    assert clean["logger"]["wandb_token"] == "***" and clean["list"][0]["password"] == "***"
    assert clean["logger"]["project"] == "exp3rt"
    assert clean["teacher"]["api_key_env"] == "OPENAI_API_KEY"  # the variable's name is kept
    counts = scrub_secrets({"max_tokens": 200, "tokens_per_minute": 1000, "hf_token": "hf_x"})
    assert counts == {
        "max_tokens": 200,
        "tokens_per_minute": 1000,
        "hf_token": "***",
    }  # counts are not secrets
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "sk-live-123" not in text and "pw" not in text.replace("password", "")


def test_fingerprints_follow_content(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x")
    d1 = path_digest(tmp_path)
    a.write_text("y")
    assert path_digest(tmp_path) != d1
    assert fingerprint({"k": 1}, "s") == fingerprint({"k": 1}, "s") != fingerprint({"k": 2}, "s")
