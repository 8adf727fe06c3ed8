"""The set-up files themselves: the Vagrantfile validates; .ci/run enforces kernel tests and calls
the README's test command."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vagrantfile_validates():
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant not installed (.ci/run installs it)")
    # --ignore-provider: CI has no hypervisor; without it vagrant refuses before reading the file
    # ("No usable default provider"). Settings and syntax are still checked (a misspelt key fails).
    p = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ci_runs_the_readme_test_command_with_kernel_tests_enforced():
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci = f.read()
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert "CKPTRACE_REQUIRE_KERNEL=1" in ci
    assert "exec scripts/test.sh" in ci and "`scripts/test.sh`, as root, runs everything" in readme
    assert "\n    scripts/demo.sh " in readme and "\n    scripts/test.sh " in readme  # (the quick start)


def test_kernel_tests_cannot_skip_in_ci(tmp_path):
    """Run a tiny suite with a skipping kernel test under CKPTRACE_REQUIRE_KERNEL=1: it must fail."""
    (tmp_path / "conftest.py").write_text(open(os.path.join(REPO, "tests", "conftest.py")).read())
    (tmp_path / "test_x.py").write_text(
        "import pytest\n@pytest.mark.kernel\ndef test_k():\n    pytest.skip('no kernel')\n"
        "def test_plain():\n    pytest.skip('fine')\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    kernel: k\n")
    env = dict(os.environ, CKPTRACE_REQUIRE_KERNEL="1")
    p = subprocess.run([os.sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and "1 failed" in p.stdout and "1 skipped" in p.stdout, p.stdout
    env["CKPTRACE_REQUIRE_KERNEL"] = "0"
    p = subprocess.run([os.sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and "2 skipped" in p.stdout, p.stdout
