"""The README's first command runs the main job end to end: sample workload -> dump --kill ->
show -> restore, and the restored workload carries on counting."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.kernel
def test_demo_migrates_the_sample_workload(root, tmp_path):
    img = tmp_path / "demo.img"
    workdirs = tmp_path / "tmp"
    workdirs.mkdir()
    p = subprocess.run([sys.executable, "-m", "ckptrace", "demo", "-o", str(img)], capture_output=True,
                       text=True, cwd=REPO, timeout=120, env={**os.environ, "TMPDIR": str(workdirs)})
    assert os.listdir(workdirs) == []  # its work directory went (with -o it used to stay)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 tasks in 2 processes" in p.stdout
    assert "unshare:" not in p.stderr, p.stderr  # its complaint when the dump kills its child
    m = re.search(r"last line when dumped: 'count (\d+)'; a second after restore: 'count (\d+)'", p.stdout)
    assert m, p.stdout
    assert int(m.group(2)) > int(m.group(1))  # the restored worker thread's counter went on
    assert os.stat(img).st_mode & 0o777 == 0o600
    restored = re.search(r'"init_pid": (\d+)', p.stdout)
    assert restored and not os.path.exists(f"/proc/{restored.group(1)}/status"), "demo left the workload running"
