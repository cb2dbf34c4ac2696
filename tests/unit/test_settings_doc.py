"""docs/settings.md is what the settings classes say, and every setting says what it does."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inferbox import settings_doc
from inferbox.config import Settings, SettingsGroup


def test_the_settings_page_matches_the_code():
    assert settings_doc.PAGE.read_text() == settings_doc.render(), "run scripts/settings-doc"


@pytest.mark.parametrize("cls", [cls for _, cls, _ in settings_doc.SECTIONS])
def test_every_setting_has_a_docstring(cls):
    rows = settings_doc.rows(cls)  # raises MissingDocstring, naming the fields
    assert len(rows) == len(cls.model_fields)
    assert all(row.doc.strip() for row in rows)


def test_every_setting_belongs_to_one_group_with_a_heading():
    concerns = settings_doc.concerns(Settings)  # raises MissingDocstring, naming the group
    fields = [name for concern in concerns for name in concern.fields]
    assert sorted(fields) == sorted(Settings.model_fields)
    assert all(concern.title and concern.intro for concern in concerns)


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

    workers: int = Field(default=2, ge=1, le=16)
    """Processes; with ``timeout_s`` it bounds the load."""

    timeout_s: float = 604800.0
    """Seconds."""

    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    """Providers."""

    redis: _Redis = Field(default_factory=_Redis)
    own: _Own = Field(default_factory=_Own)


def test_fields_render_with_their_variable_default_bounds_and_docstring():
    rows = {row.env: row for row in settings_doc.rows(_Nested)}
    assert set(rows) == {
        "N_WORKERS",
        "N_TIMEOUT_S",
        "N_PROVIDERS",
        "N_REDIS__URL",
        "OWN_SIZE_BYTES",
    }
    workers = rows["N_WORKERS"]
    assert (workers.default, workers.bounds) == ("`2`", "≥ 1, ≤ 16")
    assert "``N_TIMEOUT_S``" in workers.doc  # a sibling named by its variable
    assert rows["N_TIMEOUT_S"].default == "`604800` (7 days)"
    assert rows["N_PROVIDERS"].default == '`["CPUExecutionProvider"]`'
    assert rows["N_REDIS__URL"].doc == "Where Redis is."
    assert rows["OWN_SIZE_BYTES"].default == "`1073741824` (1 GiB)"
    assert rows["OWN_SIZE_BYTES"].bounds == "> 0"


class _Servers(SettingsGroup):
    """Servers.

    Where the ``api_workers`` processes listen."""

    api_workers: int = 2
    """Processes; each queues at most ``max_queued``."""


class _Limits(SettingsGroup):
    """Limits of a call."""

    max_queued: int = 8
    """Queued calls, per one of ``api_workers``."""


class _Composed(_Servers, _Limits):
    """Both groups."""


class _Bare(SettingsGroup):
    size: int = 1
    """Has a docstring of its own."""


class _WithBare(_Servers, _Bare):
    """One group has no docstring."""


def test_a_composed_class_gets_one_section_per_group_in_the_order_of_its_bases():
    lines = settings_doc.section("Every process", _Composed, "Read by all.")
    page = "\n".join(lines)
    assert [line for line in lines if line.startswith("#")] == [
        "## Every process",
        "### Servers",
        "### Limits of a call",
    ]
    # the heading, the rest of the docstring (siblings named by their variable), the table
    assert "### Servers\n\nWhere the `INFERBOX_API_WORKERS` processes listen.\n\n| Variable" in page
    servers, limits = page.split("### Limits of a call")
    assert (
        "| `INFERBOX_API_WORKERS` | `2` |  | Processes; each queues at most `INFERBOX_MAX_QUEUED`. |"
        in servers
    )
    assert "INFERBOX_MAX_QUEUED` | `8`" in limits
    assert "INFERBOX_API_WORKERS` | `2`" not in limits


def test_a_group_without_a_docstring_is_refused_by_name():
    with pytest.raises(settings_doc.MissingDocstring, match=r"_Bare"):
        settings_doc.concerns(_WithBare)


def test_the_check_mode_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    page = tmp_path / "settings.md"
    monkeypatch.setattr(settings_doc, "PAGE", page)
    monkeypatch.setattr(settings_doc, "ROOT", tmp_path)
    assert settings_doc.main([]) == 0
    assert settings_doc.main(["--check"]) == 0
    page.write_text(page.read_text().replace("INFERBOX_REDIS_URL", "INFERBOX_REDIS"))
    assert settings_doc.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
