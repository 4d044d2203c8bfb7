"""edgecls.devices.fleet: the fleet file (`TARGET [PROFILE] [name=] [metrics=] [canary=]`) and its defaults."""

from __future__ import annotations

import json

import pytest

from edgecls.devices.flash import read_targets_file
from edgecls.devices.fleet import FleetDevice, read_fleet
from edgecls.devices.profiles import DeviceProfile
from edgecls.runtime.errors import EdgeclsError


def _write(tmp_path, text: str, profile_url: str = "http://127.0.0.1:8080/healthz"):
    profile = {"name": "cam", "artifacts": ["tflite-int8"], "health_url": profile_url}
    (tmp_path / "cam.json").write_text(json.dumps(profile))
    path = tmp_path / "fleet.txt"
    path.write_text(text)
    return path


def test_names_metrics_and_canary_marks_are_read_with_their_defaults(tmp_path):
    path = _write(
        tmp_path,
        "# a mixed fleet\n"
        "pi@10.0.0.5 cam.json name=door metrics=http://10.0.0.5:9100 canary=true\n"
        "pi@10.0.0.6:2222:/srv/edgecls cam.json   # the port of the profile's health_url on the ssh host\n"
        "./dev-c cam.json name=shelf\n"
        "./dev-d\n",
    )
    door, gate, shelf, bare = read_fleet(path)
    assert (door.name, door.metrics_url, door.canary, door.line) == ("door", "http://10.0.0.5:9100", True, 2)
    assert door.profile.name == "cam" and door.metrics_address == "10.0.0.5:9100"
    assert (gate.name, gate.metrics_url, gate.canary) == (gate.target, "http://10.0.0.6:8080", False)
    assert gate.target == "pi@10.0.0.6:2222:/srv/edgecls"
    assert shelf.metrics_url == "http://127.0.0.1:8080"  # a local folder: the health_url's own host and port
    assert bare.profile is None and bare.metrics_url is None  # flashed, not watched, until a profile says where
    watched = bare.with_profile(DeviceProfile(name="x", health_url="http://127.0.0.1:9200/healthz"))
    assert watched.metrics_url == "http://127.0.0.1:9200" and watched.profile.name == "x"
    assert shelf.with_profile(DeviceProfile(name="x")) is shelf  # its own profile wins


def test_an_old_targets_file_reads_as_before_and_the_new_words_do_not_reach_old_callers(tmp_path):
    path = _write(tmp_path, "./a\n./b cam.json\n./c cam.json name=c metrics=http://127.0.0.1:1\n")
    a, b, c = read_targets_file(path)
    assert a == "./a" and b[0] == "./b" and b[1].name == "cam" and c[0] == "./c"
    assert read_targets_file(_write(tmp_path, "# nothing yet\n")) == []


@pytest.mark.parametrize(
    "line, expected",
    [
        ("./a cam.json colour=red", "line 2: unknown key 'colour'"),
        ("./a cam.json name=x name=y", "line 2: name= is given twice"),
        ("./a metrics=ftp://h:1", "line 2: metrics='ftp://h:1' is not http://HOST:PORT"),
        ("./a metrics=http://h", "line 2: metrics='http://h' is not http://HOST:PORT"),
        ("./a metrics=http://u:p@h:1", "has a user, password or query"),
        ("./a canary=maybe", "line 2: canary='maybe': write canary=true"),
        ("./a name=one", "line 2: name 'one' is already on line 1"),
        ("./first", "line 2: target './first' is already on line 1"),
        ("./a cam.json bogus", "line 2: 'bogus' after the profile is not key=value"),
        ("./a no-such-profile", "line 2: "),
        ("./a name=$(x)", "line 2: name='$(x)'"),
    ],
)
def test_a_bad_line_is_one_error_naming_the_file_and_line(tmp_path, line, expected):
    path = _write(tmp_path, f"./first name=one\n{line}\n")
    with pytest.raises(EdgeclsError) as caught:
        read_fleet(path)
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message, message


def test_an_empty_or_missing_fleet_file_is_refused_in_one_line(tmp_path):
    with pytest.raises(EdgeclsError, match="names no device"):
        read_fleet(_write(tmp_path, "\n# only comments\n"))
    with pytest.raises(EdgeclsError, match="cannot read the fleet file"):
        read_fleet(tmp_path / "absent.txt")


def test_a_fleet_device_is_plain_frozen_data():
    device = FleetDevice("door", "./door")
    with pytest.raises(AttributeError):
        device.name = "other"  # type: ignore[misc]


def test_a_profile_file_whose_name_has_an_equals_sign_is_still_read_as_the_profile(tmp_path):
    path = _write(tmp_path, "./a cams/v=2.json name=door\n./b nmae=door\n")
    (tmp_path / "cams").mkdir()
    (tmp_path / "cams" / "v=2.json").write_text(json.dumps({"name": "v2", "artifacts": ["tflite-int8"]}))
    with pytest.raises(EdgeclsError, match="line 2: unknown key 'nmae'"):
        read_fleet(path)
    path.write_text("./a cams/v=2.json name=door\n")
    (door,) = read_fleet(path)
    assert (door.name, door.profile.name) == ("door", "v2")
