"""A crafted archive cannot make ``restore`` write outside its targets: secret files stay in
the secrets folder, object keys are plain, and only the appliance's own tables are loaded."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from inferbox.registry.backup import FORMAT, restore

pytestmark = pytest.mark.integration


def _archive(path, manifest: dict, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    ("manifest", "members", "message"),
    [
        ({"secrets": ["../escaped"]}, {"secrets/../escaped": b"x"}, "outside its folder"),
        ({"secrets": ["/tmp/escaped"]}, {"secrets//tmp/escaped": b"x"}, "outside its folder"),
        ({"objects": ["../models/x"]}, {"objects/../models/x": b"x"}, "not plain"),
        ({"tables": {"pg_authid": 1}}, {"db/pg_authid.csv": b"a\n"}, "lacks"),
    ],
)
def test_a_crafted_manifest_is_refused_before_anything_is_written(
    tmp_path, make_database, objects, manifest, members, message
):
    path = tmp_path / "crafted.tar.gz"
    _archive(path, {"format": FORMAT, "tables": {}, "objects": [], **manifest}, members)
    secrets_dir = tmp_path / "deep" / "secrets"
    with pytest.raises(ValueError, match=message):
        restore(make_database(), objects, path, secrets_dir)
    assert not (tmp_path / "deep" / "escaped").exists()
    assert not secrets_dir.exists()
