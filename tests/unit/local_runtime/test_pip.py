"""%pip cells: variable expansion, wheel globs and real installs of a tiny wheel."""
import subprocess
import sys
import textwrap

import pytest

from mlops.errors import NotebookError
from mlops.local.notebook import run_notebook
from mlops.local.session import LocalSession

from .notebook_files import assert_cell_fails, write_notebook

PACKAGE = "mlops_localtest_pkg"
INSTALL_AND_READ = (f"# MAGIC %pip install $wheel_path/{PACKAGE}-*.whl",
                    f"import {PACKAGE}\ndbutils.notebook.exit({PACKAGE}.VALUE)")


def _build_wheel(root, version, value):
    project = root / f"project-{version}"
    (project / PACKAGE).mkdir(parents=True)
    (project / PACKAGE / "__init__.py").write_text(f"VALUE = {value!r}\n")
    (project / "setup.py").write_text(textwrap.dedent(f"""
        from setuptools import setup
        setup(name="{PACKAGE}", version="{version}", packages=["{PACKAGE}"])
    """))
    wheel_dir = root / f"wheels-{version}"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheel_dir), str(project)], check=True, cwd=root)
    return wheel_dir


@pytest.fixture(scope="module")
def wheel_dirs(tmp_path_factory):
    """Two versions of a throwaway package; uninstalled from the shared venv afterwards."""
    root = tmp_path_factory.mktemp("tiny_wheels")
    yield _build_wheel(root, "0.1", "first build"), _build_wheel(root, "0.2", "second build")
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", PACKAGE], check=True)
    for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
        del sys.modules[name]


@pytest.fixture
def session(spark, mlops_home):
    return LocalSession(spark=spark)


def test_pip_installs_the_wheel_and_reloads_its_modules(session, wheel_dirs, tmp_path, capsys):
    notebook = write_notebook(tmp_path / "install.py", *INSTALL_AND_READ)
    first, second = wheel_dirs

    assert run_notebook(notebook, {"wheel_path": str(first)}, session).exit_value == "first build"
    assert run_notebook(notebook, {"wheel_path": str(second)}, session).exit_value == "second build"
    assert capsys.readouterr().out == ""          # pip's output is only shown on failure


def test_several_wheels_of_one_distribution_ask_for_a_version(session, wheel_dirs, tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for folder in wheel_dirs:
        for wheel in folder.glob("*.whl"):
            (both / wheel.name).write_bytes(wheel.read_bytes())
    notebook = write_notebook(tmp_path / "ambiguous.py", *INSTALL_AND_READ)
    wheels = f"{PACKAGE}-0.1-py3-none-any.whl, {PACKAGE}-0.2-py3-none-any.whl"
    with pytest.raises(NotebookError, match=rf"matches 2 wheels of {PACKAGE}: {wheels}; "
                                            r"set the wheel_version parameter"):
        run_notebook(notebook, {"wheel_path": str(both)}, session)


def test_missing_wheel_tells_how_to_build_it(session, tmp_path):
    notebook = write_notebook(tmp_path / "missing.py", "# MAGIC %pip install $wheel_path/taxi_fares-*.whl")
    empty = tmp_path / "dist"
    empty.mkdir()
    with pytest.raises(NotebookError) as caught:
        run_notebook(notebook, {"wheel_path": str(empty)}, session)
    assert str(caught.value).endswith(
        f"NotebookError: no wheel matches '{empty}/taxi_fares-*.whl' (wheel_path='{empty}'): "
        "build the wheels with `make wheels` or set the wheel_path parameter")


def test_notebook_variables_win_over_widgets(session, tmp_path):
    notebook = write_notebook(tmp_path / "variables.py", 'wheel_path = "/from/namespace"',
                              "# MAGIC %pip install ${wheel_path}/exact-1.0-py3-none-any.whl")
    with pytest.raises(NotebookError, match=r"no wheel matches '/from/namespace/exact-1.0-py3-none-any.whl' "
                                            r"\(wheel_path='/from/namespace'\)"):
        run_notebook(notebook, {"wheel_path": "/from/widget"}, session)


def test_unknown_variable_is_named(session, tmp_path):
    assert_cell_fails(session, tmp_path / "unknown.py", "# MAGIC %pip install $nowhere/x.whl",
                      r"failed in cell 1 \(%pip install \$nowhere/x.whl\): NotebookError: %pip uses "
                      r"\$nowhere, which is neither a notebook variable nor a widget")


def test_failing_pip_shows_its_output(session, tmp_path):
    caught = assert_cell_fails(session, tmp_path / "offline.py",
                               "# MAGIC %pip install --no-index mlops-localtest-absent-package",
                               r"pip install --no-index mlops-localtest-absent-package "
                               r"failed with exit code 1:")
    assert "mlops-localtest-absent-package" in str(caught.value.__cause__)
