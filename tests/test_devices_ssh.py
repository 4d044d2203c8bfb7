"""devices/ssh.py against a real OpenSSH server on 127.0.0.1 (tests/sshd.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from edgecls.devices.ssh import SshClient, SshError, SshTarget, is_ssh_target, parse_target
from tests.conftest import cli_error, run_cli
from tests.sshd import sshd  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("pi@raspberrypi", SshTarget("raspberrypi", "pi")),
        ("pi@10.0.0.5:2222", SshTarget("10.0.0.5", "pi", 2222)),
        ("pi@10.0.0.5:/opt/edgecls", SshTarget("10.0.0.5", "pi", None, "/opt/edgecls")),
        ("root@127.0.0.1:2200:/tmp/dev root", SshTarget("127.0.0.1", "root", 2200, "/tmp/dev root")),
        ("orin:~/edgecls", SshTarget("orin", None, None, "~/edgecls")),
        ("pi@[fe80::1]:22:/srv", SshTarget("fe80::1", "pi", 22, "/srv")),
    ],
)
def test_ssh_target_syntax_is_parsed(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["/media/sd/rootfs", "./device", "~/sd", "relative/folder"])
def test_local_paths_are_not_ssh_targets(text):
    assert not is_ssh_target(text) and parse_target(text) is None


def test_a_bad_port_is_a_clear_error():
    with pytest.raises(SshError, match="out of range"):
        parse_target("pi@host:70000")


def test_run_push_and_fetch_over_a_real_sshd(sshd, tmp_path):  # noqa: F811
    client = SshClient(parse_target(sshd.target(tmp_path / "dev")), config=sshd.ssh_config)
    assert client.run(["echo", "a b; c"]).stdout == b"a b; c\n"  # argv words quoted for the remote shell
    assert client.run("cat", input=b"\x00\x01data").stdout == b"\x00\x01data"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.bin").write_bytes(os.urandom(4096))
    (tmp_path / "one.txt").write_text("one")
    client.push([src, tmp_path / "one.txt"], str(tmp_path / "remote dir"))
    assert (tmp_path / "remote dir" / "src" / "sub" / "x.bin").read_bytes() == (src / "sub" / "x.bin").read_bytes()
    client.fetch(str(tmp_path / "remote dir" / "one.txt"), tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "one"
    out = client.python("edgecls.runtime.install", ["--help"]).stdout.decode()
    assert "install" in out


def test_ssh_errors_name_the_cause_and_the_fix(sshd, tmp_path):  # noqa: F811
    closed = SshClient(SshTarget("127.0.0.1", sshd.user, 1), config=sshd.ssh_config)
    with pytest.raises(SshError, match="cannot reach .*port 1 .*connection refused"):
        closed.run(["true"])
    # The server knows only the test's client key: another key is refused.
    other = tmp_path / "other_key"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    stranger = SshClient(
        SshTarget("127.0.0.1", sshd.user, sshd.port),
        options=[
            f"IdentityFile={other}",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            f"UserKnownHostsFile={tmp_path / 'kh'}",
            "ControlMaster=no",
        ],
    )
    with pytest.raises(SshError, match="refused the login.*ssh-copy-id"):
        stranger.run(["true"])
    client = SshClient(parse_target(sshd.target("/x")), config=sshd.ssh_config, python="python3.0-missing")
    with pytest.raises(SshError, match="not installed on the device"):
        client.python("edgecls.runtime.install", ["status"])
    missing = SshClient(parse_target(sshd.target("/x")), config=sshd.ssh_config)
    with pytest.raises(SshError, match="edgecls is not installed for the device's python3"):
        missing.run("cd / && PYTHONPATH= python3 -S -c 'import edgecls.runtime.install'")


def test_the_host_key_hint_names_the_port(sshd, tmp_path):  # noqa: F811
    """A device on a non-default port: the hint's command must reach that port, or it accepts the wrong key."""
    (tmp_path / "known_hosts").write_text("")
    client = SshClient(
        SshTarget("127.0.0.1", sshd.user, sshd.port),
        options=[
            f"IdentityFile={sshd.client_key}",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=yes",
            f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "ControlMaster=no",
        ],
    )
    with pytest.raises(
        SshError,
        match=rf"host key of .* is unknown or changed: connect once with "
        rf"`ssh -p {sshd.port} {sshd.user}@127.0.0.1`",
    ):
        client.run(["true"])


def test_a_target_with_shell_characters_in_its_user_is_refused_not_taken_as_a_folder(tmp_path, monkeypatch):
    """`a$(touch${IFS}/x)@host:/p` has a / before its @: it was silently a local folder of that name. Now it is
    read as what it looks like (SSH) and refused, naming the user and how to write a folder instead."""
    from edgecls.devices.targets import make_target

    monkeypatch.chdir(tmp_path)
    text = "a$(touch${IFS}/x)@host:/p"
    with pytest.raises(SshError, match="not a valid SSH user name") as error:
        make_target(text, "/opt/edgecls")
    assert f"./{text}" in str(error.value) and "a$(touch${IFS}/x)" in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no folder made of it


def test_a_user_the_server_rejects_reads_as_an_authentication_failure_naming_the_user(sshd, tmp_path):  # noqa: F811
    client = SshClient(parse_target(f"nosuchuser@127.0.0.1:{sshd.port}:{tmp_path}"), config=sshd.ssh_config)
    with pytest.raises(SshError) as error:
        client.run(["true"])
    assert "authentication failed" in str(error.value) and "'nosuchuser'" in str(error.value), error.value
    # a user name ssh itself refuses to send (it read as "the connection ended abruptly"): refused up front,
    # and named if it gets to ssh all the same
    with pytest.raises(SshError, match="'x\\(y' is not a valid SSH user name"):
        parse_target(f"x(y@127.0.0.1:{sshd.port}")
    client = SshClient(SshTarget("127.0.0.1", "x(y", sshd.port), config=sshd.ssh_config)
    with pytest.raises(SshError) as error:
        client.run(["true"])
    assert "user 'x(y'" in str(error.value) and "abruptly" not in str(error.value), error.value


OLD_INSTALL = {  # what an edgecls from before the one namespace put on a device: top-level runtime, no edgecls.runtime
    "edgecls/__init__.py": '__version__ = "0.1.0"\n',
    "runtime/__init__.py": "",
    "runtime/install/__init__.py": "",
    "runtime/install/__main__.py": 'import json\nprint(json.dumps({"error": "the old device side ran"}))\n',
}


def test_this_edgecls_is_a_newer_version_than_an_install_from_before_edgecls_runtime():
    """pip keeps an install of the same version ("already installed"): the layout change needs a new one."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, in the dev extra there
        import tomli as tomllib
    from packaging.version import Version

    import edgecls

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert declared == edgecls.__version__
    old = OLD_INSTALL["edgecls/__init__.py"].split('"')[1]
    assert Version(declared) > Version(old) and Version(declared) >= Version("0.2.0"), (declared, old)


def _device_python(tmp_path, files: dict) -> str:
    """A device python that sees only `files` (no site-packages, so not this checkout's editable edgecls)."""
    lib = tmp_path / "device-lib"
    lib.mkdir()
    for name, text in files.items():
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_text(text)
    script = tmp_path / "device-python"
    script.write_text(f'#!/bin/sh\ncd / && PYTHONPATH={lib} exec {sys.executable} -S "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    "files, said",
    [
        (
            OLD_INSTALL,
            "the device's edgecls is older than this one (it has no edgecls.runtime): flash once with "
            "--setup to update it, or install this edgecls's wheel there with "
            "`pip install --force-reinstall WHEEL`",
        ),
        ({}, "edgecls is not installed for the device's python3: run `edgecls flash ... --setup`"),
    ],
    ids=["older", "absent"],
)
def test_a_device_without_edgecls_runtime_gets_one_line_saying_what_to_do(
    sshd,
    tiny_bundle,
    tmp_path,
    files,
    said,  # noqa: F811
):
    python = _device_python(tmp_path, files)
    target, ssh = sshd.target(tmp_path / "dev"), ["--ssh-config", sshd.ssh_config]
    for command in (["status", target], ["rollback", target]):
        assert said in cli_error(run_cli(*command, *ssh, "--python", python, timeout=120)), command
    flashed = run_cli("flash", tiny_bundle, target, *ssh, "--python", python, timeout=240)
    assert flashed.returncode != 0 and "Traceback" not in flashed.stderr, flashed.stderr[-2000:]
    assert said in flashed.stdout + flashed.stderr, flashed.stdout[-2000:] + flashed.stderr[-2000:]
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    benched = run_cli("bench", tiny_bundle, "--device", device, *ssh, "--remote-python", python, timeout=240)
    assert said in cli_error(benched)
