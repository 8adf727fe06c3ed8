#!/usr/bin/env bash
# Installs what ckptrace needs on a Debian/Ubuntu host, idempotently, then prints nothing more
# than what it did. Run as root. Used by scripts/demo.sh, scripts/test.sh, .ci/run and Vagrantfile.
#
# Kernel headers: bcc compiles our BPF C at load time and wants headers at
# /lib/modules/$(uname -r)/build. Where the running kernel has none (a VM kernel without a
# package), we point that link at the distribution's headers (Debian 12: 6.1). That is safe
# ONLY because bpf/*.c reads nothing but tracepoint arguments (whose layout bcc takes from tracefs
# at run time) and BPF helpers: no kernel struct offsets are compiled in.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (apt, kernel headers and BPF need it): sudo $0" >&2
    exit 1
fi

PKGS=(python3 python3-venv python3-pip python3-bpfcc bpftool gcc libc6-dev util-linux procps iproute2 kmod)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- kernel headers for bcc ------------------------------------------------------------------
KREL=$(uname -r)
MOD=/lib/modules/$KREL
if [ ! -e "$MOD/build/include/linux/kconfig.h" ] && [ ! -e "$MOD/build/include/generated" ]; then
    if [ -r /sys/kernel/kheaders.tar.xz ]; then
        dest=/usr/src/ckptrace-kheaders-$KREL
        if [ ! -d "$dest" ]; then
            echo "setup: unpacking /sys/kernel/kheaders.tar.xz into $dest"
            mkdir -p "$dest" && tar -xJf /sys/kernel/kheaders.tar.xz -C "$dest"
        fi
        mkdir -p "$MOD" && ln -sfn "$dest" "$MOD/build" && ln -sfn "$dest" "$MOD/source"
    else
        if ! ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1; then
            echo "setup: installing the distribution's kernel headers for bcc (running kernel $KREL has none)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends linux-headers-amd64 >/dev/null
        fi
        hdr=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)
        common=${hdr%-amd64}-common
        mkdir -p "$MOD"
        ln -sfn "$hdr" "$MOD/build"
        ln -sfn "$common" "$MOD/source"
        echo "setup: bcc uses $hdr for kernel $KREL (tracepoint-only BPF: no struct offsets used)"
    fi
fi

# --- tracefs / debugfs -------------------------------------------------------------------------
mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/kernel/debug 2>/dev/null || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true

# --- Python environment ------------------------------------------------------------------------
PY=/usr/bin/python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PY" -m venv "$VENV"
fi
stamp=$VENV/.ckptrace-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python dependencies (pinned in pyproject.toml)"
    # (pip's warnings about this machine's local index mirrors are noise: filtered.)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 \
        | { grep -v -e "^WARNING: Location" -e "BuildBackendWarning" || true; }
    "$VENV/bin/python" -c 'import rich, textual, pyroute2, pytest, hypothesis' \
        || { echo "setup: Python dependencies failed to install" >&2; exit 1; }
    touch "$stamp"
fi
# bcc's Python module is Debian's (python3-bpfcc), not on PyPI: link it into the venv.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$site/bcc" ] || ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || { echo "setup: bcc is not importable from $VENV" >&2; exit 1; }
