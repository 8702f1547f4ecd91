"""The distribution: one import name, ``optimem``, and nothing else in site-packages.

The wheel is built from a copy of the tree (no build/ or egg-info left in the repository), installed
with --no-deps into a fresh virtual environment that borrows this environment's dependencies through
a .pth file (offline and quick), and used from a folder that holds its own api/ and model/ packages:
``optimem.api`` must still be the installed one. Also: the import rules (tests/import_rules.py).
"""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from tests import import_rules
from tests.import_rules import ROOT, cycles, discover, layer_violations, upward

VERSION = next(node.value.value for node in ast.parse((ROOT / "_version.py").read_text()).body
               if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__")
HEAVY = ("torch", "transformers", "safetensors")
DATA = ("renderer/fonts", "renderer/templates", "api/templates", "memory/lab/data", "memory/data")   # shipped data folders


def run(cmd: list, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _not_built(folder: str, names: list[str]) -> set[str]:
    """What the copy for the build leaves out: the environment, caches, outputs, docs and benchmarks."""
    skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skip |= {".git", ".venv", "venv", "build", "dist", ".pytest_cache", "docs", "bench"} & set(names)
    return skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_not_built)
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp / "dist", src])
    (built,) = (tmp / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed (--no-deps), its dependencies borrowed from this one."""
    tmp = tmp_path_factory.mktemp("installed")
    env = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # Plain path lines: this environment's .pth files (the editable optimem among them) are not run.
    borrowed = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "borrowed-deps.pth").write_text("".join(f"{p}\n" for p in borrowed))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    work = tmp / "work"   # where the user runs: local api/ and model/ packages that must not be picked up
    for name in ("api", "model"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f"raise ImportError('the local {name}/ folder was imported')\n")
    return {"python": python, "bin": env / "bin", "site": site, "work": work}


def test_wheel_holds_only_the_optimem_package_and_all_of_it(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"optimem", f"optimem-{VERSION}.dist-info"}
    shipped = set(names)
    missing = [f"optimem/{m.path.relative_to(ROOT).as_posix()}" for m in discover().values()]
    missing = [p for p in missing if p not in shipped]
    assert not missing, f"modules left out of the wheel (a subpackage missing from pyproject's packages?): {missing}"
    data = [f"optimem/{p.relative_to(ROOT).as_posix()}" for folder in DATA if (ROOT / folder).is_dir()
            for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert {"optimem/renderer/templates/transcript.j2", "optimem/api/templates/inspector.html"} <= set(data)
    assert any(p.startswith("optimem/renderer/fonts/") and p.endswith(".ttf") for p in data)
    assert {"optimem/memory/data/word_vectors.npz", "optimem/memory/data/turn_meaning.npz"} <= set(data)
    assert not [p for p in data if p not in shipped], "data files left out of the wheel"


def test_wheel_metadata_has_the_version_and_no_gpu_stack_by_default(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"optimem-{VERSION}.dist-info/METADATA").decode()
    assert f"\nVersion: {VERSION}\n" in meta
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    default = [r for r in requires if "extra ==" not in r]
    assert not [r for r in default if r.split(">")[0].split("=")[0].split("[")[0].strip() in HEAVY], default
    for heavy in HEAVY:
        assert any(r.startswith(heavy) and 'extra == "deepseek"' in r for r in requires), heavy
    assert any(r.startswith("optimem[deepseek]") and 'extra == "gpu"' in r for r in requires)


def test_redis_replies_are_parsed_by_hiredis(wheel):
    """hiredis is a default dependency and redis-py picks it up: recall's index search reads postings
    in bulk, and the pure-Python parser doubled its p95 at 100k turns (bench/RESULTS.md)."""
    from redis.utils import HIREDIS_AVAILABLE

    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"optimem-{VERSION}.dist-info/METADATA").decode()
    assert any(line.startswith("Requires-Dist: hiredis") and "extra ==" not in line for line in meta.splitlines())
    assert HIREDIS_AVAILABLE


def test_installed_dist_has_one_top_level_name(installed):
    (dist,) = installed["site"].glob("optimem-*.dist-info")
    assert dist.name == f"optimem-{VERSION}.dist-info"
    assert (dist / "top_level.txt").read_text().split() == ["optimem"]
    tops = {line.split(",")[0].split("/")[0] for line in (dist / "RECORD").read_text().splitlines() if line}
    assert tops - {"..", dist.name} == {"optimem"}   # ".." is the console script in bin/


def test_installed_package_imports_from_a_folder_with_its_own_api(installed):
    probe = textwrap.dedent("""
        import json, sys
        import optimem
        import optimem.api.app, optimem.memory.service, optimem.renderer
        from optimem.renderer import faces, transcript
        print(json.dumps({"version": optimem.__version__,
                          "files": [m.__file__ for m in (optimem, optimem.api.app, optimem.memory.service,
                                                         optimem.renderer)],
                          "local": [m for m in ("api", "model", "memory", "renderer") if m in sys.modules],
                          "heavy": [m for m in %r if m in sys.modules],
                          "fonts": faces.FONTS.is_dir(), "templates": (transcript.Path(transcript.__file__).parent
                                                                       / "templates" / "transcript.j2").is_file()}))
    """ % (HEAVY,))
    assert run([installed["python"], "-c", "import optimem; print(optimem.__version__)"],
               cwd=installed["work"]).stdout.strip() == VERSION
    out = json.loads(run([installed["python"], "-c", probe], cwd=installed["work"]).stdout.strip().splitlines()[-1])
    package = installed["site"] / "optimem"
    assert out["version"] == VERSION
    for f in out["files"]:
        assert Path(f).is_relative_to(package), f"{f} is not the installed package"
    assert out["local"] == [] and out["heavy"] == [] and out["fonts"] and out["templates"]


def test_console_script_runs(installed):
    r = run([installed["bin"] / "optimem", "--help"], cwd=installed["work"])
    assert "usage: optimem" in r.stdout and "serve" in r.stdout


def test_editable_install_points_at_the_repository(tmp_path):
    r = run([sys.executable, "-c", "import optimem, optimem.api; print(optimem.__file__); print(optimem.api.__file__)"],
            cwd=tmp_path)
    assert [Path(p) for p in r.stdout.split()] == [ROOT / "__init__.py", ROOT / "api" / "__init__.py"]


# --- import rules ---------------------------------------------------------------------------------

def test_import_rules_hold():
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "import_rules.py")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "import rules: ok" in r.stdout


def _tree(root: Path, files: dict[str, str]) -> dict:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return discover(root)


def test_import_rules_find_layer_breaks_and_cycles(tmp_path, monkeypatch):
    monkeypatch.setattr(import_rules, "ROOT", tmp_path)
    modules = _tree(tmp_path, {
        "__init__.py": "",
        "api/__init__.py": "",
        "api/app.py": "from optimem.memory.lab import run\n",
        "memory/__init__.py": "",
        "memory/lab/__init__.py": "from .run import main\n",                 # a subpackage, relative import
        "memory/lab/run.py": "from optimem.memory import store\n\ndef main():\n    pass\n",
        "memory/store.py": "from optimem.memory.lab import run\n",           # cycle: store -> lab.run -> store
        "memory/typed.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from optimem.api.app import App
            """,
        "model/__init__.py": "",
        "model/lazy.py": "def f():\n    from optimem.memory import store\n",   # lazy, but still a layer break
        "model/fine.py": "import optimem.model.lazy\n",
        "tests/__init__.py": "",
        "tests/test_x.py": "from optimem.api import app\n",
    })
    assert "optimem.memory.lab.run" in modules and not any(".tests" in m for m in modules)
    assert [i.target for i in modules["optimem.memory.lab"].imports] == ["optimem.memory.lab.run"]
    layers = layer_violations(modules)
    assert len(layers) == 2
    assert any("optimem.memory.typed imports optimem.api.app" in v for v in layers)
    assert any("optimem.model.lazy imports optimem.memory.store" in v for v in layers)
    assert cycles(modules) == [["optimem.memory.lab.run", "optimem.memory.store", "optimem.memory.lab.run"]]


def test_import_rules_count_lazy_imports_in_cycles_and_leave_type_only_ones_out(tmp_path):
    """An import inside a function closes a circle as much as one at the top (issue 19: api/proxy.py
    imported api/app.py lazily while app imported proxy); a lazy import pointing down is fine."""
    modules = _tree(tmp_path, {
        "__init__.py": "",
        "api/__init__.py": "",
        "api/app.py": "from optimem.api import proxy\n",
        "api/proxy.py": "def f():\n    from optimem.api.app import run_recall\n",   # lazy, but back up: a circle
        "api/cli.py": "def serve():\n    from optimem.api.app import create\n",     # lazy and down: fine
        "memory/__init__.py": "",
        "memory/a.py": "from optimem.memory import b\n",
        "memory/b.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from optimem.memory.a import A
            else:
                import json
            """,
    })
    assert [i.typed for i in modules["optimem.memory.b"].imports] == [True]
    assert not modules["optimem.api.proxy"].imports[0].loads
    assert cycles(modules) == [["optimem.api.app", "optimem.api.proxy", "optimem.api.app"]]


def test_import_rules_find_imports_that_run_back_up(tmp_path):
    modules = _tree(tmp_path, {
        "__init__.py": "__version__ = '1'\n",
        "_version.py": "__version__ = '1'\n",
        "api/__init__.py": "",
        "api/app.py": "from optimem import __version__\n",                 # the root package, from below
        "api/ok.py": "from optimem._version import __version__\nfrom optimem.api import app\n",
        "api/lazy.py": "def f():\n    import optimem.api\n",              # its own package, lazily: still up
    })
    found = upward(modules)
    assert len(found) == 2
    assert any("optimem.api.app imports optimem," in v for v in found)
    assert any("optimem.api.lazy imports optimem.api," in v for v in found)
