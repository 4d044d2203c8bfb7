"""tests/sshd.py, the OpenSSH server the device tests talk to: it finds sftp-server and checks the device's python3."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from tests import sshd


def test_sftp_server_is_found_on_arch_and_alpine_and_on_path(tmp_path, monkeypatch):
    assert "/usr/lib/ssh/sftp-server" in sshd.SFTP_SERVERS  # Arch's and Alpine's path
    program = tmp_path / "bin" / "sftp-server"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setattr(sshd, "SFTP_SERVERS", (str(tmp_path / "absent"),))
    monkeypatch.setenv("PATH", str(program.parent))
    assert sshd._sftp_server() == str(program)


def test_no_sftp_server_fails_instead_of_internal_sftp(tmp_path, monkeypatch):
    """internal-sftp under the ForceCommand wrapper runs as `bash -c internal-sftp`: scp and sftp exit 255."""
    monkeypatch.setattr(sshd, "SFTP_SERVERS", (str(tmp_path / "absent"),))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="sftp-server"):
        sshd._sftp_server()


def test_a_python_sharing_this_prefix_is_not_taken_for_this_one(tmp_path):
    """/usr/bin/python3.12 and /usr/bin/python3 (3.11) share the prefix /usr: the check compares the binary too."""
    other = tmp_path / "python3.12"
    shutil.copy(os.path.realpath(sys.executable), other)  # another binary, with this prefix as PYTHONHOME
    stdlib = sysconfig.get_paths()["stdlib"]  # the base interpreter's, also from inside a venv
    env = {
        **os.environ,
        "PYTHONHOME": sys.prefix,  # a venv has no stdlib of its own: PYTHONPATH brings the base one
        "PYTHONPATH": os.pathsep.join([stdlib, os.path.join(stdlib, "lib-dynload")]),
    }
    ran = subprocess.run([str(other), "-c", sshd.PYTHON_IDENTITY], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[-1] == sys.prefix  # what the check compared before: equal
    assert ran.stdout.strip() != sshd.python_identity()
    this = subprocess.run([sys.executable, "-c", sshd.PYTHON_IDENTITY], capture_output=True, text=True, timeout=60)
    assert this.stdout.strip() == sshd.python_identity()
