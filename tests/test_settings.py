"""Settings: precedence, one clear error per bad setting, and docs that list them all."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from service_gateway.errors import SettingsError
from service_gateway.settings import SETTINGS, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_then_file_then_environment_then_overrides(tmp_path):
    config = tmp_path / "settings.toml"
    config.write_text('progress_interval_s = 2.0\nlog_level = "DEBUG"\nfile_roots = ["/a", "/b"]\n'
                      '[canarie]\ninstitution = "CRIM"\n')
    env = {"SG_CONFIG": str(config), "SG_LOG_LEVEL": "WARNING"}
    settings = load_settings({"retry_after_s": 9}, environ=env)
    assert settings.progress_interval_s == 2.0          # file over default
    assert settings.log_level == "WARNING"              # environment over file
    assert settings.file_roots == ["/a", "/b"]
    assert settings.retry_after_s == 9                  # overrides over everything
    assert settings.extra["canarie"] == {"institution": "CRIM"}
    assert settings.embedded and settings.broker.startswith("sqla+sqlite:///")


@pytest.mark.parametrize(("env", "message"), [
    ({"SG_PROGRESS_INTERVAL_S": "fast"}, "SG_PROGRESS_INTERVAL_S: expected a number, got 'fast'"),
    ({"SG_ALLOW_PRIVATE_URLS": "maybe"}, "SG_ALLOW_PRIVATE_URLS: expected true or false"),
    ({"SG_LOG_FORMAT": "xml"}, "SG_LOG_FORMAT: expected json or text"),
    ({"SG_BROKER_URL": "amqp://h//"}, "SG_JWT_SECRET: required when SG_BROKER_URL is set"),
    ({"SG_JWT_SECRET": "short"}, "SG_JWT_SECRET: too short"),
    ({"SG_CONFIG": "/nonexistent/sg.toml"}, "settings file /nonexistent/sg.toml does not exist"),
    ({"SG_OUTPUT_URL": "s3://bucket"}, "SG_OUTPUT_URL: expected a file:// URL"),
])
def test_a_bad_setting_is_named_in_one_line(env, message):
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=env)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_and_malformed_file_keys_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text("brokr_url = 'x'\n")
    (tmp_path / "b.toml").write_text("broker_url = \n")
    with pytest.raises(SettingsError, match="unknown setting 'brokr_url'"):
        load_settings(environ={"SG_CONFIG": str(tmp_path / "a.toml")})
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(environ={"SG_CONFIG": str(tmp_path / "b.toml")})


def test_entry_points_stop_with_one_clear_line(tmp_path):
    env = {"SG_DATA_DIR": str(tmp_path), "SG_PROGRESS_INTERVAL_S": "fast", "PATH": ""}
    sg = subprocess.run([sys.executable, "-m", "service_gateway.cli", "token"], env=env,
                        capture_output=True, text=True)
    assert sg.returncode == 2
    assert sg.stderr.strip() == "sg: configuration error: SG_PROGRESS_INTERVAL_S: expected a number, got 'fast'"
    gateway = subprocess.run([sys.executable, "-c", "import service_gateway as s; s.create_app()"], env=env,
                             capture_output=True, text=True)
    assert gateway.returncode == 4
    assert gateway.stderr.strip().splitlines() == [
        "service-gateway: configuration error: SG_PROGRESS_INTERVAL_S: expected a number, got 'fast'"]


def test_configuration_doc_lists_every_setting_with_its_default():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\|\s*`(SG_[A-Z_]+)`.*$", doc, re.M)}
    for setting in SETTINGS:
        assert setting.env in rows, f"{setting.env} is not in docs/configuration.md"
        default = setting.default
        text = (",".join(default) if isinstance(default, list) else
                str(default).lower() if isinstance(default, bool) else str(default))
        assert f"`{text}`" in rows[setting.env] or (text == "" and '`""`' in rows[setting.env]), setting.env


def test_shipped_settings_files_load(tmp_path):
    env = {"SG_JWT_SECRET": "x" * 40}
    assert load_settings(environ={**env, "SG_CONFIG": str(ROOT / "config" / "settings.toml")}).embedded
    production = load_settings(environ={**env, "SG_CONFIG": str(ROOT / "config" / "production.example.toml")})
    assert production.broker.startswith("amqp://") and production.database.startswith("postgresql://")
