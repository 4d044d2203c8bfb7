"""edgecls.labeling without a browser: the store's moves and journal, the HTTP API on real sockets, the command as a
subprocess (its URL line, SIGTERM, a kill -9 between a move's two renames), Label Studio's formats."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgecls.labeling import DISCARDED, FrameGone, LabelServer, LabelStore, export_tasks
from edgecls.labeling.store import PAUSE_MID_MOVE_ENV
from edgecls.runtime.daemon.capture import INBOX, Capture
from edgecls.runtime.errors import EdgeclsError
from tests.conftest import REPO, cli_error, render_fixture_image, run_cli
from tests.daemon_helpers import wait_for

LABELS = ("circle", "square", "triangle")
CUT = (OSError, ValueError, http.client.HTTPException)  # what an answer cut by a killed or stopping server raises
TOKEN = "label-tok-93f2"


def make_captures(root: Path, n: int = 30, seed: int = 0, first: int = 0) -> Path:
    """`n` frames written by the daemon's own Capture (two sources), each with a sidecar whose top-k names the
    drawn shape with a score in [0.34, 0.95): the layout `edgecls run --capture root` leaves."""
    capture = Capture(root, below=1.0, queue_size=n + 1)
    rng = np.random.default_rng(seed)
    for i in range(n):
        kind = LABELS[i % 3]
        score = round(float(rng.uniform(0.34, 0.95)), 4)
        others = [label for label in LABELS if label != kind]
        topk = [{"label": kind, "score": score}] + [{"label": o, "score": round((1 - score) / 2, 4)} for o in others]
        frame = first + i
        result = {"source": "door cam" if i % 2 else "cam0", "ts": 1765000000 + frame, "frame": frame, "top1": kind}
        capture.offer(render_fixture_image(kind, rng, 40), {**result, "score": score, "topk": topk})
    assert capture.drain(60)
    capture.close()
    return root


def images(root: Path) -> dict:
    """Each image's file name -> every place (relative to root) it is in; the journal's folder is not a place."""
    found: dict = {}
    for path in root.rglob("*.jpg"):
        found.setdefault(path.name, []).append(path.relative_to(root).as_posix())
    return found


def sidecars_beside_images(root: Path) -> bool:
    jpgs = {p.with_suffix("") for p in root.rglob("*.jpg")}
    return jpgs == {p.with_suffix("") for p in root.rglob("*.json") if p.parent.name != ".labels"}


def inbox_ids(root: Path) -> set:
    return {p.relative_to(root / INBOX).as_posix() for p in (root / INBOX).rglob("*.jpg")}


@pytest.fixture
def captures(tmp_path) -> Path:
    return make_captures(tmp_path / "captures")


def post(url: str, body: dict, token: str | None = TOKEN, timeout: float = 30, headers: dict | None = None) -> tuple:
    headers = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {token}"} if token else {}),
        **(headers or {}),
    }
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def get(url: str, token: str | None = TOKEN, host: str | None = None) -> tuple:
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **({"Host": host} if host else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- the store -------------------------------------------------------------------------------------------------


def test_frames_come_most_uncertain_first_with_their_top_k_as_the_first_keys(captures):
    store = LabelStore(captures)
    ordered = store.ordered()
    assert len(ordered) == 30
    assert [f.score for f in ordered] == sorted(f.score for f in ordered)
    state = store.state()
    assert state["frame"]["id"] == ordered[0].id and (state["left"], state["total"]) == (30, 30)
    assert state["frame"]["keys"][:3] == [t[0] for t in ordered[0].topk]


def test_frames_a_running_daemon_captures_later_join_the_queue_and_frames_moved_by_hand_leave_it(captures):
    store = LabelStore(captures)
    make_captures(captures, n=6, seed=9, first=100)  # the daemon keeps capturing while a person labels
    gone = store.ordered()[0].id
    (captures / "circle").mkdir()
    os.rename(captures / INBOX / gone, captures / "circle" / Path(gone).name)  # a person's own move
    store.refresh()
    assert store.state()["left"] == 30 + 6 - 1 and store.frame(gone) is None


def test_a_frame_seen_before_its_sidecar_was_written_gets_its_score_once_the_sidecar_is_there(captures, tmp_path):
    image = sorted((captures / INBOX).rglob("*.jpg"))[0]
    sidecar = image.with_suffix(".json")
    os.rename(sidecar, tmp_path / "later.json")  # the daemon wrote the image and not yet its sidecar
    store = LabelStore(captures)
    frame_id = image.relative_to(captures / INBOX).as_posix()
    assert store.frame(frame_id).score is None and store.ordered()[0].id == frame_id
    os.rename(tmp_path / "later.json", sidecar)
    store.refresh()
    expected = json.loads(sidecar.read_text())
    assert store.frame(frame_id).score == expected["score"] and store.frame(frame_id).topk[0][0] == expected["top1"]
    assert store.frame(frame_id).source == expected["source"] and store.ordered()[0].id != frame_id


def test_progress_starts_again_for_captures_that_arrive_after_the_inbox_was_emptied(tmp_path):
    captures = make_captures(tmp_path / "captures", n=3)
    store = LabelStore(captures)
    for frame in store.ordered():
        store.decide(frame.id, "circle")
    make_captures(captures, n=5, seed=4, first=100)  # a new batch
    store.refresh()
    assert (store.state()["left"], store.state()["total"]) == (5, 5)
    store.decide(store.ordered()[0].id, None)
    assert (LabelStore(captures).state()["left"], LabelStore(captures).state()["total"]) == (4, 5)  # restarted
    store.undo()
    store.undo()  # the decision that emptied the inbox, undone: the first batch is not finished after all
    assert (store.state()["left"], store.state()["total"]) == (6, 8)


def test_a_decision_moves_the_image_and_its_sidecar_and_undo_after_a_restart_brings_them_back(captures):
    store = LabelStore(captures)
    frame = store.ordered()[0]
    before = (captures / INBOX / frame.id).read_bytes()
    pairs = store.decide(frame.id, "square")
    name = Path(frame.id).name
    assert pairs[0][1] == f"square/{name}" and (captures / "square" / name).read_bytes() == before
    assert (captures / "square" / name).with_suffix(".json").is_file()
    assert (
        not (captures / INBOX / frame.id).exists() and not (captures / INBOX / frame.id).with_suffix(".json").exists()
    )
    assert store.state()["left"] == 29

    again = LabelStore(captures)  # a restarted server: undo comes from the journal
    assert again.undo() == frame.id
    assert (captures / INBOX / frame.id).read_bytes() == before and sidecars_beside_images(captures)
    assert not any((captures / "square").iterdir())
    assert again.state()["left"] == 30 and again.state()["undo"] is None


def test_a_decision_whose_image_was_moved_by_hand_is_passed_over_and_undo_reaches_the_one_before(captures):
    store = LabelStore(captures)
    a, b = [f.id for f in store.ordered()[:2]]
    store.decide(a, "circle")
    moved = store.decide(b, "square")
    (captures / moved[0][1]).unlink()  # a person deleted the second decision's image
    with pytest.raises(EdgeclsError, match="no longer there .*u again undoes the decision before it"):
        store.undo()
    assert LabelStore(captures).undo() == a and a in inbox_ids(captures)  # after a restart too
    with pytest.raises(EdgeclsError, match="nothing to undo"):
        store.undo()


def test_a_name_already_in_the_class_folder_gets_a_suffix_never_an_overwrite(captures):
    store = LabelStore(captures)
    frame = store.ordered()[0]
    name = Path(frame.id).name
    mine = captures / "circle" / name
    mine.parent.mkdir()
    mine.write_bytes(b"a person's own image")
    moved = store.decide(frame.id, "circle")
    assert mine.read_bytes() == b"a person's own image"
    assert moved[0][1] == f"circle/{Path(name).stem}-1.jpg" and (captures / moved[1][1]).is_file()


def test_discarding_moves_into_the_discard_folder_and_deletes_nothing(captures):
    store = LabelStore(captures)
    everything = images(captures)
    frame = store.ordered()[0]
    store.decide(frame.id, None)
    assert images(captures).keys() == everything.keys()
    assert images(captures)[Path(frame.id).name] == [f"{DISCARDED}/{Path(frame.id).name}"]


def test_many_concurrent_decisions_on_one_frame_move_it_once(captures):
    store = LabelStore(captures)
    frame = store.ordered()[0].id
    outcomes, start = [], threading.Barrier(8)

    def decide(label):
        start.wait()
        try:
            outcomes.append(store.decide(frame, label))
        except FrameGone as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=decide, args=(LABELS[i % 3],)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    moved = [o for o in outcomes if isinstance(o, list)]
    assert len(moved) == 1 and all("already labelled" in o for o in outcomes if isinstance(o, str))
    assert len(images(captures)[Path(frame).name]) == 1 and sidecars_beside_images(captures)


def test_trainings_folder_scan_sees_exactly_the_labelled_frames_and_nothing_of_the_dot_folders(captures):
    from edgecls.core.datasets.folder import scan_folder

    store = LabelStore(captures)
    ordered = store.ordered()
    for i, frame in enumerate(ordered[:12]):
        store.decide(frame.id, None if i == 11 else LABELS[i % 2])  # the last one discarded
    dataset = scan_folder(captures, val_fraction=0.0, test_fraction=0.0)
    assert dataset.labels == ["circle", "square"]
    seen = sorted(sample.path.name for sample in dataset.splits["train"])
    assert seen == sorted(Path(f.id).name for f in ordered[:11])


@pytest.mark.parametrize(
    "bad", ["a/b", "..", "../escape", ".hidden", "cat\x00", "line\nbreak", "", " cat", "a\\b", "\U0001f431" * 70]
)
def test_class_names_that_are_not_one_plain_folder_name_are_refused_in_one_line(captures, bad):
    store = LabelStore(captures)
    before = images(captures)
    with pytest.raises(EdgeclsError) as refused:
        store.decide(store.ordered()[0].id, bad)
    assert "\n" not in str(refused.value) and "class name" in str(refused.value)
    assert images(captures) == before and not (captures.parent / "escape").exists()


def test_a_class_name_differing_only_by_case_is_refused_and_one_differing_by_normalization_joins_it(captures):
    store = LabelStore(captures)
    frames = [f.id for f in store.ordered()[:3]]
    store.decide(frames[0], "circle")
    with pytest.raises(EdgeclsError, match="only by case: type 'circle'"):
        store.decide(frames[1], "Circle")
    store.decide(frames[1], "cafe\u0301")  # typed decomposed (NFD)
    store.decide(frames[2], "caf\u00e9")  # typed composed (NFC): the same class
    assert sorted(p.name for p in captures.iterdir() if not p.name.startswith(".")) == ["caf\u00e9", "circle"]
    assert len(list((captures / "caf\u00e9").glob("*.jpg"))) == 2


# -- the HTTP API ----------------------------------------------------------------------------------------------


@pytest.fixture
def server(captures):
    served = LabelServer(LabelStore(captures), port=0, token=TOKEN).start()
    yield served
    served.stop()


def test_the_api_decides_and_undoes_and_a_stale_decision_gets_409_and_the_next_frame(server, captures):
    status, state = get(server.url + "api/state")
    state = json.loads(state)
    first = state["frame"]["id"]
    status, answer = post(server.url + "api/decide", {"frame": first, "label": "triangle"})
    assert status == 200 and answer["moved"][0][1] == f"triangle/{Path(first).name}" and answer["left"] == 29
    status, answer = post(server.url + "api/decide", {"frame": first, "label": "circle"})  # a second tab
    assert status == 409 and "already labelled" in answer["error"] and answer["frame"]["id"] != first
    assert images(captures)[Path(first).name] == [f"triangle/{Path(first).name}"]
    status, answer = post(server.url + "api/undo", {})
    assert status == 200 and answer["undone"] == first and answer["frame"]["id"] == first


def test_path_traversal_in_any_parameter_reaches_no_file(server, captures, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not yours")
    for frame in ("../secret.jpg", "../../secret.jpg", str(secret), "cam0/../../../secret.jpg"):
        assert get(server.url + "image?frame=" + urllib.request.quote(frame))[0] == 404
        status, answer = post(server.url + "api/decide", {"frame": frame, "label": "circle"})
        assert status == 409
    status, answer = post(server.url + "api/decide", {"frame": server.store.ordered()[0].id, "label": "../x"})
    assert status == 400 and "class name" in answer["error"]
    assert secret.read_bytes() == b"not yours" and not (captures / "circle").exists()


def test_a_wrong_token_is_refused_and_without_a_token_a_foreign_host_is_refused(server, captures):
    assert get(server.url + "api/state", token="wrong")[0] == 401
    assert get(server.url + "api/state", token=None)[0] == 401
    assert post(server.url + "api/decide", {"frame": server.store.ordered()[0].id, "label": "x"}, token="no")[0] == 401
    assert get(server.url + "image?frame=" + server.store.ordered()[0].id, token=None)[0] == 401
    assert len(inbox_ids(captures)) == 30
    open_server = LabelServer(LabelStore(captures), port=0, token=None).start()
    try:
        assert get(open_server.url + "api/state", token=None, host="evil.example:8090")[0] == 403
        assert get(open_server.url + "api/state", token=None)[0] == 200
    finally:
        open_server.stop()


def test_a_post_from_another_origin_or_not_json_is_refused_and_moves_nothing(server, captures):
    frame = server.store.ordered()[0].id
    body = json.dumps({"frame": frame, "label": "circle"}).encode()
    sent = [
        ({"Origin": "http://127.0.0.1:8080", "Content-Type": "application/json"}, 403),
        ({"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}, 403),
        ({"Content-Type": "text/plain"}, 415),
    ]
    for headers, status in sent:
        for path in ("api/decide", "api/undo"):
            request = urllib.request.Request(
                server.url + path, body, {**headers, "Authorization": f"Bearer {TOKEN}"}, method="POST"
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == status and "\n" not in json.loads(refused.value.read())["error"].strip()
    assert len(inbox_ids(captures)) == 30 and not (captures / "circle").exists()
    same = {"Origin": server.url.rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    assert post(server.url + "api/decide", {"frame": frame, "label": "circle"}, headers=same)[0] == 200


# -- the command -----------------------------------------------------------------------------------------------


def _file_size_limit(limit: int):
    """For preexec_fn: files may grow to `limit` bytes, then a write fails with EFBIG as on a full disk."""
    import resource

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


def start_label(captures: Path, *options, env: dict | None = None, file_size_limit: int | None = None):
    """A real `edgecls label CAPTURES --port 0 OPTIONS`: (process, url) once it printed its URL line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecls.cli", "label", str(captures), "--port", "0", *map(str, options)],
        preexec_fn=None if file_size_limit is None else _file_size_limit(file_size_limit),
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    match = re.match(r"edgecls label: (http://127\.0\.0\.1:\d+/\S*) \((.+)\)$", line.strip())
    if match is None:
        process.kill()
        raise AssertionError(f"no URL line: {line!r} {process.stderr.read()[-2000:]}")
    return process, match.group(1)


def test_the_command_prints_its_url_on_one_line_and_stops_cleanly_on_sigterm(captures, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    process, url = start_label(captures, "--token-file", token_file)
    assert url.endswith("/") and "token=" not in url
    assert get(url + "api/state")[0] == 200
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "30 frames left" in out and "Traceback" not in err


def test_sigterm_during_a_move_waits_for_both_renames_before_the_process_ends(captures):
    process, url = start_label(captures, env={"EDGECLS_RUN_TOKEN": TOKEN, PAUSE_MID_MOVE_ENV: "3"})
    frame = LabelStore(captures).ordered()[0].id

    def decide():  # the answer may be cut: the server is stopping
        with contextlib.suppress(*CUT):
            post(url + "api/decide", {"frame": frame, "label": "square"})

    threading.Thread(target=decide, daemon=True).start()
    moved = captures / "square" / Path(frame).name
    wait_for(moved.exists, 30, "the image's rename")
    process.send_signal(signal.SIGTERM)  # between the image's rename and the sidecar's
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err
    assert moved.with_suffix(".json").is_file() and sidecars_beside_images(captures)
    assert not LabelStore(captures).repairs  # nothing left for the next start to finish


def test_without_a_token_the_command_makes_one_and_the_link_signs_in(captures):
    process, url = start_label(captures)
    try:
        token = url.split("?token=", 1)[1]
        assert len(token) >= 24 and get(url.split("?")[0] + "api/state", token=None)[0] == 401
        assert get(url.split("?")[0] + "api/state", token=token)[0] == 200
    finally:
        process.terminate()
        process.wait(30)


def test_exit_when_done_stops_once_every_frame_is_decided(tmp_path):
    captures = make_captures(tmp_path / "c", n=3)
    process, url = start_label(captures, "--exit-when-done", env={"EDGECLS_RUN_TOKEN": TOKEN})
    for frame in sorted(inbox_ids(captures)):
        assert post(url + "api/decide", {"frame": frame, "discard": True})[0] == 200
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and "nothing left to label" in out and not inbox_ids(captures)


def test_a_kill_9_between_image_and_sidecar_leaves_each_image_in_one_place_and_the_next_start_repairs(captures):
    process, url = start_label(captures, env={"EDGECLS_RUN_TOKEN": TOKEN, PAUSE_MID_MOVE_ENV: "60"})
    frame = LabelStore(captures).ordered()[0].id  # read only: nothing moved yet
    before = images(captures)

    def decide():  # its answer never comes: the server is killed mid-move
        with contextlib.suppress(*CUT):
            post(url + "api/decide", {"frame": frame, "label": "square"})

    threading.Thread(target=decide, daemon=True).start()
    name = Path(frame).name
    wait_for(lambda: (captures / "square" / name).exists(), 30, "the image's rename")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    assert images(captures).keys() == before.keys() and all(len(v) == 1 for v in images(captures).values())
    assert (captures / INBOX / frame).with_suffix(".json").exists()  # the sidecar was not moved yet
    assert not sidecars_beside_images(captures)

    store = LabelStore(captures)  # the next start
    assert store.repairs and "finished a move" in store.repairs[0]
    assert sidecars_beside_images(captures) and (captures / "square" / name).with_suffix(".json").is_file()
    assert store.undo() == frame and sidecars_beside_images(captures)  # the repaired move is undoable
    assert (captures / INBOX / frame).is_file() and not any((captures / "square").iterdir())


def test_a_full_disk_is_answered_in_one_line_and_loses_no_frame(captures):
    env = {"EDGECLS_RUN_TOKEN": TOKEN, "PYTHONDONTWRITEBYTECODE": "1"}
    process, url = start_label(captures, env=env, file_size_limit=1000)  # the journal fills the "disk" soon
    try:
        answers = [post(url + "api/decide", {"frame": f, "label": "circle"}) for f in sorted(inbox_ids(captures))[:6]]
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    refused = [(status, answer) for status, answer in answers if status != 200]
    assert answers[0][0] == 200 and refused and "Traceback" not in err
    assert all("disk full?" in answer["error"] and "\n" not in answer["error"] for _, answer in refused)
    store = LabelStore(captures)  # the next start, with room again: every image once, beside its sidecar
    assert all(len(places) == 1 for places in images(captures).values()) and sidecars_beside_images(captures)
    assert not store.journal.pending() and len(inbox_ids(captures)) == 30 - len(store.journal.undoable())


def test_a_label_studio_class_name_too_long_for_a_folder_is_refused_in_one_line(captures, tmp_path):
    tasks_path, _, _ = export_tasks(LabelStore(captures), tmp_path / "tasks.json")
    export = _label_studio_export(json.loads(tasks_path.read_text()), lambda t: "\U0001f431" * 70)
    (tmp_path / "export.json").write_text(json.dumps(export))
    error = cli_error(run_cli("label", captures, "--import", tmp_path / "export.json"))
    assert "task 1" in error and "280 bytes" in error and len(inbox_ids(captures)) == 30


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_kill_9_at_a_random_moment_of_many_concurrent_decisions_loses_no_image(tmp_path, seed):
    import random

    captures = make_captures(tmp_path / "captures", n=240, seed=seed)
    before = set(images(captures))
    process, url = start_label(captures, env={"EDGECLS_RUN_TOKEN": TOKEN})
    frames = sorted(inbox_ids(captures))

    def decide(mine):
        for frame in mine:
            with contextlib.suppress(*CUT):  # the server is killed under it (a cut answer)
                post(url + "api/decide", {"frame": frame, "label": LABELS[hash(frame) % 3]}, timeout=5)

    workers = [threading.Thread(target=decide, args=(frames[i::4] + frames,), daemon=True) for i in range(4)]
    [w.start() for w in workers]
    kill_after = random.Random(seed).randint(5, 60)  # decisions: a random moment, yet surely mid-run
    wait_for(lambda: len(inbox_ids(captures)) <= len(before) - kill_after, 120, f"{kill_after} decisions")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    assert set(images(captures)) == before and all(len(places) == 1 for places in images(captures).values())
    store = LabelStore(captures)  # the next start: every sidecar is beside its image again
    assert sidecars_beside_images(captures) and not store.journal.pending()
    decided = len(before) - len(inbox_ids(captures))
    assert 0 < decided < len(before) and store.state()["total"] - store.state()["left"] == decided


def journal_seqs(captures: Path) -> list:
    lines = (captures / ".labels" / "journal.jsonl").read_text().splitlines()
    return [json.loads(line)["seq"] for line in lines if '"begin"' in line]


def test_two_stores_on_one_captures_number_their_decisions_apart_and_undo_takes_back_both(captures):
    first, second = LabelStore(captures), LabelStore(captures)  # two servers (or a server and an --import)
    a, b = [f.id for f in first.ordered()[:2]]
    first.decide(a, "circle")
    second.decide(b, "square")  # its journal was read before the first one's decision
    assert len(set(journal_seqs(captures))) == 2
    again = LabelStore(captures)
    assert again.undo() == b and again.undo() == a and inbox_ids(captures) >= {a, b}


def test_two_servers_deciding_the_same_frames_at_once_move_each_frame_once_beside_its_sidecar(tmp_path):
    captures = make_captures(tmp_path / "captures", n=60)
    frames = sorted(inbox_ids(captures))
    servers = [start_label(captures, env={"EDGECLS_RUN_TOKEN": TOKEN}) for _ in range(2)]
    answers = []
    try:

        def decide(url):
            answers.extend(post(url + "api/decide", {"frame": f, "label": "circle"})[0] for f in frames)

        workers = [threading.Thread(target=decide, args=(url,)) for _, url in servers]
        [w.start() for w in workers]
        [w.join(300) for w in workers]
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(30)
    assert sorted(set(answers)) == [200, 409] and answers.count(200) == 60
    assert not inbox_ids(captures) and all(places == [f"circle/{name}"] for name, places in images(captures).items())
    assert sidecars_beside_images(captures) and len(set(journal_seqs(captures))) == len(journal_seqs(captures))


def test_a_server_killed_mid_move_is_repaired_by_the_other_server_on_the_same_captures(captures):
    env = {"EDGECLS_RUN_TOKEN": TOKEN}
    paused, paused_url = start_label(captures, env={**env, PAUSE_MID_MOVE_ENV: "60"})
    other, other_url = start_label(captures, env=env)
    try:
        a, b = [f.id for f in LabelStore(captures).ordered()[:2]]

        def decide_a():  # its answer never comes: the server is killed mid-move
            with contextlib.suppress(*CUT):
                post(paused_url + "api/decide", {"frame": a, "label": "square"})

        threading.Thread(target=decide_a, daemon=True).start()
        wait_for(lambda: (captures / "square" / Path(a).name).exists(), 30, "the image's rename")
        answer = []
        body = {"frame": b, "label": "circle"}
        decide_b = threading.Thread(target=lambda: answer.append(post(other_url + "api/decide", body)))
        decide_b.start()
        os.kill(paused.pid, signal.SIGKILL)
        decide_b.join(60)
        assert answer and answer[0][0] == 200
        assert sidecars_beside_images(captures)  # the other server finished the killed one's move
    finally:
        other.terminate()
        other.communicate(timeout=30)
        paused.wait(30)
    store = LabelStore(captures)
    assert not store.journal.pending() and store.undo() == b and store.undo() == a and sidecars_beside_images(captures)


def test_a_missing_captures_folder_is_one_line_error():
    result = run_cli("label", "/nonexistent/captures", "--port", "0")
    assert "is not a folder" in cli_error(result)


# -- Label Studio ----------------------------------------------------------------------------------------------


def test_with_a_bundle_its_scores_and_top_k_replace_the_sidecars_in_the_order_and_the_predictions(
    captures, tmp_path, tiny_bundle
):
    from edgecls.runtime.classifier import Classifier

    classifier = Classifier(tiny_bundle)
    truth = {
        p.relative_to(captures / INBOX).as_posix(): classifier.classify_file(p)
        for p in (captures / INBOX).rglob("*.jpg")
    }
    result = run_cli(
        "label", captures, "--bundle", tiny_bundle, "--export", "label-studio", "--out", tmp_path / "t.json"
    )
    assert result.returncode == 0, result.stderr
    assert "scored 30 of 30 frames" in result.stderr
    tasks = json.loads((tmp_path / "t.json").read_text())
    frames = [t["data"]["edgecls_frame"] for t in tasks]
    assert frames == sorted(truth, key=lambda f: (truth[f].score, f))  # most uncertain first, by the bundle
    for task in tasks:
        expected = truth[task["data"]["edgecls_frame"]]
        prediction = task["predictions"][0]
        assert prediction["score"] == pytest.approx(expected.score, abs=1e-6)
        assert prediction["result"][0]["value"]["choices"] == [expected.label]
        assert prediction["model_version"] == classifier.bundle.manifest.created
    store = LabelStore(captures, labels=classifier.labels)
    assert set(classifier.labels) <= set(store.known_labels())


def test_with_a_bundle_a_corrupt_frame_gets_no_score_and_can_be_discarded_instead_of_stopping_the_page(
    captures, tiny_bundle
):
    from edgecls.labeling.scores import bundle_scorer

    (captures / INBOX / "cam0" / "broken.jpg").write_bytes(b"\xff\xd8 not a whole jpeg")
    scorer, labels, _ = bundle_scorer(tiny_bundle)
    store = LabelStore(captures, scorer=scorer, labels=labels)
    (captures / INBOX / "cam0" / "late.jpg").write_bytes(b"")  # one arriving while the page is served
    store.refresh()
    first = [f.id for f in store.ordered()[:2]]
    assert sorted(first) == ["cam0/broken.jpg", "cam0/late.jpg"] and store.frame(first[0]).score is None
    assert all(f.score is not None for f in store.ordered()[2:]) and store.state()["left"] == 32
    for frame in first:
        store.decide(frame, None)
    assert (captures / DISCARDED / "broken.jpg").is_file() and store.state()["left"] == 30


def _label_studio_export(tasks: list, choose) -> list:
    """What Label Studio's JSON export holds after a person annotated each task with choose(task) (None: skipped)."""
    out = []
    for number, task in enumerate(tasks, 1):
        label = choose(task)
        result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
        annotations = [] if label is None else [{"id": number, "result": result, "was_cancelled": False}]
        out.append({"id": number, "data": task["data"], "annotations": annotations, "predictions": []})
    return out


def test_label_studio_tasks_carry_the_predictions_and_its_export_imports_into_folders(captures, tmp_path):
    tasks_path, config_path, count = export_tasks(LabelStore(captures), tmp_path / "tasks.json")
    tasks = json.loads(tasks_path.read_text())
    assert count == 30 == len(tasks)
    first = tasks[0]
    assert first["data"]["image"] == f"/data/local-files/?d=captures/{INBOX}/{first['data']['edgecls_frame']}"
    prediction = first["predictions"][0]
    assert prediction["result"][0]["type"] == "choices" and prediction["result"][0]["from_name"] == "choice"
    assert prediction["result"][0]["to_name"] == "image" and isinstance(prediction["score"], float)
    config = config_path.read_text()
    assert '<Choices name="choice" toName="image"' in config and all(f'"{l}"' in config for l in LABELS)

    truth = {t["data"]["edgecls_frame"]: t["predictions"][0]["result"][0]["value"]["choices"][0] for t in tasks}
    skipped = tasks[-1]["data"]["edgecls_frame"]
    export = _label_studio_export(tasks, lambda t: None if t is tasks[-1] else truth[t["data"]["edgecls_frame"]])
    (tmp_path / "export.json").write_text(json.dumps(export))
    result = run_cli("label", captures, "--import", tmp_path / "export.json")
    assert result.returncode == 0, result.stderr
    assert "moved 29 frames" in result.stdout
    assert inbox_ids(captures) == {skipped}
    for frame, label in truth.items():
        if frame != skipped:
            assert (captures / label / Path(frame).name).is_file()
    assert sidecars_beside_images(captures) and LabelStore(captures).undo()  # journaled like the page's moves


def test_a_label_studio_export_with_a_bad_class_name_moves_nothing(captures, tmp_path):
    tasks_path, _, _ = export_tasks(LabelStore(captures), tmp_path / "tasks.json")
    tasks = json.loads(tasks_path.read_text())
    export = _label_studio_export(tasks, lambda t: "../../etc" if t is tasks[5] else "circle")
    (tmp_path / "export.json").write_text(json.dumps(export))
    error = cli_error(run_cli("label", captures, "--import", tmp_path / "export.json"))
    assert "task 6" in error and "class name" in error and len(inbox_ids(captures)) == 30


@pytest.mark.parametrize(
    "task",
    [
        {"data": {"edgecls_frame": "F"}, "annotations": 5},
        {"data": {"edgecls_frame": "F"}, "annotations": [{"result": 7}]},
        {"data": {"edgecls_frame": "F"}, "annotations": [{"result": [{"value": ["cat"]}]}]},
        {"data": {"edgecls_frame": "F"}, "annotations": [{"result": [{"value": {"choices": [["cat"]]}}]}]},
        {"data": "notes", "annotations": [{"result": [{"value": {"choices": ["cat"]}}]}]},
    ],
)
def test_a_malformed_label_studio_export_is_refused_in_one_line_naming_the_task_and_moves_nothing(
    captures, tmp_path, task
):
    frame = LabelStore(captures).ordered()[0].id
    good = {"data": {"edgecls_frame": frame}, "annotations": [{"result": [{"value": {"choices": ["circle"]}}]}]}
    bad = json.loads(json.dumps(task).replace('"F"', json.dumps(frame)))
    (tmp_path / "export.json").write_text(json.dumps([good, bad]))
    result = run_cli("label", captures, "--import", tmp_path / "export.json")
    assert "task 2" in cli_error(result) and "Traceback" not in result.stderr and len(inbox_ids(captures)) == 30


def test_an_import_counts_frames_of_another_captures_folder_apart_from_frames_already_labelled(captures, tmp_path):
    store = LabelStore(captures)
    tasks = json.loads(export_tasks(store, tmp_path / "tasks.json")[0].read_text())
    store.decide(tasks[0]["data"]["edgecls_frame"], "circle")
    foreign = {"data": {"image": f"/data/local-files/?d=other/{INBOX}/cam9/x.jpg"}}
    export = _label_studio_export(tasks[:3] + [foreign], lambda t: "square")
    (tmp_path / "export.json").write_text(json.dumps(export))
    result = run_cli("label", captures, "--import", tmp_path / "export.json")
    assert result.returncode == 0, result.stderr
    assert "moved 2 frames" in result.stdout and "1 were already labelled" in result.stdout
    assert "1 are not waiting in" in result.stdout


LABEL_STUDIO_TEMPLATE = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image">
    <Choice value="Adult content"/>
    <Choice value="Weapons" />
  </Choices>
</View>
"""


@pytest.mark.parametrize(
    "name, text",
    [
        ("tasks.json", "[1, 2]"),
        ("tasks.json", '[{"data": "notes"}]'),
        ("tasks.json", "[]"),
        ("tasks.json", '[{"data": {"edgecls_frame": "a", "image": "b", "note": "mine"}, "predictions": []}]'),
        ("tasks.xml", LABEL_STUDIO_TEMPLATE),
    ],
)
def test_an_export_never_overwrites_a_user_file_that_only_looks_like_one(captures, tmp_path, name, text):
    mine = tmp_path / name
    mine.write_text(text)
    result = run_cli("label", captures, "--export", "label-studio", "--out", tmp_path / "tasks.json")
    assert "is not an earlier `edgecls label --export`" in cli_error(result) and "Traceback" not in result.stderr
    assert mine.read_text() == text


def test_an_export_never_overwrites_a_file_it_did_not_write(captures, tmp_path):
    mine = tmp_path / "tasks.json"
    mine.write_text('{"my": "notes"}')
    error = cli_error(run_cli("label", captures, "--export", "label-studio", "--out", mine))
    assert "is not an earlier `edgecls label --export`" in error and mine.read_text() == '{"my": "notes"}'
    mine.unlink()
    assert run_cli("label", captures, "--export", "label-studio", "--out", mine).returncode == 0
    again = run_cli("label", captures, "--export", "label-studio", "--out", mine)  # its own export: rewritten
    assert again.returncode == 0 and len(json.loads(mine.read_text())) == 30


def test_a_move_that_fails_is_taken_back_and_journaled_as_aborted(captures, monkeypatch):
    store = LabelStore(captures)
    frame = store.ordered()[0].id
    (captures / "circle").write_text("a file where the class folder would go")
    with pytest.raises(EdgeclsError, match="not a plain folder"):
        store.decide(frame, "circle")
    real_rename, calls = os.rename, []

    def rename(src, dst):  # the sidecar's rename fails as across two disks (EXDEV), after the image's worked
        calls.append(dst)
        if str(dst).endswith(".json"):
            raise OSError(18, "Invalid cross-device link")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(EdgeclsError, match="cannot move .* Invalid cross-device link"):
        store.decide(frame, "square")
    monkeypatch.undo()
    assert len(calls) == 3 and frame in inbox_ids(captures)  # image, sidecar (failed), the image taken back
    assert store.journal.records[-1]["state"] == "aborted" and not store.journal.pending()
    assert store.state()["frame"]["id"] == frame and not any((captures / "square").iterdir())
    assert sidecars_beside_images(captures) and all(len(p) == 1 for p in images(captures).values())


def test_a_sidecar_the_capture_cap_removes_mid_move_does_not_undo_the_decision(captures, monkeypatch):
    store = LabelStore(captures)
    frame = store.ordered()[0].id
    real_rename = os.rename

    def rename(src, dst):  # the daemon's size cap deletes the sidecar between the image's rename and its own
        if str(src).endswith(".json"):
            os.unlink(src)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    store.decide(frame, "square")
    monkeypatch.undo()
    assert (captures / "square" / Path(frame).name).is_file() and frame not in inbox_ids(captures)
    assert store.journal.records[-1]["state"] == "done" and not store.journal.pending()


def test_a_torn_last_journal_line_from_a_kill_is_ignored_and_the_next_line_starts_fresh(captures):
    store = LabelStore(captures)
    first, second = [f.id for f in store.ordered()[:2]]
    store.decide(first, "circle")
    with open(captures / ".labels" / "journal.jsonl", "a") as journal:
        journal.write('{"seq": 9, "op": "mo')  # a kill in the middle of an append
    again = LabelStore(captures)
    again.decide(second, "square")
    lines = (captures / ".labels" / "journal.jsonl").read_text().splitlines()
    assert lines[-3] == '{"seq": 9, "op": "mo' and json.loads(lines[-1])["state"] == "done"
    assert LabelStore(captures).undo() == second


# A Python with label-studio-sdk, in a venv of its own: it pins opencv-python-headless<4.13 (and through it numpy<2.3),
# which would replace the project's cv2 and numpy. .ci/run can make one: python -m venv V && V/bin/pip install
# label-studio-sdk.
LABEL_STUDIO_SDK_PYTHON = os.environ.get("EDGECLS_LABEL_STUDIO_SDK_PYTHON")
VALIDATE = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface
interface = LabelInterface(open(sys.argv[1]).read())
tasks = json.load(open(sys.argv[2]))
print(json.dumps([interface.validate_prediction(p) for t in tasks for p in t["predictions"]]))
"""


@pytest.mark.skipif(not LABEL_STUDIO_SDK_PYTHON, reason="set EDGECLS_LABEL_STUDIO_SDK_PYTHON to a python with the SDK")
def test_label_studios_own_sdk_finds_every_exported_prediction_valid_for_the_exported_config(captures, tmp_path):
    tasks_path, config_path, count = export_tasks(LabelStore(captures), tmp_path / "tasks.json")
    wrong = json.loads(tasks_path.read_text())[:1]
    wrong[0]["predictions"][0]["result"][0]["value"]["choices"] = ["no such class"]  # the validator is not vacuous
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    run = [LABEL_STUDIO_SDK_PYTHON, "-c", VALIDATE, str(config_path)]
    valid = json.loads(subprocess.run([*run, str(tasks_path)], capture_output=True, check=True, text=True).stdout)
    assert valid == [True] * count
    assert json.loads(subprocess.run([*run, str(tmp_path / "wrong.json")], capture_output=True, text=True).stdout) == [
        False
    ]


LABEL_STUDIO = os.environ.get("EDGECLS_LABEL_STUDIO_URL")  # a running Label Studio, e.g. http://127.0.0.1:8080
LABEL_STUDIO_TOKEN = os.environ.get("EDGECLS_LABEL_STUDIO_TOKEN", "")  # a legacy API token of its user


def _label_studio(method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Token {LABEL_STUDIO_TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(LABEL_STUDIO + path, data, headers, method=method)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


@pytest.mark.skipif(not LABEL_STUDIO, reason="no Label Studio to talk to: set EDGECLS_LABEL_STUDIO_URL and _TOKEN")
def test_label_studio_itself_imports_the_tasks_and_its_export_comes_back_into_folders(captures, tmp_path):
    tasks_path, config_path, _ = export_tasks(LabelStore(captures), tmp_path / "tasks.json")
    project = _label_studio("POST", "/api/projects", {"title": "edgecls test", "label_config": config_path.read_text()})
    try:
        imported = _label_studio("POST", f"/api/projects/{project['id']}/import", json.loads(tasks_path.read_text()))
        assert imported["task_count"] == 30 and imported["prediction_count"] == 30, imported
        tasks = _label_studio("GET", f"/api/tasks?project={project['id']}&page_size=100&fields=all")["tasks"]
        for task in tasks:  # a person accepts each pre-annotation (its result, as Label Studio's UI submits it)
            _label_studio("POST", f"/api/tasks/{task['id']}/annotations", {"result": task["predictions"][0]["result"]})
        export = _label_studio("GET", f"/api/projects/{project['id']}/export?exportType=JSON")
        (tmp_path / "export.json").write_text(json.dumps(export))
        result = run_cli("label", captures, "--import", tmp_path / "export.json")
        assert result.returncode == 0 and "moved 30 frames" in result.stdout, result.stderr
        assert not inbox_ids(captures) and sidecars_beside_images(captures)
    finally:
        _label_studio("DELETE", f"/api/projects/{project['id']}")
