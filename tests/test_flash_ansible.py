"""devices/ansible playbook: it parses, and installs for real over loopback SSH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgecls.devices.flash import FlashOptions, flash
from edgecls.runtime.bundle import MANIFEST
from tests.conftest import REPO, require_tool
from tests.sshd import sshd  # noqa: F401  (fixture)
from tests.test_flash import PROFILE, assert_complete, bundles, current_release  # noqa: F401  (fixture)

PLAYBOOK = REPO / "devices" / "ansible" / "flash.yml"


def _ansible(*args, tmp: Path) -> subprocess.CompletedProcess:
    exe = require_tool("ansible-playbook", package="ansible-core (pip, the dev extra)")
    (tmp / "ansible.cfg").write_text("[defaults]\n")  # none of the machine's own settings
    env = {
        **os.environ,
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "at"),
        "ANSIBLE_REMOTE_TMP": str(tmp / "rt"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_CONFIG": str(tmp / "ansible.cfg"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp / "cp"),
        "ANSIBLE_HOME": str(tmp / "ah"),
    }
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp)


def test_the_playbook_passes_ansible_syntax_check(tmp_path):
    done = _ansible("--syntax-check", "-i", PLAYBOOK.parent / "inventory.example.ini", PLAYBOOK, tmp=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_playbook_flashes_loopback_devices(bundles, sshd, tmp_path):  # noqa: F811
    good, slow = tmp_path / "good-dev", tmp_path / "slow-dev"
    # The slow device runs version b first: its failed smoke test of a must roll back to b.
    assert flash(bundles["b"], [str(slow)], FlashOptions(profile=PROFILE))[0].ok
    old = current_release(slow).name
    common = (
        f"ansible_host={sshd.host} ansible_port={sshd.port} ansible_user={sshd.user} "
        f"ansible_ssh_common_args='-F {sshd.ssh_config}' ansible_python_interpreter={sys.executable} "
        f"edgecls_python={sys.executable}"
    )
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        f"[edgecls_devices]\ngood {common} edgecls_root={good}\n"
        f"slow {common} edgecls_root={slow} edgecls_budget_ms=0.001\n"
    )
    done = _ansible("-i", inventory, PLAYBOOK, "-e", f"edgecls_bundle={bundles['a']}", tmp=tmp_path)
    out = done.stdout
    assert done.returncode != 0, out
    assert_complete(good, bundles["a"] / MANIFEST)
    assert current_release(slow).name == old  # rolled back by the device code
    assert "p95 latency" in out and "rolled back" in out
    recap = {line.split()[0]: line for line in out.splitlines() if ": ok=" in line}
    assert "failed=0" in recap["good"] and "failed=1" in recap["slow"]
    # Again: the installed version is a no-op on the good device (nothing changed).
    again = _ansible("-i", inventory, PLAYBOOK, "-e", f"edgecls_bundle={bundles['a']}", "--limit", "good", tmp=tmp_path)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout


def test_the_playbooks_default_smoke_profile_has_every_field_flash_sends():
    """The playbook's default smoke profile carries what `edgecls flash` sends (the engines' own fields too), with
    DeviceProfile's defaults: one without openvino_device or ort_allow_spinning smoke-tested another setup."""
    import re

    import yaml

    from edgecls.devices.flash import _smoke_profile
    from edgecls.devices.profiles import DeviceProfile

    play = yaml.safe_load(PLAYBOOK.read_text())[0]
    default = play["vars"]["_smoke_profile"]
    keys = re.findall(r"'(\w+)':", default)
    assert sorted(keys) == sorted(_smoke_profile(DeviceProfile(name="x")))
    expected = _smoke_profile(DeviceProfile(name="x"))
    assert f"'openvino_device': '{expected['openvino_device']}'" in default
    assert "'ort_allow_spinning': none" in default and "'openvino_precision': ''" in default
