"""The labelling page in a real headless Chromium (tests/browser.py): keys move exactly the frames shown, undo, a
reload resumes, a second tab cannot move a frame twice, a kill -9 of the server mid-move loses nothing."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium; it is in the test extra)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from edgecls.labeling import LabelServer, LabelStore
from edgecls.labeling.store import PAUSE_MID_MOVE_ENV
from edgecls.runtime.daemon.capture import INBOX
from tests.browser import chromium, screenshot, wait_for
from tests.daemon_helpers import wait_for as wait_until
from tests.test_labeling import TOKEN, images, inbox_ids, make_captures, sidecars_beside_images, start_label


def answers(browser) -> int:
    return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-answers") or 0)


def shown(browser) -> str:
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-frame")


def progress(browser) -> str:
    return browser.find_element(By.ID, "progress").text


def message(browser) -> str:
    return browser.find_element(By.ID, "message").text


def press(browser, *keys, control: bool = False) -> None:
    """Type `keys` (with Ctrl held when `control`) into the page and wait for the server's answer to be shown."""
    before = answers(browser)
    actions = ActionChains(browser)
    if control:
        actions.key_down(Keys.CONTROL).send_keys(*keys).key_up(Keys.CONTROL).perform()
    else:
        actions.send_keys(*keys).perform()
    wait_for(browser, lambda b: answers(b) > before, 15, f"the page's answer to {keys!r}")


def key_labels(browser) -> list:
    return [b.get_attribute("data-label") for b in browser.find_elements(By.CSS_SELECTOR, "#choices .choice")]


def open_page(browser, url: str) -> None:
    browser.get(url)
    wait_for(browser, lambda b: answers(b) > 0, 20, "the page's first state")


@pytest.fixture
def served(tmp_path):
    captures = make_captures(tmp_path / "captures")
    server = LabelServer(LabelStore(captures), port=0, token=TOKEN).start()
    yield captures, server
    server.stop()


def test_keyboard_labelling_of_20_frames_moves_exactly_those_undo_restores_one_and_a_reload_resumes(served, tmp_path):
    captures, server = served
    with chromium(1200, 800) as browser:
        open_page(browser, f"{server.url}?token={TOKEN}")  # the sign-in link: a cookie, then the page
        assert progress(browser) == "30 of 30 left"
        expected = {}  # frame -> class folder ("" for the discard folder)
        for i in range(20):
            frame, labels = shown(browser), key_labels(browser)
            if i == 7:  # a new class, typed after `n`; a bad name first: refused in one line, nothing moves
                ActionChains(browser).send_keys("n").perform()
                press(browser, "../up", Keys.ENTER)
                assert "not one folder name" in message(browser) and shown(browser) == frame
                ActionChains(browser).send_keys("n").perform()
                press(browser, "mug", Keys.ENTER)
                expected[frame] = "mug"
            elif i % 5 == 4:
                press(browser, "x")
                expected[frame] = ".discarded"
            else:
                key = 1 + i % 3
                press(browser, str(key))
                expected[frame] = labels[key - 1]
            assert shown(browser) != frame and progress(browser) == f"{29 - i} of 30 left"
        screenshot(browser, tmp_path / "label-page.png")

        for frame, folder in expected.items():
            assert images(captures)[Path(frame).name] == [f"{folder}/{Path(frame).name}"]
        assert inbox_ids(captures) == {f.id for f in LabelStore(captures).ordered()} and len(inbox_ids(captures)) == 10
        assert all(len(places) == 1 for places in images(captures).values()) and sidecars_beside_images(captures)

        last = list(expected)[-1]
        press(browser, "u")
        assert last in inbox_ids(captures) and shown(browser) == last and progress(browser) == "11 of 30 left"
        browser.refresh()  # a reload (or a closed and reopened tab) resumes where it was
        wait_for(browser, lambda b: shown(b) == last, 20, "the page after a reload")
        assert progress(browser) == "11 of 30 left"
        before_last = list(expected)[-2]
        press(browser, "z", control=True)
        assert before_last in inbox_ids(captures) and progress(browser) == "12 of 30 left"
    assert (tmp_path / "label-page.png").stat().st_size > 10_000


def test_without_the_cookie_the_page_asks_for_the_token_and_a_wrong_one_moves_nothing(served):
    captures, server = served
    with chromium(900, 600) as browser:
        browser.get(server.url)
        assert "edgecls label" in browser.title and "Open the labelling page" in browser.page_source
        field = browser.find_element(By.NAME, "token")
        field.send_keys("wrong-token", Keys.ENTER)
        wait_for(browser, lambda b: "not the right one" in b.page_source, 15, "the wrong-token note")
        browser.find_element(By.NAME, "token").send_keys(TOKEN, Keys.ENTER)
        wait_for(browser, lambda b: answers(b) > 0, 20, "the page after signing in")
        assert progress(browser) == "30 of 30 left" and len(inbox_ids(captures)) == 30


def test_a_second_tab_deciding_the_same_frame_does_not_move_it_twice(served):
    captures, server = served
    with chromium(1000, 700) as browser:
        open_page(browser, f"{server.url}?token={TOKEN}")
        first_tab, frame = browser.current_window_handle, shown(browser)
        browser.switch_to.new_window("tab")
        open_page(browser, server.url)  # the session cookie from the first tab
        second_tab = browser.current_window_handle
        assert shown(browser) == frame
        browser.switch_to.window(first_tab)
        labels = key_labels(browser)
        press(browser, "1")
        browser.switch_to.window(second_tab)
        press(browser, "2")  # the second tab still shows the frame the first one moved
        assert "already labelled" in message(browser) and shown(browser) != frame
        assert images(captures)[Path(frame).name] == [f"{labels[0]}/{Path(frame).name}"]
        assert len(inbox_ids(captures)) == 29 and sidecars_beside_images(captures)


def test_a_kill_9_of_the_server_mid_move_leaves_every_image_in_one_place_and_the_page_resumes_after_restart(tmp_path):
    captures = make_captures(tmp_path / "captures")
    env = {"EDGECLS_RUN_TOKEN": TOKEN}
    process, url = start_label(captures, env={**env, PAUSE_MID_MOVE_ENV: "60"})
    everything = set(images(captures))
    with chromium(1000, 700) as browser:
        open_page(browser, f"{url}?token={TOKEN}")
        frame, labels = shown(browser), key_labels(browser)
        ActionChains(browser).send_keys("1").perform()  # the server stops between the image and the sidecar
        moved = captures / labels[0] / Path(frame).name
        wait_until(moved.exists, 30, "the image's rename")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        assert set(images(captures)) == everything and all(len(p) == 1 for p in images(captures).values())
        assert (captures / INBOX / frame).with_suffix(".json").is_file()  # the sidecar: not moved yet

        process, url = start_label(captures, env=env)  # the next start finishes the move
        try:
            open_page(browser, f"{url}?token={TOKEN}")
            assert progress(browser) == "29 of 30 left" and shown(browser) != frame
            assert moved.with_suffix(".json").is_file() and sidecars_beside_images(captures)
        finally:
            process.terminate()
            _, err = process.communicate(timeout=30)
    assert "finished a move a kill interrupted" in err and process.returncode == 0


ATTACK = """<!doctype html><html><body>
<form id="f" method="post" action="{decide}" enctype="text/plain"><input name='{name}' value='"}}'></form>
<script>
fetch("{undo}", {{method: "POST", mode: "no-cors", credentials: "include", body: "{{}}",
  headers: {{"Content-Type": "text/plain"}}}}).finally(() => document.getElementById("f").submit());
</script></body></html>
"""


def test_a_page_on_another_port_of_the_same_host_cannot_decide_or_undo_with_the_signed_in_cookie(served, tmp_path):
    captures, server = served
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    target = server.store.ordered()[1].id
    # enctype=text/plain sends NAME=VALUE: a field name holding most of a JSON object makes the body valid JSON.
    name = json.dumps({"frame": target, "label": "pwned", "x": ""})[:-2]
    (attacker / "index.html").write_text(
        ATTACK.format(decide=server.url + "api/decide", undo=server.url + "api/undo", name=name)
    )
    site = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=attacker))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        with chromium(900, 600) as browser:
            open_page(browser, f"{server.url}?token={TOKEN}")  # signed in: the cookie is in the jar
            decided = shown(browser)
            press(browser, "1")
            browser.get(f"http://127.0.0.1:{site.server_address[1]}/index.html")  # same site, another origin
            wait_for(browser, lambda b: b.current_url.endswith("/api/decide"), 20, "the form's answer")
            assert "refused a request from another page" in browser.page_source
        assert not (captures / "pwned").exists() and target in inbox_ids(captures)
        assert decided not in inbox_ids(captures) and len(inbox_ids(captures)) == 29  # the undo was refused too
    finally:
        site.shutdown()
        site.server_close()


def test_captures_that_arrive_after_everything_was_labelled_appear_without_a_reload(tmp_path):
    captures = make_captures(tmp_path / "captures", n=3)
    server = LabelServer(LabelStore(captures), port=0, token=TOKEN).start()
    try:
        with chromium(900, 600) as browser:
            open_page(browser, f"{server.url}?token={TOKEN}")
            for _ in range(3):
                press(browser, "1")
            assert shown(browser) == "" and "Nothing left" in browser.find_element(By.ID, "done").text
            make_captures(captures, n=5, seed=4, first=100)  # the daemon captures on
            wait_for(browser, lambda b: shown(b) in inbox_ids(captures), 15, "a new capture on the page")
            assert progress(browser) == "5 of 5 left" and answers(browser) == 4  # a new batch; polls are not answers
            press(browser, "x")
            assert len(inbox_ids(captures)) == 4 and progress(browser) == "4 of 5 left"
    finally:
        server.stop()


def test_a_held_key_decides_one_frame_however_long_it_auto_repeats(served):
    captures, server = served
    with chromium(900, 600) as browser:
        open_page(browser, f"{server.url}?token={TOKEN}")
        first = shown(browser)
        key = {"key": "1", "code": "Digit1", "text": "1", "windowsVirtualKeyCode": 49}
        browser.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyDown", **key})
        wait_for(browser, lambda b: shown(b) != first, 15, "the first key's answer")
        settled = answers(browser)
        for _ in range(8):  # the keyboard's auto-repeat while the key stays down, after the answer came
            browser.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyDown", "autoRepeat": True, **key})
        browser.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyUp", **key})
        time.sleep(1.5)  # a decision the repeats sent would have been answered by now (one takes milliseconds)
        assert len(inbox_ids(captures)) == 29 and answers(browser) == settled and first not in inbox_ids(captures)
