"""What a rollout will do before it does anything: canaries, waves, watch durations and the promotion criteria."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

from edgecls.runtime.errors import EdgeclsError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, option: str) -> float:
    """`15m`, `20s`, `1h`, `90` (seconds) -> seconds."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise EdgeclsError(f"{option} {text!r} is not a duration: write e.g. 20s, 15m or 1h")
    return float(m[1]) * _UNITS[m[2]]


def parse_share(text: str, option: str) -> tuple:
    """`10%` -> ("percent", 10.0); `2` -> ("count", 2)."""
    text = str(text).strip()
    try:
        if text.endswith("%"):
            value = float(text[:-1])
            if 0 < value <= 100:
                return ("percent", value)
        elif int(text) >= 1:
            return ("count", int(text))
    except ValueError:
        pass
    raise EdgeclsError(f"{option} {text!r}: write a share such as 10% (over 0, at most 100%) or a device count")


def count_of(share: tuple, total: int) -> int:
    """How many of `total` devices a share names: at least one, at most all."""
    kind, value = share
    n = math.ceil(total * value / 100 - 1e-9) if kind == "percent" else value
    return max(1, min(total, n))


def choose_canaries(devices: list, share: tuple) -> list:
    """The canaries: devices marked canary=true, then the first watched devices of the file, up to the share.

    Deterministic (the file's order), and watched devices first: a canary nobody can watch proves nothing."""
    want = count_of(share, len(devices))
    marked = [d for d in devices if d.canary]
    rest = [d for d in devices if not d.canary]
    rest.sort(key=lambda d: d.metrics_url is None)  # stable: file order within watched / unwatched
    return (marked + rest)[: max(want, len(marked))]


def plan_waves(devices: list, canaries: list, waves_text: str) -> list:
    """[[canary names], [wave 1 names], ...]: `waves_text` (e.g. `25%,100%`) are cumulative shares of the rest."""
    names = {d.name for d in canaries}
    rest = [d.name for d in devices if d.name not in names]
    shares = [parse_share(w, "--waves") for w in str(waves_text).split(",") if w.strip()]
    if not shares:
        raise EdgeclsError(f"--waves {waves_text!r}: write cumulative shares such as 25%,100%")
    for earlier, share in zip(shares, shares[1:]):
        same = earlier[0] == share[0]
        if (same and share[1] <= earlier[1]) or count_of(share, len(rest)) < count_of(earlier, len(rest)):
            raise EdgeclsError(
                f"--waves {waves_text!r}: the shares are cumulative and must grow, each including the waves "
                f"before it: write e.g. 25%,50%,100%"
            )
    plan, done = [[d.name for d in canaries]], 0
    for share in shares:
        upto = count_of(share, len(rest)) if rest else 0
        if upto > done:
            plan.append(rest[done:upto])
            done = upto
    if done < len(rest):  # the last share is below 100%: the rest still goes, in a last wave
        plan.append(rest[done:])
    return plan


@dataclass(frozen=True)
class Criteria:
    """What a watched device must show, against its own window before and the not-yet-updated devices."""

    fps: float = 0.8  # frames/s at least this times its own before
    others: float = 0.8  # its after/before at least this times the median after/before of those not yet updated
    confidence: float = -0.1  # mean top-1 confidence at least its own before plus this
    drift: bool = True  # no drift where there was none
    reloads: bool = True  # no refused reload
    health: bool = True  # /healthz answered 200 throughout

    def describe(self) -> str:
        checks = [
            f"fps >= {self.fps:g}x its own before",
            f"fps change >= {self.others:g}x the others' median change",
            f"mean confidence >= its own before {self.confidence:+g}",
        ]
        checks += [w for w, on in (("no new drift", self.drift), ("no refused reload", self.reloads)) if on]
        checks += ["healthy"] if self.health else []
        return ", ".join(checks)

    def to_dict(self) -> dict:
        return asdict(self)


_NUMBERS = {"fps", "others", "confidence"}
_SWITCHES = {"drift", "reloads", "health"}


def parse_criteria(text: str | None) -> Criteria:
    """`--promote-if fps>=0.8,others>=0.5,confidence>=-0.05,drift=off`: each item overrides one default."""
    if not text:
        return Criteria()
    given: dict = {}
    names = ", ".join(f.name for f in fields(Criteria))
    for item in str(text).split(","):
        item = item.strip()
        m = re.match(r"^([a-z]+)\s*(>=|=)\s*(\S+)$", item)
        if not m or m[1] not in _NUMBERS | _SWITCHES or (m[2] == ">=") != (m[1] in _NUMBERS):
            raise EdgeclsError(
                f"--promote-if: cannot read {item!r}: write fps>=RATIO, others>=RATIO, confidence>=DELTA, "
                f"drift=on|off, reloads=on|off, health=on|off (criteria: {names})"
            )
        if m[1] in _NUMBERS:
            try:
                given[m[1]] = float(m[3])
            except ValueError:
                raise EdgeclsError(f"--promote-if: {item!r}: {m[3]!r} is not a number") from None
            low, high, what = (-1.0, 1.0, "delta from -1 to 1") if m[1] == "confidence" else (0.0, math.inf, "ratio")
            if not (math.isfinite(given[m[1]]) and low <= given[m[1]] <= high):  # nan would pass every device
                raise EdgeclsError(
                    f"--promote-if: {item!r}: write a finite {what}, e.g. {m[1]}>={0.8 if low == 0 else -0.1}"
                )
        elif m[3] in ("on", "off"):
            given[m[1]] = m[3] == "on"
        else:
            raise EdgeclsError(f"--promote-if: {item!r}: write {m[1]}=on or {m[1]}=off")
    return Criteria(**given)
