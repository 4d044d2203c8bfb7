"""edgecls.devices.profiles: built-in and users' own device profiles, their validation, `edgecls devices list|show`."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from edgecls.devices.profiles import DeviceProfile, ProfileError, list_profiles, load_profile
from tests.conftest import cli_error, run_cli

ISSUE_PROFILES = ["desktop-cpu", "desktop-gpu", "jetson-nano", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5"]


@pytest.mark.parametrize("name", ISSUE_PROFILES)
def test_builtin_profiles_say_everything_flash_needs(name):
    p = load_profile(name)
    assert p.name == name and p.architecture in ("aarch64", "x86_64", "any") and p.python.startswith("3.")
    assert p.packages and p.artifacts and p.providers and p.install_root.startswith("/") and p.service
    assert p.latency_budget_ms and p.latency_budget_ms > 0
    if name.startswith(("raspberry", "jetson")):
        assert p.camera == "csi://0" and ("libcamerasrc" in p.csi_pipeline or "nvarguscamerasrc" in p.csi_pipeline)


@pytest.mark.parametrize("name, device", [("intel-cpu", "CPU"), ("intel-igpu", "GPU,CPU")])
def test_intel_profiles_run_onnx_artifacts_in_openvino_on_their_device(name, device):
    from edgecls.runtime.formats import backend_options

    p = load_profile(name)
    assert p.artifacts[0].startswith("onnx-") and p.backends[0] == "openvino" and p.architecture == "x86_64"
    assert "edgecls[openvino]" in p.packages and p.openvino_precision == ""  # fp32 artifacts at f32
    options = backend_options("onnx", p)
    assert options["prefer"][0] == "openvino" and options["device"] == device
    assert backend_options("tflite", p) == {"prefer": p.backends}  # LiteRT among them for .tflite


def test_profiles_without_the_new_fields_keep_onnx_runtime_and_its_default_spinning():
    """Spinning stays ONNX Runtime's own in the built-in profiles: edgecls search's bench would not apply it."""
    from edgecls.runtime.backends.registry import backends_for
    from edgecls.runtime.formats import backend_options

    for name in ISSUE_PROFILES:
        options = backend_options("onnx", load_profile(name))
        assert options["allow_spinning"] is None
        assert [c.name for c in backends_for("onnx", options["prefer"])] == ["onnxruntime"]


def test_every_builtin_is_listed_and_round_trips():
    assert set(ISSUE_PROFILES) <= set(list_profiles())
    for name in list_profiles():
        p = load_profile(name)
        assert DeviceProfile.from_dict(json.loads(json.dumps(asdict(p)))) == p


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"artifacts": ["tflite-int9"]},
            r"^device profile \S+/mine\.json: \"artifacts\" is \('tflite-int9',\); expected names from "
            r"tflite-int8, tflite-fp16, tflite-fp32, onnx-int8, onnx-fp32 \('tflite-int9' is not one\)$",
        ),
        ({"threads": 0}, r'"threads" is 0; expected a whole number of at least 1'),
        ({"threads": "4"}, r'"threads" is \'4\''),
        ({"latency_budget_ms": -1}, r'"latency_budget_ms" is -1; expected a positive number'),
        ({"install_root": "opt/edgecls"}, r'"install_root" .*expected an absolute folder'),
        ({"service": "edge cls"}, r'"service" .*systemd unit name'),
        ({"architecture": "riscv"}, r'"architecture" .*one of any, aarch64'),
        ({"providers": []}, r'"providers" is \(\); expected a list of names \(at least one\)'),
        ({"camra": "0"}, r"unknown field\(s\) \['camra'\]"),
        ({"health_url": "localhost:8080"}, r'"health_url" .*http://'),
        ({"health_token_file": "token.txt"}, r'"health_token_file" .*absolute path on the device'),
        ({"backends": ["openvno"]}, r'"backends" .*names from litert, tflite-runtime, onnxruntime, openvino'),
        ({"ort_allow_spinning": "no"}, r'"ort_allow_spinning" is \'no\'; expected true, false, or null'),
        ({"openvino_device": "gpu"}, r'"openvino_device" is \'gpu\'; expected an OpenVINO device such as "CPU"'),
        ({"openvino_device": "GPU,"}, r'"openvino_device" .*"GPU,CPU" to fall back'),
        ({"openvino_precision": "int8"}, r'"openvino_precision" is \'int8\'; expected one of \'\', \'f32\''),
    ],
)
def test_invalid_profiles_name_the_field_and_the_fix(tmp_path, change, message):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", **change}))
    with pytest.raises(ProfileError, match=message):
        load_profile(str(path))


def test_user_profile_folder_and_profile_file(tmp_path, monkeypatch):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "shop-pi.json").write_text(
        json.dumps(
            {"name": "shop-pi", "description": "the shop's Pi 4", "artifacts": ["tflite-int8"], "latency_budget_ms": 80}
        )
    )
    (folder / "raspberry-pi-5.json").write_text(json.dumps({"name": "raspberry-pi-5", "threads": 2}))
    monkeypatch.setenv("EDGECLS_PROFILES", str(folder))
    assert "shop-pi" in list_profiles() and load_profile("shop-pi").latency_budget_ms == 80
    assert load_profile("raspberry-pi-5").threads == 2  # the user's copy replaces the built-in
    env = {"EDGECLS_PROFILES": str(folder)}
    listed = run_cli("devices", "list", env=env)
    assert listed.returncode == 0 and "shop-pi" in listed.stdout and str(folder) in listed.stdout
    shown = run_cli("devices", "show", "shop-pi", env=env)
    assert shown.returncode == 0 and "latency_budget_ms  80" in shown.stdout
    as_json = json.loads(run_cli("devices", "show", "jetson-nano", "--json").stdout)
    assert as_json["providers"][0] == "CUDAExecutionProvider"
    assert "unknown device profile 'nope'" in cli_error(run_cli("devices", "show", "nope", env=env))
    (folder / "broken.json").write_text("{not json")
    assert "is not valid JSON" in cli_error(run_cli("devices", "show", str(folder / "broken.json")))
    assert "give either --device NAME or --profile FILE" in cli_error(
        run_cli("status", str(tmp_path), "--device", "desktop-cpu", "--profile", folder / "shop-pi.json")
    )


@pytest.mark.parametrize(
    "url", ["http://admin:hunter2@127.0.0.1:8080/healthz", "http://127.0.0.1:8080/healthz?token=s3cret"]
)
def test_a_health_url_holding_a_password_or_token_is_refused_pointing_at_health_token_file(tmp_path, url):
    """urllib cannot send user:pass@, and both would be shown in results and status and stored on the device:
    a one-line error that names health_token_file and never shows the secret (before: accepted; a good model
    rolled back after 60 s with the password in the table, status, device.json and state.json)."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "p", "health_url": url}))
    error = cli_error(run_cli("flash", tmp_path, tmp_path / "dev", "--profile", path))
    assert "health_token_file" in error and "hunter2" not in error and "s3cret" not in error, error
    with pytest.raises(ProfileError, match="health_token_file"):
        load_profile(str(path))


def test_devices_list_and_show_print_profile_text_with_terminal_escapes_escaped(tmp_path):
    """A profile file may hold anything: its description and notes are printed with control characters
    escaped, as the flash table and status do (before: raw escapes reached the terminal)."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "esc.json").write_text(
        json.dumps({"name": "esc", "description": "x\x1b]0;pwned\x07\x1b[2J", "notes": {"a": "\x1b[31mred"}})
    )
    env = {"EDGECLS_PROFILES": str(folder)}
    for args in (("devices",), ("devices", "show", "esc")):
        ran = run_cli(*args, env=env, timeout=120)
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert "\x1b" not in ran.stdout and "\x07" not in ran.stdout, repr(ran.stdout)
        assert "\\x1b]0;pwned" in ran.stdout, ran.stdout


def test_every_builtin_profile_names_a_python_edgecls_installs_on():
    """A profile's python is the oldest the device runs edgecls with: never below pyproject's requires-python."""
    import re
    from pathlib import Path

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    requires = re.search(r'^requires-python\s*=\s*"(.*)"', pyproject, re.M).group(1)
    least = tuple(int(p) for p in re.fullmatch(r">=\s*(\d+)\.(\d+)", requires).groups())
    for name in list_profiles():
        version = tuple(int(p) for p in load_profile(name).python.split("."))
        assert version >= least, f"profile {name} says python {version}, edgecls needs {requires}"
    assert tuple(int(p) for p in DeviceProfile.__dataclass_fields__["python"].default.split(".")) >= least
