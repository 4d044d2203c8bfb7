"""Mutation testing of runtime/ and converters/ with mutmut, on a snapshot of the tree.

mutmut rewrites each function of the files under test into a trampoline, records in one unmutated
"stats" run which tests call which function, then runs for each mutant only those tests, in a fresh
pytest session forked per mutant. Everything happens in a copy of the repository (--workdir), so
files edited meanwhile cannot mix into a run, and the copy's own edgecls/ is imported (the editable
install would otherwise serve the live one).

runtime/, converters/ and devices/ are imported only as edgecls.runtime (and so on), through the links
edgecls/runtime -> ../runtime. A trampoline answers only to mutants named after the module it is
imported as, so mutmut is given each file by its import path (runtime/session.py is mutated as
edgecls/runtime/session.py, its mutants named edgecls.runtime.session.*), and the snapshot and mutmut's
mutants/ folder keep the links: the mutated file is the one both `edgecls.runtime.session` and
runtime/session.py name. --paths and --mutants accept either spelling.

Session fixtures would be rebuilt in every mutant's session (training and five conversions, over a
minute), so the script sets EDGECLS_TEST_FIXTURE_CACHE and builds the cache once from unmutated
code before mutmut starts; tests/conftest.py copies from it. Mutants that only the fixture's own
build could see (the conversion inside tiny_bundle) therefore survive: the score is conservative.

    python3 benchmarks/mutation.py --paths runtime/session.py,runtime/preprocess.py \\
        --tests tests/test_preprocess.py,tests/test_session.py --max-mutants 80 --seed 0

Writes benchmarks/results/<--name>.txt (readable, each survivor's diff) and .json.

This module is also the pytest plugin (-p benchmarks.mutation) that runs each mutant's tests
cheapest first: mutmut passes them in set order and stops at the first failure.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
# Not copied into the snapshot: build outputs, caches, earlier mutmut runs.
SKIP_DIRS = {".git", "build", "dist", "mutants", "runs", "bundles", "__pycache__", ".pytest_cache"}
# The package the tests import; its links to top-level folders (edgecls/runtime -> ../runtime) are kept.
PACKAGE = "edgecls"
COSTS = "mutation-test-costs.json"  # per test seconds (setup + call + teardown) from mutmut's stats run
CAUGHT = ("killed", "timeout", "segfault")
MISSED = ("survived", "no tests", "suspicious")
FIXTURE_PROBE = "test_zz_mutation_fixture_cache.py"
# Imported once by mutmut's fork server, so no mutant's session pays for them (TensorFlow alone takes 7-14 s).
# Importing is fork-safe; running TensorFlow before a fork is not, and the server never runs it.
PRELOAD = [
    "numpy",
    "cv2",
    "onnxruntime",
    "onnxruntime.quantization",
    "ai_edge_litert.interpreter",
    "onnx",
    "tensorflow",
    "keras",
    "tf2onnx",
    "sklearn.metrics",
]


try:
    from pytest import hookimpl as _hookimpl
except ImportError:  # the script itself needs no pytest; only the plugin half does

    def _hookimpl(**_):
        return lambda f: f


_costs: dict = {}


def pytest_runtest_logreport(report) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        _costs[report.nodeid] = _costs.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") == "stats" and _costs:
        path = Path(COSTS)  # mutmut runs pytest inside mutants/
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**old, **_costs}))


@_hookimpl(trylast=True)
def pytest_collection_modifyitems(items) -> None:
    """Cheapest module first, cheapest test first within it (module fixtures are set up once)."""
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", "") or not Path(COSTS).exists():
        return
    cost = json.loads(Path(COSTS).read_text())
    module_cost: dict = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        module_cost[module] = module_cost.get(module, 0.0) + cost.get(item.nodeid, 0.0)
    items.sort(key=lambda item: (module_cost[item.nodeid.split("::")[0]], cost.get(item.nodeid, 0.0)))


def parse_args(argv=None) -> argparse.Namespace:
    defaults = _repo_config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--paths",
        default="runtime,converters",
        help="comma-separated files or folders to mutate (default: runtime,converters)",
    )
    p.add_argument(
        "--tests",
        default=",".join(defaults.get("pytest_add_cli_args_test_selection", ["tests"])),
        help="comma-separated pytest arguments choosing the tests (default: [tool.mutmut] in pyproject.toml)",
    )
    p.add_argument("--max-mutants", type=int, default=0, help="run a random sample of this many mutants (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument(
        "--mutants",
        default="",
        help="comma-separated mutant names or globs to run instead of a sample (e.g. an earlier run's survivors)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="a mutant times out when its tests run this many seconds longer than they did unmutated",
    )
    p.add_argument("--max-children", type=int, default=1, help="mutants tested at once (default 1: shared machines)")
    p.add_argument("--workdir", default=str(REPO / "build" / "mutation"), help="scratch folder, emptied first")
    p.add_argument("--source", default=str(REPO), help="tree to snapshot (default: this repository)")
    p.add_argument("--name", default="mutation", help="results go to benchmarks/results/NAME.txt and .json")
    p.add_argument("--note", default="", help="a line for the results, e.g. what the source tree was")
    p.add_argument(
        "--baseline",
        default="",
        help="an earlier run's .json: the results compare with it mutant by mutant (e.g. before a refactor)",
    )
    p.add_argument("--no-fixture-cache", action="store_true", help="rebuild session fixtures in every mutant's session")
    return p.parse_args(argv)


def _repo_config() -> dict:
    try:
        return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    except (OSError, KeyError):
        return {}


def snapshot(source: Path, dest: Path) -> list[str]:
    """Copy the tree's files (tracked and untracked-not-ignored when it is a git checkout) to dest."""
    listed = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, text=True
    )
    if listed.returncode == 0:
        files = [f for f in listed.stdout.split("\0") if f and ((source / f).is_symlink() or (source / f).is_file())]
    else:
        files = []
        for root, dirs, names in os.walk(source):
            linked = [d for d in dirs if Path(root, d).is_symlink()]
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and d not in linked and not d.endswith(".egg-info")]
            files += [str(Path(root, name).relative_to(source)) for name in names + linked]
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if (source / rel).is_symlink():  # edgecls/runtime -> ../runtime: a link, or edgecls.runtime is not the copy
            os.symlink(os.readlink(source / rel), dest / rel)
        else:
            shutil.copy2(source / rel, dest / rel)  # mtimes kept: mutmut compares them
    return files


def package_links(root: Path) -> dict[str, str]:
    """Top-level folders imported through a link in the package: {"runtime": "edgecls/runtime", ...}."""
    package = root / PACKAGE
    links = {}
    for entry in sorted(package.iterdir()) if package.is_dir() else []:
        target = entry.resolve()
        if entry.is_symlink() and target.is_dir() and target.parent == root.resolve():
            links[target.name] = f"{PACKAGE}/{entry.name}"
    return links


def import_path(rel: str, links: dict[str, str]) -> str:
    """The path a file is imported from: runtime/session.py -> edgecls/runtime/session.py."""
    top, _, rest = rel.partition("/")
    return f"{links[top]}/{rest}" if top in links and rest else rel


def repo_path(imported: str, links: dict[str, str]) -> str:
    """The inverse of import_path (git names a file by its own folder, not through a link)."""
    for top, link in links.items():
        if imported.startswith(link + "/"):
            return top + imported[len(link) :]
    return imported


def import_name(mutant: str, links: dict[str, str]) -> str:
    """An old-layout mutant name in the new one: runtime.session.x_f__mutmut_1 -> edgecls.runtime.session...."""
    top = mutant.split(".")[0]
    return links[top].replace("/", ".") + mutant[len(top) :] if top in links else mutant


def prepare_mutants(snap: Path, links: dict[str, str]) -> None:
    """mutants/ with the package and the linked folders, links kept, before mutmut fills in the rest.

    mutmut copies folders with their links followed, which would make mutants/edgecls/runtime a second
    copy, and mutants/runtime (read by path by some tests) either missing or unmutated.
    """
    for name in [PACKAGE, *links]:
        shutil.copytree(snap / name, snap / "mutants" / name, symlinks=True)


def python_files(paths: list[str], root: Path, links: dict[str, str]) -> list[str]:
    """The Python files of these files and folders, each by its import path (see import_path)."""
    out = []
    real = {link: top for top, link in links.items()}
    for p in paths:
        p = p.rstrip("/")
        for link, top in real.items():  # edgecls/runtime/x.py -> runtime/x.py, so a folder is globbed once
            if p == link or p.startswith(link + "/"):
                p = top + p[len(link) :]
        target = root / p
        if target.is_dir():
            out += sorted(str(f.relative_to(root)) for f in target.rglob("*.py") if "__pycache__" not in f.parts)
        elif target.is_file() and p.endswith(".py"):
            out.append(p)
        else:
            raise SystemExit(f"error: {p} is not a Python file or folder in {root}")
    return sorted(dict.fromkeys(import_path(f, links) for f in out))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml(v) for v in value) + "]"


def write_mutmut_config(pyproject: Path, settings: dict) -> None:
    """Replace the snapshot's [tool.mutmut] table (mutmut reads only pyproject.toml in its cwd)."""
    text = pyproject.read_text()
    text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text).rstrip() + "\n\n[tool.mutmut]\n"
    text += "".join(f"{key} = {_toml(value)}\n" for key, value in settings.items())
    pyproject.write_text(text)


@contextmanager
def cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def enumerate_mutants(snap: Path, files: list[str]) -> dict[str, list[str]]:
    """Every mutant name mutmut will generate for each file, without running anything."""
    from mutmut.mutation.file_mutation import mutate_file_contents
    from mutmut.utils.format_utils import get_mutant_name

    with cwd(snap):
        return {
            f: [get_mutant_name(Path(f), n) for n in mutate_file_contents(f, Path(f).read_text()).mutant_names]
            for f in files
        }


def build_fixture_cache(snap: Path, cache: Path, env: dict) -> bool:
    """Build the session fixtures once, unmutated; False when conftest.py does not cache them."""
    probe = snap / "tests" / FIXTURE_PROBE
    probe.write_text("def test_build(shapes_folder, tiny_run_dir, tiny_bundle):\n    pass\n")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
            cwd=snap,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        probe.unlink()
    if run.returncode != 0:
        raise SystemExit(
            f"error: building the fixtures failed on unmutated code:\n{run.stdout[-3000:]}{run.stderr[-2000:]}"
        )
    return cache.is_dir() and any(cache.iterdir())


def run_mutmut(snap: Path, names: list[str], max_children: int, env: dict, log: Path) -> int:
    cmd = [
        sys.executable,
        "-c",
        "import sys; from mutmut.__main__ import cli; sys.exit(cli(prog_name='mutmut'))",
        "run",
        "--max-children",
        str(max_children),
        *names,
    ]
    with open(log, "w") as out:
        return subprocess.run(cmd, cwd=snap, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def collect_results(snap: Path, by_file: dict[str, list[str]], sampled: set[str]) -> list[dict]:
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    rows = []
    with cwd(snap):
        for f, names in by_file.items():
            data = SourceFileMutationData(path=f)
            data.load()
            for name in names:
                if name not in sampled:
                    continue
                status = status_by_exit_code[data.exit_code_by_key.get(name)]
                func, cls = orig_function_and_class_names_from_key(name)
                row = {
                    "mutant": name,
                    "file": f,
                    "function": f"{cls}.{func}" if cls else func,
                    "status": status,
                    "seconds": data.durations_by_key.get(name),
                }
                if status not in CAUGHT:
                    row["diff"] = get_diff_for_mutant(name, path=f)
                rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    caught = sum(counts.get(s, 0) for s in CAUGHT)
    tested = caught + sum(counts.get(s, 0) for s in MISSED)
    return {
        "counts": counts,
        "caught": caught,
        "tested": tested,
        "score": round(100.0 * caught / tested, 1) if tested else None,
    }


def compare(baseline: Path, rows: list[dict], links: dict[str, str]) -> dict:
    """This run against an earlier one, by mutant (old-layout names read as their import names).

    A mutant caught before and missed now means a test that guarded it is gone or weaker.
    """
    earlier = json.loads(baseline.read_text())
    before = {import_name(r["mutant"], links): r["status"] for r in earlier["mutants"]}
    now = {r["mutant"]: r["status"] for r in rows}
    both = sorted(set(before) & set(now))
    return {
        "baseline": baseline.name,
        "score_before": earlier["summary"]["score"],
        "score_before_on_common": summarize([{"status": before[m]} for m in both])["score"],
        "score_now_on_common": summarize([{"status": now[m]} for m in both])["score"],
        "common": len(both),
        "caught_before_missed_now": [m for m in both if before[m] in CAUGHT and now[m] not in CAUGHT],
        "missed_before_caught_now": [m for m in both if before[m] not in CAUGHT and now[m] in CAUGHT],
        "only_before": sorted(set(before) - set(now)),
    }


def _baseline_lines(b: dict) -> list[str]:
    lines = [
        f"against {b['baseline']} on the {b['common']} mutants both ran: score {b['score_before_on_common']}% "
        f"before, {b['score_now_on_common']}% now",
    ]
    for key in ("caught_before_missed_now", "missed_before_caught_now", "only_before"):
        lines.append(f"{key.replace('_', ' ')}: {', '.join(b[key]) or 'none'}")
    return lines


def write_report(out_stem: Path, meta: dict, rows: list[dict]) -> None:
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    out_stem.with_suffix(".json").write_text(json.dumps({**meta, "mutants": rows}, indent=2, ensure_ascii=False) + "\n")
    s = meta["summary"]
    lines = [
        f"mutation testing: {meta['tool']} on {meta['machine']}, {meta['date']}",
        f"source: {meta['source']}" + (f" ({meta['note']})" if meta.get("note") else ""),
        f"files: {', '.join(meta['files'])}",
        f"tests: {' '.join(meta['tests'])}",
        f"mutants generated: {meta['generated']} "
        f"({', '.join(f'{f} {n}' for f, n in meta['generated_by_file'].items())})",
        f"run: {meta['sampled']} ({meta['chosen_by'] if len(meta['chosen_by']) < 60 else 'chosen by --mutants'}), "
        f"timeout +{meta['timeout_s']:g} s, "
        f"{meta['max_children']} at a time, fixture cache {'on' if meta['fixture_cache'] else 'off'}",
        "results: " + ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items())),
        f"score: {s['score']}% ({s['caught']} of {s['tested']} caught: killed, timeout or crash)",
        f"wall time: {meta['wall_s']:.0f} s in all; mutants {meta['mutant_phase_s']:.0f} s "
        f"({meta['seconds_per_mutant']:.1f} s per mutant); setup (snapshot, fixtures, stats, clean run) "
        f"{meta['wall_s'] - meta['mutant_phase_s']:.0f} s",
        *(_baseline_lines(meta["baseline"]) if meta.get("baseline") else []),
        "",
    ]
    for status in ("survived", "no tests", "suspicious", "timeout", "segfault"):
        picked = [r for r in rows if r["status"] == status]
        if not picked:
            continue
        lines.append(f"== {status} ({len(picked)})")
        for r in picked:
            lines.append(f"-- {r['file']}  {r['function']}  ({r['mutant']})")
            if r.get("diff"):
                lines += [l for l in r["diff"].splitlines() if not l.startswith(("---", "+++"))]
        lines.append("")
    out_stem.with_suffix(".txt").write_text("\n".join(lines))


def configure(snap: Path, work: Path, files: list[str], tests: list[str], timeout: float) -> None:
    """The snapshot's [tool.mutmut]: the repository's, narrowed to these files and tests.

    mutants/ already holds the package and its linked folders (prepare_mutants), so mutmut copies only
    the rest; the source paths are the files themselves, as mutmut does not walk into linked folders.
    """
    preload = work / "preload.txt"
    preload.write_text("\n".join(PRELOAD) + "\n")
    settings = _repo_config()
    prepared = {p.name for p in (snap / "mutants").iterdir()}
    settings.update(
        source_paths=files,
        only_mutate=files,
        also_copy=[d for d in settings.get("also_copy", []) if d.split("/")[0] not in prepared]
        + ["benchmarks"],  # benchmarks: this plugin
        pytest_add_cli_args_test_selection=tests,
        pytest_add_cli_args=settings.get("pytest_add_cli_args", []) + ["-p", "benchmarks.mutation"],
        timeout_multiplier=1.0,  # mutmut's limit: (the tests' unmutated time + constant) * multiplier
        timeout_constant=float(timeout),
        use_git_change_detection=False,
        process_isolation="forkserver",
        forkserver_warmup="import",
        preload_modules_file=str(preload),
    )
    write_mutmut_config(snap / "pyproject.toml", settings)


def choose(every: list[str], patterns: str, max_mutants: int, seed: int, links: dict[str, str]) -> list[str]:
    if patterns:
        wanted = [import_name(m.strip(), links) for m in patterns.split(",") if m.strip()]
        every = [n for n in every if any(fnmatch.fnmatchcase(n, w) for w in wanted)]
        if not every:
            raise SystemExit("error: no mutant of the files matches --mutants")
    if not max_mutants or max_mutants >= len(every):
        return sorted(every)
    return sorted(random.Random(seed).sample(sorted(every), max_mutants))


def describe_source(source: Path, files: list[str]) -> str:
    git = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if git.returncode != 0:
        return str(source)
    dirty = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain", "--", *files], capture_output=True, text=True
    ).stdout.strip()
    return f"{source} at {git.stdout.strip()}" + (" with uncommitted changes to the mutated files" if dirty else "")


def fixture_env(work: Path, cache_on: bool) -> dict:
    """The environment of mutmut and its pytest sessions; with the fixtures built once under cache_on."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTEST_DEBUG_TEMPROOT": str(work / "tmp"),
    }
    if not cache_on:
        return env
    cache = work / "fixture-cache"
    env["EDGECLS_TEST_FIXTURE_CACHE"] = str(cache)
    print("building the session fixtures once (unmutated) ...", flush=True)
    if not build_fixture_cache(work / "snapshot", cache, env):
        print(
            "warning: tests/conftest.py ignores EDGECLS_TEST_FIXTURE_CACHE: every mutant rebuilds its fixtures",
            flush=True,
        )
        del env["EDGECLS_TEST_FIXTURE_CACHE"]
    return env


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else "unknown CPU"


def main(argv=None) -> int:
    args = parse_args(argv)
    import mutmut

    start = time.monotonic()
    source, work = Path(args.source).resolve(), Path(args.workdir).resolve()
    snap = work / "snapshot"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    snapshot(source, snap)
    links = package_links(snap)
    files = python_files([p.strip() for p in args.paths.split(",") if p.strip()], snap, links)
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    prepare_mutants(snap, links)
    configure(snap, work, files, tests, args.timeout)
    env = fixture_env(work, not args.no_fixture_cache)
    cached = "EDGECLS_TEST_FIXTURE_CACHE" in env

    by_file = enumerate_mutants(snap, files)
    every = [n for names in by_file.values() for n in names]
    sample = choose(every, args.mutants, args.max_mutants, args.seed, links)
    print(f"{len(every)} mutants in {len(files)} files; running {len(sample)}", flush=True)

    log = work / "mutmut.log"
    mutant_start = time.monotonic()
    code = run_mutmut(snap, sample, args.max_children, env, log)
    log_text = log.read_text(errors="replace")
    if code != 0 or "mutations/second" not in log_text:
        print(log_text[-4000:])
        raise SystemExit(f"error: mutmut failed (exit {code}); full log in {log}")
    rows = collect_results(snap, by_file, set(sample))
    # mutmut's rate counts the mutants it ran tests for ("no tests" ones are settled without a run).
    rate = float(re.findall(r"([\d.]+) mutations/second", log_text)[-1])
    ran = sum(r["status"] not in ("no tests", "not checked") for r in rows)
    mutant_phase = ran / rate if rate else time.monotonic() - mutant_start
    meta = {
        "tool": f"mutmut {mutmut.__version__}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "source": describe_source(source, [repo_path(f, links) for f in files]),
        "note": args.note,
        "files": files,
        "tests": tests,
        "generated": len(every),
        "generated_by_file": {f: len(n) for f, n in by_file.items()},
        "sampled": len(sample),
        "chosen_by": f"--mutants {args.mutants}" if args.mutants else f"seed {args.seed}",
        "timeout_s": args.timeout,
        "max_children": args.max_children,
        "fixture_cache": cached,
        "summary": summarize(rows),
        "wall_s": round(time.monotonic() - start, 1),
        "mutant_phase_s": round(mutant_phase, 1),
        "mutants_run": ran,
        "seconds_per_mutant": round(mutant_phase / max(1, ran), 2),
    }
    if args.baseline:
        meta["baseline"] = compare(Path(args.baseline), rows, links)
    out = REPO / "benchmarks" / "results" / args.name
    write_report(out, meta, rows)
    s = meta["summary"]
    print(
        f"score {s['score']}% ({s['caught']}/{s['tested']}); {meta['seconds_per_mutant']} s per mutant; "
        f"wrote {out}.txt and .json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
