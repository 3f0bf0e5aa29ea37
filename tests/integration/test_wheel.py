"""The built wheel (what the Docker image installs) holds every module of app/, agents/ and
tables/ and the JSON Schema: packages are found by pattern, so a new sub-package cannot be left
out while the editable install of the tests still works."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.integration.conftest import ROOT


def test_the_wheel_holds_every_module_and_the_schema(tmp_path: Path) -> None:
    uv = Path(sys.executable).with_name("uv")
    # sdist first, then the wheel from it (in a temporary folder): the wheel holds only what the
    # sdist shipped, as for a release.
    subprocess.run(
        [str(uv), "build", "-q", "-o", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("kubevents-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        str(path.relative_to(ROOT))
        for package in ("app", "agents", "tables")
        for path in (ROOT / package).rglob("*")
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts
    }
    assert "app/schemas/k8s-event.v1.json" in wanted and "app/testing/faults.py" in wanted
    assert not wanted - inside, f"left out of the wheel: {sorted(wanted - inside)}"
