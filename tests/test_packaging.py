"""The wheel: it must carry every file the code reads at run time, so that a non-editable install
(`pip install .`, a wheel from an index) works away from the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests._data import REPO

# Run in a Python that imports only the installed copy (cwd and PYTHONPATH point away from the repo).
_PROBE = r"""
import json, sys
from pathlib import Path
import sae
from sae.analysis.circuits.tasks import resolve_pairs
from sae.analysis.behaviour.report import DEFAULT_CORPUS, BehaviourConfig
tasks = {name: len(resolve_pairs(name)) for name in ("capitals", "agreement")}
first = resolve_pairs("capitals")[0]
corpus = Path(BehaviourConfig().corpus)
lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
print(json.dumps({"sae": sae.__file__, "corpus": str(corpus), "default": DEFAULT_CORPUS, "tasks": tasks,
                  "first": [first.clean, first.correct], "corpus_lines": len(lines)}))
"""


def test_wheel_ships_the_bundled_task_and_behaviour_files(tmp_path):
    # Build from a copy of the sources, so no stale build/ folder of the checkout leaks into the wheel.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("sae", "kernels"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), "-q"], cwd=src, env=env, check=True, capture_output=True)
    (wheel,) = wheels.glob("sae_toolkit-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {"sae/_bundled/tasks/capitals.jsonl", "sae/_bundled/tasks/agreement.jsonl",
              "sae/_bundled/wikitext-2-valid.txt", "sae/_bundled/README.md"}
    wanted |= {f"sae/dashboard/assets/{p.name}" for p in (REPO / "sae/dashboard/assets").iterdir()}
    wanted |= {f"sae_kernels/{p.name}" for p in (REPO / "kernels").glob("*.py")}
    assert wanted <= names, f"missing from the wheel: {sorted(wanted - names)}"

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel), "-q"],
                   env=env, check=True, capture_output=True)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    run = subprocess.run([sys.executable, "-c", _PROBE], cwd=elsewhere, env=env | {"PYTHONPATH": str(target)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(got["sae"]).is_relative_to(target), got["sae"]  # the installed copy, not the checkout
    assert Path(got["corpus"]).is_relative_to(target) and got["default"] == got["corpus"]
    assert got["tasks"]["capitals"] >= 100 and got["tasks"]["agreement"] >= 100
    assert got["first"][0].startswith("The capital of") and got["first"][1].strip()
    assert got["corpus_lines"] > 2000  # the whole WikiText-2 validation split
