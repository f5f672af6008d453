from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path

import pytest

from loacl.settings import (
    Settings,
    SettingsError,
    env_name,
    jwt_secret,
    load_settings,
    settings_table,
)

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_without_file_or_env(chdir_tmp: Path) -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.database_path == Path("data/loacl.db")


def test_task_list_names_override() -> None:
    env = {
        "DATABASE_URL": "sqlite:////tmp/x.db",
        "JWT_SECRET_KEY": "k" * 40,
        "JWT_ALGORITHM": "HS512",
        "ACCESS_TOKEN_EXPIRE_MINUTES": "5",
        "OPENAI_API_KEY": "sk-test",
        "MAX_UPLOAD_SIZE": "1024",
        "ALLOWED_FILE_TYPES": '["pdf","txt"]',
        "LOACL_PORT": "9000",
        "LOACL_AUTO_MIGRATE": "false",
    }
    settings = load_settings(environ=env)
    assert settings.database_path == Path("/tmp/x.db")
    assert settings.jwt_algorithm == "HS512"
    assert settings.access_token_expire_minutes == 5
    assert settings.openai_api_key == "sk-test"
    assert settings.max_upload_size == 1024
    assert settings.allowed_file_types == ["pdf", "txt"]
    assert settings.port == 9000
    assert settings.auto_migrate is False


def test_file_then_env(tmp_path: Path) -> None:
    config = tmp_path / "other.toml"
    config.write_text('port = 7000\nlog_level = "debug"\nallowed_file_types = ["txt"]\n')
    settings = load_settings(config, environ={"LOACL_PORT": "7001"})
    assert settings.port == 7001  # the environment wins
    assert settings.log_level == "debug"
    assert settings.allowed_file_types == ["txt"]
    assert load_settings(environ={"LOACL_CONFIG": str(config)}).port == 7000


def test_a_postgresql_log_gives_each_instance_a_copy_of_its_own() -> None:
    settings = load_settings(environ={
        "DATABASE_URL": "postgresql://loacl@db.internal/loacl", "LOACL_DATA_DIR": "/srv/one",
    })
    assert settings.postgres_url == "postgresql://loacl@db.internal/loacl"
    assert settings.database_path == Path("/srv/one/instance.db")
    moved = load_settings(environ={"DATABASE_URL": "postgresql://x/y",
                                   "LOACL_INSTANCE_DATABASE": "/var/lib/loacl/copy.db"})
    assert moved.database_path == Path("/var/lib/loacl/copy.db")
    assert load_settings(environ={}).postgres_url is None


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"MAX_UPLOAD_SIZE": "five"}, ["MAX_UPLOAD_SIZE", "integer"]),
        ({"LOACL_PORT": "70000"}, ["LOACL_PORT", "65535"]),
        ({"JWT_ALGORITHM": "none"}, ["JWT_ALGORITHM", "HS256"]),
        ({"ALLOWED_FILE_TYPES": "pdf,exe"}, ["ALLOWED_FILE_TYPES", "exe"]),
        ({"ALLOWED_FILE_TYPES": "[pdf"}, ["ALLOWED_FILE_TYPES", "JSON list"]),
        ({"DATABASE_URL": "mysql://x"}, ["DATABASE_URL"]),
        ({"JWT_SECRET_KEY": "short"}, ["JWT_SECRET_KEY", "32"]),
        ({"LOACL_AUTO_MIGRATE": "maybe"}, ["LOACL_AUTO_MIGRATE"]),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=env)
    for name in names:
        assert name in str(caught.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(broken, environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="unknown key 'prot'"):
        load_settings(unknown, environ={})


def test_empty_optional_env_means_unset() -> None:
    assert load_settings(environ={"OPENAI_API_KEY": ""}).openai_api_key is None


def test_jwt_secret_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = jwt_secret(settings)
    assert len(first) >= 32
    path = tmp_path / "data" / "jwt_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert jwt_secret(settings) == first
    assert jwt_secret(Settings(data_dir=tmp_path / "other")) != first
    configured = Settings(data_dir=tmp_path / "data", jwt_secret_key="c" * 32)
    assert jwt_secret(configured) == "c" * 32


def test_loacl_toml_holds_every_default() -> None:
    text = (ROOT / "loacl.toml").read_text()
    values = tomllib.loads(text)
    defaults = Settings()
    for key, field in Settings.model_fields.items():
        if field.default is None:
            assert re.search(rf"^# {key} = ", text, re.M), f"{key} missing from loacl.toml"
        else:
            assert key in values, f"{key} missing from loacl.toml"
            assert Settings.model_validate({key: values[key]}) == defaults, key


def test_readme_configuration_table_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "run: python scripts/update_readme.py"
    for key in Settings.model_fields:
        assert f"`{env_name(key)}`" in readme
