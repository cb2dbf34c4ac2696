"""docs/settings.md is what the settings classes say, and every setting says what it does."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inferbox import settings_doc


def test_the_settings_page_matches_the_code():
    assert settings_doc.PAGE.read_text() == settings_doc.render(), "run scripts/settings-doc"


@pytest.mark.parametrize("cls", [cls for _, cls, _ in settings_doc.SECTIONS])
def test_every_setting_has_a_docstring(cls):
    rows = settings_doc.rows(cls)  # raises MissingDocstring, naming the fields
    assert len(rows) == len(cls.model_fields)
    assert all(row.doc.strip() for _, row in rows)


class _Undocumented(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="X_")

    documented: int = 1
    """Has one."""

    bare: int = 2


def test_a_setting_without_a_docstring_is_refused_by_name():
    with pytest.raises(settings_doc.MissingDocstring, match=r"_Undocumented\.bare"):
        settings_doc.rows(_Undocumented)


class _Redis(BaseModel):
    url: str = "redis://x"
    """Where Redis is."""


class _Own(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OWN_")

    size_bytes: int = Field(default=1 << 30, gt=0)
    """How big."""


class _Nested(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="N_", env_nested_delimiter="__")

    # --- plain ---
    workers: int = Field(default=2, ge=1, le=16)
    """Processes; with ``timeout_s`` it bounds the load."""

    timeout_s: float = 604800.0
    """Seconds."""

    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    """Providers."""

    # --- grouped ---
    redis: _Redis = Field(default_factory=_Redis)
    own: _Own = Field(default_factory=_Own)


def test_fields_render_with_their_variable_default_bounds_and_group():
    rows = {row.env: (banner, row) for banner, row in settings_doc.rows(_Nested)}
    assert set(rows) == {
        "N_WORKERS",
        "N_TIMEOUT_S",
        "N_PROVIDERS",
        "N_REDIS__URL",
        "OWN_SIZE_BYTES",
    }
    banner, workers = rows["N_WORKERS"]
    assert (banner, workers.default, workers.bounds) == ("plain", "`2`", "≥ 1, ≤ 16")
    assert "``N_TIMEOUT_S``" in workers.doc  # a sibling named by its variable
    assert rows["N_TIMEOUT_S"][1].default == "`604800` (7 days)"
    assert rows["N_PROVIDERS"][1].default == '`["CPUExecutionProvider"]`'
    assert rows["N_REDIS__URL"][0] == "grouped"
    assert rows["OWN_SIZE_BYTES"][1].default == "`1073741824` (1 GiB)"
    assert rows["OWN_SIZE_BYTES"][1].bounds == "> 0"


def test_the_check_mode_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    page = tmp_path / "settings.md"
    monkeypatch.setattr(settings_doc, "PAGE", page)
    monkeypatch.setattr(settings_doc, "ROOT", tmp_path)
    assert settings_doc.main([]) == 0
    assert settings_doc.main(["--check"]) == 0
    page.write_text(page.read_text().replace("INFERBOX_REDIS_URL", "INFERBOX_REDIS"))
    assert settings_doc.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
