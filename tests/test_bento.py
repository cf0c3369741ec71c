"""`bentoml build` from serving/bentofile.yaml, in a private BENTOML_HOME: the Bento builds
and holds every module of ours the service imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUR_PACKAGES = ("crmdata", "features", "training", "serving", "pipelines")


@pytest.mark.slow
def test_bentoml_build_packs_everything_the_service_imports(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    built = subprocess.run([str(BIN / "bentoml"), "build", "-f", "serving/bentofile.yaml", "."], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-3000:]
    assert 'Successfully built Bento(tag="crmscore:' in output
    assert "installing it with" not in output  # BentoML's uv is pinned, not fetched at build time

    (bento,) = (tmp_path / "bentoml" / "bentos" / "crmscore").glob("*/bento.yaml")
    info = yaml.safe_load(bento.read_text())
    assert info["service"] == "serving.service:CrmScoring"
    assert {e["name"]: e["value"] for e in info["envs"]}["CRMSCORE_PROFILE"] == "redis"
    src = bento.parent / "src"

    # Every module of our packages that importing the service loads must be in the Bento.
    program = (
        "import sys, serving.service\n"
        f"root, ours = {str(ROOT)!r} + '/', {OUR_PACKAGES!r}\n"
        "print('\\n'.join(sorted({m.__file__[len(root):] for name, m in list(sys.modules.items())"
        " if name.split('.')[0] in ours and getattr(m, '__file__', None)})))"
    )
    listing = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, check=True).stdout.split()
    assert "serving/service.py" in listing and any(f.startswith("crmdata/") for f in listing)
    missing = [f for f in listing if not (src / f).is_file()]
    assert not missing, f"the Bento lacks {missing}"
    assert not (src / "pipelines").exists() and not (src / "tests").exists()
