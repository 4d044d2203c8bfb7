"""The labelling page: one frame at a time, most uncertain first, decided with one key.

Everything it shows comes from /api/state after each decision (and every few seconds, for new captures), so a
reload, a second tab or a restarted server shows the same place; text goes in through textContent only (class
names are folder names a person typed).
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgecls label</title>
<style>
body{margin:0;background:#15171a;color:#e4e4e4;font:15px system-ui,sans-serif}
header{display:flex;align-items:center;gap:16px;padding:10px 18px;background:#22262b}
header h1{font-size:18px;margin:0}
#progress{font-weight:600}
#bar{flex:1;height:8px;background:#3a3f45;border-radius:4px;overflow:hidden}
#bar div{height:100%;background:#4caf50;width:0}
main{display:flex;gap:24px;padding:18px}
#view{flex:0 0 auto;text-align:center}
#image{width:min(60vh,56vw);height:min(60vh,56vw);object-fit:contain;image-rendering:pixelated;
 background:#000;border:1px solid #444}
#meta{color:#aaa;font-size:13px;margin-top:6px;max-width:min(60vh,56vw);overflow-wrap:anywhere}
#side{flex:1;min-width:220px}
#side h2{font-size:14px;color:#aaa;margin:0 0 8px;font-weight:500}
.choice{display:flex;align-items:center;gap:10px;width:100%;margin:0 0 6px;padding:8px 10px;font-size:16px;
 color:#e4e4e4;background:#2b3036;border:1px solid #444;border-radius:6px;cursor:pointer;text-align:left}
.choice:hover{background:#353b42}
.key{display:inline-block;min-width:22px;padding:1px 6px;border-radius:4px;background:#e4e4e4;color:#15171a;
 font-weight:700;text-align:center}
.score{margin-left:auto;color:#9bd;font-variant-numeric:tabular-nums}
.suggested{border-color:#6a9fd8}
#other button{margin:4px 6px 0 0;padding:6px 10px;color:#e4e4e4;background:#2b3036;border:1px solid #444;
 border-radius:6px;cursor:pointer}
#newclass{display:none;margin-top:8px}
#newclass input{font-size:15px;padding:6px;width:200px}
#message{min-height:22px;margin-top:10px;color:#9c9}
#message.error{color:#ffb74d}
#done{display:none;padding:40px;font-size:20px}
</style></head>
<body>
<header><h1>edgecls label</h1><span id="progress">loading</span><div id="bar"><div></div></div></header>
<div id="done">Nothing left to label. New captures appear here as they arrive.
 <p><button id="undo2">u: undo the last decision</button></p></div>
<main id="main">
 <div id="view"><img id="image" alt="captured frame"><div id="meta"></div></div>
 <div id="side">
  <h2>Suggestions (model's top-k first), then known classes: press the number</h2>
  <div id="choices"></div>
  <div id="other">
   <button id="discard"><span class="key">x</span> discard</button>
   <button id="new"><span class="key">n</span> new class</button>
   <button id="undo"><span class="key">u</span> undo</button>
  </div>
  <form id="newclass"><input id="newname" placeholder="new class name" autocomplete="off">
   <button>label</button> <small>Enter to label, Esc to cancel</small></form>
  <div id="message"></div>
 </div>
</main>
<script>
"use strict";
let state = null, busy = false, answers = 0, generation = 0;
const POLL_MS = 3000;  // how often the page asks for new captures (the server rescans at most every 2 s)
const $ = (id) => document.getElementById(id);

function say(text, error) {
  $("message").textContent = text || "";
  $("message").className = error ? "error" : "";
}

function progress(next) {
  const decided = next.total - next.left;
  $("progress").textContent = next.left + " of " + next.total + " left";
  $("bar").firstElementChild.style.width = (next.total ? 100 * decided / next.total : 100) + "%";
  document.body.dataset.left = next.left;
}

function show(next, polled) {
  state = next;
  progress(next);
  const frame = next.frame;
  // For scripts and tests driving the page: which frame is shown, after how many answers (polls not counted).
  Object.assign(document.body.dataset, {frame: frame ? frame.id : "", answers: polled ? answers : ++answers});
  $("done").style.display = frame ? "none" : "block";
  $("main").style.display = frame ? "flex" : "none";
  if (!frame) return;
  $("image").src = "/image?frame=" + encodeURIComponent(frame.id);
  const score = frame.score === null ? "no score" : "top-1 score " + frame.score.toFixed(3);
  $("meta").textContent = frame.id + " \\u00b7 " + score + (frame.source ? " \\u00b7 " + frame.source : "");
  const scores = {};
  for (const t of frame.topk) scores[t.label] = t.score;
  const box = $("choices");
  box.replaceChildren();
  frame.keys.forEach((label, i) => {
    const b = document.createElement("button");
    b.className = "choice" + (label in scores ? " suggested" : "");
    b.dataset.label = label;
    const k = document.createElement("span"); k.className = "key"; k.textContent = String(i + 1);
    const n = document.createElement("span"); n.textContent = label;
    const s = document.createElement("span"); s.className = "score";
    s.textContent = label in scores && scores[label] !== null ? scores[label].toFixed(2) : "";
    b.append(k, n, s);
    b.addEventListener("click", () => decide({label}));
    box.append(b);
  });
}

async function call(method, url, body) {
  const response = await fetch(url, {method, headers: {"Content-Type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await response.json();
  if (response.status === 401) { location.reload(); }
  return [response.status, data];
}

async function act(method, url, body, done) {
  if (busy) return;  // a double click or key repeat decides once
  busy = true;
  generation++;
  try {
    const [status, data] = await call(method, url, body);
    if (data.frame !== undefined) show(data);
    say(status === 200 ? done(data) : data.error, status !== 200);
  } catch (err) {
    say("the label server did not answer: is `edgecls label` still running? (" + err + ")", true);
  } finally { busy = false; }
}

function decide(choice) {
  if (!state || !state.frame) return;
  const body = {frame: state.frame.id, ...choice};
  act("POST", "/api/decide", body, (d) => "moved to " + d.moved[0][1] + " (u to undo)");
}

function undo() { act("POST", "/api/undo", {}, (d) => "undone: " + d.undone + " is back"); }

function newClass() {
  $("newclass").style.display = "block";
  $("newname").value = "";
  $("newname").focus();
}

$("newclass").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("newname").value;
  $("newclass").style.display = "none";
  decide({label: name});
});
$("newname").addEventListener("keydown", (e) => {
  if (e.key === "Escape") { $("newclass").style.display = "none"; e.stopPropagation(); }
});
$("discard").addEventListener("click", () => decide({discard: true}));
$("new").addEventListener("click", newClass);
$("undo").addEventListener("click", undo);
$("undo2").addEventListener("click", undo);

document.addEventListener("keydown", (e) => {
  if (e.target === $("newname") || e.repeat) return;  // a held key decides once, not a frame per repeat
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); undo(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key >= "1" && e.key <= "9") {
    const label = state && state.frame && state.frame.keys[Number(e.key) - 1];
    if (label !== undefined) decide({label}); else say("no class on key " + e.key, true);
  } else if (e.key === "x") decide({discard: true});
  else if (e.key === "n") { e.preventDefault(); newClass(); }
  else if (e.key === "u") undo();
});

call("GET", "/api/state").then(([, data]) => show(data)).catch((err) => say(String(err)));

// New captures arrive while the page is open (a daemon with --capture still running): the page asks again every
// few seconds. A frame being looked at is never swapped for another under the person's finger: while one is shown
// only the progress changes; an answer that a decision overtook is dropped.
setInterval(async () => {
  if (busy) return;
  const asked = generation;
  try {
    const [status, data] = await call("GET", "/api/state");
    if (status !== 200 || busy || asked !== generation || data.frame === undefined) return;
    const same = state && state.frame && data.frame && data.frame.id === state.frame.id;
    if (!state || !state.frame) show(data, true); else if (same) progress(data);
  } catch (err) { /* the server is away: the next decision says so */ }
}, POLL_MS);
</script>
</body></html>
"""


def page() -> bytes:
    return PAGE.encode()


def sign_in_page(wrong: bool = False) -> bytes:
    """Shown at `/` without the session cookie: the token is POSTed (never put in a URL) and answered with one."""
    note = "<p>That token is not the right one.</p>" if wrong else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgecls label: sign in</title>
<style>body{{margin:0;padding:16px;background:#15171a;color:#e4e4e4;font:15px system-ui,sans-serif}}</style></head>
<body><h1>edgecls label</h1><p>Open the link `edgecls label` printed, or paste its token (--token-file or
EDGECLS_RUN_TOKEN).</p>{note}
<form method="post" action="/"><input type="password" name="token" autocomplete="current-password" autofocus>
<button>Open the labelling page</button></form>
</body></html>
""".encode()
