"""The CLI's start-up contract and `ckptrace doctor` cross-checked against our own probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("bcc", "rich", "textual", "pyroute2")


def test_help_imports_no_heavy_module():
    """`ckptrace --help` must stay fast: none of bcc/rich/textual/pyroute2 may load for it."""
    code = ("import sys, runpy; sys.argv=['ckptrace','--help']\n"
            "try:\n    runpy.run_module('ckptrace', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"
    assert "dump" in p.stdout and "restore" in p.stdout and "watch" in p.stdout


def test_every_command_module_exists():
    import importlib

    from ckptrace.cli import COMMANDS

    for name, (module, func, _) in COMMANDS.items():
        assert callable(getattr(importlib.import_module(module), func)), name


@pytest.mark.parametrize("arg", ["abc", "pid:[x]", "0", "-3"])
def test_bad_pidns_argument_is_a_usage_error(arg):
    p = subprocess.run([sys.executable, "-m", "ckptrace", "dump", "--pidns", arg], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2 and "pid namespace" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1 and "--help" in p.stderr, p.stderr  # no usage block


@pytest.mark.parametrize("arg", ["abc", "0", "-1", "inf", "nan"])
def test_watch_duration_must_be_positive_seconds(arg):
    # checked before the root check and before any BPF is loaded
    p = subprocess.run([sys.executable, "-m", "ckptrace", "watch", "--duration", arg], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2 and "seconds" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1, p.stderr


def test_watch_duration_takes_fractions():
    from ckptrace.cli import build_parser

    assert build_parser().parse_args(["watch", "--duration", "0.5"]).duration == 0.5


def test_pidns_argument_accepts_both_spellings():
    from ckptrace.cli import pidns_arg

    assert pidns_arg("4026531836") == pidns_arg("pid:[4026531836]") == 4026531836


@pytest.mark.kernel
def test_doctor_agrees_with_the_host(root):
    p = subprocess.run([sys.executable, "-m", "ckptrace", "doctor", "--json"], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    doc = json.loads(p.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["root"]["ok"] is (os.geteuid() == 0)
    # soft-dirty: the VmFlags 'sd' mnemonic appears iff CONFIG_MEM_SOFT_DIRTY is built
    with open("/proc/self/smaps") as f:
        sd = any(line.startswith("VmFlags:") and " sd" in line for line in f)
    assert checks["soft-dirty"]["ok"] is sd
    assert checks["tracepoints"]["ok"] is os.path.isdir("/sys/kernel/tracing/events/exceptions/page_fault_user")
    assert checks["ptrace"]["ok"]
    try:
        import bcc  # noqa: F401
        have_bcc = True
    except ImportError:
        have_bcc = False
    assert checks["bcc"]["ok"] is have_bcc
    assert (p.returncode == 0) is doc["ok"]
    assert doc["ok"] is all(c["ok"] for c in doc["checks"] if c["required"])
    text = subprocess.run([sys.executable, "-m", "ckptrace", "doctor"], capture_output=True, text=True,
                          cwd=REPO, timeout=120).stdout
    assert len([line for line in text.splitlines() if line[:4].strip() in ("ok", "no", "FAIL")]) == len(checks)


@pytest.mark.kernel
def test_doctor_as_a_user_says_what_needs_root_instead_of_misdiagnosing(root):
    """Run as nobody: tracefs (mode 0700) is not called unmounted, and the root-only checks are
    listed as not checked rather than left out."""
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "ckptrace", "doctor", "--json"], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert not checks["root"]["ok"] and p.returncode == 1
    if os.path.ismount("/sys/kernel/tracing") and not os.stat("/sys/kernel/tracing").st_mode & 0o005:
        assert "not mounted" not in checks["tracepoints"]["detail"]
        assert "only root" in checks["tracepoints"]["detail"]
    for name in ("ptrace", "bpf_get_ns_current_pid_tgid"):
        assert checks[name]["detail"] == "not checked: needs root"


@pytest.mark.parametrize("text, ok", [("4026532830", 4026532830), ("pid:[4026532830]", 4026532830),
                                      ("-5", None), ("0", None), ("99999999999999999999999", None), ("abc", None)])
def test_a_pidns_argument_is_an_inode_number_or_says_what_is_wanted(text, ok):
    import argparse

    from ckptrace.cli import pidns_arg

    if ok is not None:
        assert pidns_arg(text) == ok
        return
    with pytest.raises(argparse.ArgumentTypeError, match=r"not a pid namespace id: .* \(want N or pid:\[N\]\)"):
        pidns_arg(text)


@pytest.mark.parametrize("text", ["inf", "1e400", "0", "-1", "nan"])
def test_a_duration_must_be_positive_and_finite(text):
    import argparse

    from ckptrace.cli import seconds_arg

    with pytest.raises(argparse.ArgumentTypeError, match="must be a positive, finite number of seconds"):
        seconds_arg(text)


# What each command needs besides the unknown option, so that the option is the only problem.
_REQUIRED = {"dump": ["--pid", "1"], "restore": ["x"], "show": ["x"], "decode": ["x"], "inspect": ["x"],
             "diff": ["a", "b"]}


def test_an_unknown_option_names_its_command(capsys):
    """argparse reports a subcommand's unknown arguments through the top-level parser, as
    `ckptrace: unrecognized arguments` pointing at `ckptrace --help`, which does not list them:
    every command names itself and its own help, in one line, exit status 2."""
    from ckptrace.cli import COMMANDS, build_parser

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([name, *_REQUIRED.get(name, []), "--frob"])
        err = capsys.readouterr().err
        assert exc.value.code == 2, name
        assert err == f"ckptrace {name}: unrecognized arguments: --frob (see `ckptrace {name} --help`)\n", err
    with pytest.raises(SystemExit) as exc:  # before the command word it is the top level's
        build_parser().parse_args(["--frob", "show", "x"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "ckptrace: unrecognized arguments: --frob (see `ckptrace --help`)\n"


def test_an_abbreviated_option_is_not_taken_for_a_longer_one(capsys):
    """argparse takes a prefix of an option for the option: `watch --pid P` (dump's option) was
    `--pidns P`, a host pid read as a namespace and refused with a misleading message."""
    from ckptrace.cli import build_parser

    for args in (["watch", "--pid", "1"], ["ls", "--js"], ["dump", "--pidns", "1", "--ki"]):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(args)
        assert exc.value.code == 2, args
        assert f"unrecognized arguments: {' '.join(args[-2:] if args[0] == 'watch' else args[-1:])}" in \
            capsys.readouterr().err, args
