"""Label Studio's formats, for people who label there: tasks out (with the model's pre-annotations), labels back in.

Out: the "basic Label Studio JSON format" of its import docs (labelstud.io/guide/tasks, /guide/predictions), one
task per waiting frame: `{"data": {"image": URL, "edgecls_frame": ID}, "predictions": [{"model_version", "score",
"result": [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [TOP1]}}]}]}`, and
the labelling config of a Choices project naming those controls. Image URLs are Label Studio's local-files URLs
(`/data/local-files/?d=CAPTURES/...`, served when LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT is the folder holding CAPTURES), or any prefix given.
In: its JSON export (`[{"data", "annotations": [{"result": [{"value": {"choices": [...]}}], "was_cancelled"}]}]`);
each task's last kept annotation labels its frame through the same journaled moves as the page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote
from xml.sax.saxutils import quoteattr

from edgecls.labeling.names import check_label
from edgecls.labeling.store import INBOX, FrameGone, LabelStore
from edgecls.runtime.atomic import write_text
from edgecls.runtime.errors import EdgeclsError

FROM_NAME, TO_NAME = "choice", "image"


def label_config(labels) -> str:
    """The XML labelling config of a single-choice image project whose names match the exported predictions."""
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return (
        f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">\n'
        f"{choices}\n  </Choices>\n</View>\n"
    )


def _prediction(frame, model_version: str) -> list:
    if not frame.topk:
        return []
    result = {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [frame.topk[0][0]]}}
    return [{"model_version": model_version, "score": frame.score, "result": [result]}]


def export_tasks(store: LabelStore, out, image_prefix: str | None = None, model_version: str = "") -> tuple:
    """Write the tasks JSON to `out` and the labelling config beside it (`.xml`); (tasks path, config path, count)."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise EdgeclsError(f"--out {out} should end in .json (Label Studio imports a .json tasks file)")
    prefix = f"/data/local-files/?d={store.root.resolve().name}/" if image_prefix is None else image_prefix
    frames = store.ordered()  # most uncertain first, as the page shows them
    if not frames:
        raise EdgeclsError(f"no frame is waiting in {store.inbox}: nothing to export")
    labels = list(dict.fromkeys(store.known_labels() + [label for f in frames for label, _ in f.topk]))
    tasks = [
        {
            "data": {"image": f"{prefix}{INBOX}/{frame.id}", "edgecls_frame": frame.id},
            "predictions": _prediction(frame, model_version or "edgecls"),
        }
        for frame in frames
    ]
    config = out.with_suffix(".xml")
    for path in (out, config):
        if path.exists() and not _ours(path):
            raise EdgeclsError(f"{path} exists and is not an earlier `edgecls label --export`: choose another --out")
    write_text(out, json.dumps(tasks, indent=1) + "\n")
    write_text(config, label_config(labels))
    return out, config, len(tasks)


_HEAD, _TAIL = label_config([]).split("\n\n")  # what label_config writes around its <Choice> lines
_OUR_CONFIG = re.compile(
    re.escape(_HEAD + "\n") + r"""(    <Choice value=("[^"\n]*"|'[^'\n]*')/>\n)*""" + re.escape(_TAIL)
)


def _ours(path: Path) -> bool:
    """Whether `path` is a tasks file or labelling config an earlier export wrote (writing it again loses nothing):
    exactly the shape export_tasks writes, so a user's notes, an empty list or Label Studio's own template is not."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix.lower() == ".xml":
        return _OUR_CONFIG.fullmatch(text) is not None
    try:
        tasks = json.loads(text)
    except ValueError:
        return False
    return isinstance(tasks, list) and bool(tasks) and all(_our_task(t) for t in tasks)


def _our_task(task) -> bool:
    if not isinstance(task, dict):
        return False
    data = task.get("data")
    return (
        set(task) == {"data", "predictions"}
        and isinstance(data, dict)
        and set(data) == {"image", "edgecls_frame"}
        and isinstance(data["edgecls_frame"], str)
        and isinstance(task["predictions"], list)
    )


def _typed(value, kind: type, what: str, where: str):
    """`value` when it is a `kind`; else one line naming the task and the field (a hand-edited or foreign file)."""
    if not isinstance(value, kind):
        raise EdgeclsError(
            f"{where}: {what} is {json.dumps(value)[:60]}, not a JSON {_JSON_NAMES[kind]}: "
            "export the project from Label Studio as JSON (Export > JSON)"
        )
    return value


_JSON_NAMES = {list: "list", dict: "object", str: "string"}


def _frame_of(task: dict, where: str) -> str | None:
    data = _typed(task.get("data", {}), dict, '"data"', where)
    if "edgecls_frame" in data:
        return _typed(data["edgecls_frame"], str, '"data.edgecls_frame"', where)
    image = unquote(_typed(data.get("image", ""), str, '"data.image"', where))  # tasks made elsewhere
    return image.split(f"{INBOX}/", 1)[1] if f"{INBOX}/" in image else None


def _choice_of(task: dict, where: str) -> str | None:
    """The first choice of the task's last annotation not cancelled; None when it has none."""
    annotations = _typed(task.get("annotations") or [], list, '"annotations"', where)
    kept = [a for a in annotations if not _typed(a, dict, "an annotation", where).get("was_cancelled")]
    for annotation in reversed(kept):
        for result in _typed(annotation.get("result") or [], list, 'an annotation\'s "result"', where):
            value = _typed(_typed(result, dict, "a result", where).get("value") or {}, dict, '"value"', where)
            choices = _typed(value.get("choices") or [], list, '"value.choices"', where)
            if choices:
                return _typed(choices[0], str, "a choice", where)
    return None


def read_export(path) -> list:
    """[(frame id, label)] from a Label Studio JSON export; every label is checked before anything moves."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise EdgeclsError(f"cannot read --import {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise EdgeclsError(
            f"--import {path} is not JSON ({exc}): export the project from Label Studio as JSON"
        ) from exc
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise EdgeclsError(f"--import {path} is not a list of tasks: export the project from Label Studio as JSON")
    decided = []
    for number, task in enumerate(tasks, 1):
        where = f"--import {path}, task {number}"
        label, frame = _choice_of(task, where), _frame_of(task, where)
        if label is None or frame is None:
            continue
        try:
            decided.append((frame, check_label(label)))
        except EdgeclsError as exc:
            raise EdgeclsError(f"{where}: {exc}") from None
    return decided


def import_export(store: LabelStore, path) -> dict:
    """Move each annotated frame into its class folder; counts of the frames moved, those labelled before (the
    journal moved them), and those this CAPTURES never had waiting (tasks of another captures folder?)."""
    decided = read_export(path)
    counts = {"moved": 0, "gone": 0, "missing": 0}
    for frame, label in decided:
        try:
            store.decide(frame, label)
            counts["moved"] += 1
        except FrameGone:
            counts["gone" if store.was_labelled(frame) else "missing"] += 1
    return counts
