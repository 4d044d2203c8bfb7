"""May edgecls write into this folder? The device root's refusals, standard library only and runnable alone.

`flash --setup` writes ROOT/venv before anything of edgecls is on the device, so it asks first with the
device's bare python3: the host sends this file as the program (`python3 - ROOT`, source on stdin), and it
prints {"ok": true}, or {"error": "..."} and exits 2, like `python3 -m edgecls.runtime.install`. `DeviceRoot.check`
calls the same `refusal`, so the question asked before setup and the one asked by the flash are one.

Keep it importable on Python 3.7 and free of imports from this package.
"""

from __future__ import annotations

import json
import os
import re
import sys

MARKER = ".edgecls-device"
VENV = "venv"  # `flash --setup` installs the runtime here, before the root is ours
VENV_BUILD = re.compile(r"^\.venv-setup-\d+$")  # a venv --setup is building, renamed to VENV once it has pip
VENV_MARKER = ".edgecls-venv"  # written by --setup into the venv it makes: only such a venv is ever replaced
LOCK = ".lock"
# What a first flash creates before its marker is in place (the lock, the marker's own temp file): another
# flash starting at that moment must not take them for someone's files.
CLAIMING = re.compile(r"^\.\.edgecls-device\.[0-9A-Za-z_-]+\.tmp$")


def is_ours(root: str) -> bool:
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f).get("format", "").startswith("edgecls-device/")
    except (OSError, ValueError, AttributeError):
        return False


def is_setup_entry(root: str, name: str) -> bool:
    """ROOT/venv (a real folder holding pyvenv.cfg: --setup's, or one made by hand as the README shows), one
    --setup is building, or what a first flash creates before its marker: not a foreign file. Someone's file
    named venv, or a link to their own virtualenv, is foreign. (--setup itself replaces only a venv holding
    VENV_MARKER: devices/wheels.py.)"""
    path = os.path.join(root, name)
    if name == LOCK or CLAIMING.match(name):
        return os.path.isfile(path) and not os.path.islink(path)
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    if name == VENV:
        return os.path.isfile(os.path.join(path, "pyvenv.cfg")) and not os.path.islink(os.path.join(path, "pyvenv.cfg"))
    return bool(VENV_BUILD.match(name))


def resolve(root: str) -> str:
    """The absolute root, through a link if it is one (a link to nothing stays as given, to be refused)."""
    root = os.path.abspath(os.path.expanduser(root))
    return root if os.path.islink(root) and not os.path.exists(root) else os.path.realpath(root)


def refusal(root: str) -> str | None:
    """Why edgecls must not write into `root` (a file, a link, someone's non-empty folder), or None."""
    root = resolve(root)  # a root that is a link (to an SD card's folder) is the folder it names
    if os.path.dirname(root) == root:
        return f"device root {root} is the file system root: give a folder such as /opt/edgecls"
    if os.path.lexists(root) and not os.path.exists(root):
        return f"device root {root} is a link to nothing ({os.readlink(root)}): fix or remove the link"
    if os.path.exists(root) and not os.path.isdir(root):
        return f"device root {root} exists and is not a folder: choose another root"
    foreign = sorted(n for n in os.listdir(root) if not is_setup_entry(root, n)) if os.path.isdir(root) else []
    if foreign and not is_ours(root):
        return (
            f"device root {root} already holds files edgecls did not write ({', '.join(foreign[:3])}…): choose "
            f"an empty or new folder as the root; nothing there was changed"
        )
    for name in ("releases", "staging"):
        folder = os.path.join(root, name)
        if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
            what = f"a link to {os.readlink(folder)}" if os.path.islink(folder) else "not a folder"
            return (
                f"{folder} is {what}: edgecls only writes and deletes inside real folders under its root; "
                f"replace it with a folder (remove the link, then flash again)"
            )
    return None


if __name__ == "__main__":
    why = refusal(sys.argv[1])
    print(json.dumps({"error": why} if why else {"ok": True}))
    sys.exit(2 if why else 0)
