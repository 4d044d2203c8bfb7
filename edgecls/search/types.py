"""What the parts of `edgecls search` hand each other: the request, a candidate, a device measurement, a trial.

Everything here is plain data that round-trips through JSON (`to_dict`/`from_dict`), since trials are kept on disk
(OUT/trials/NNNN/trial.json) and read back by a resumed search, a second worker and the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

# How a trial ended. `pruned` never reached the device: the latency model said it cannot meet the budget.
PRUNED, OVER_BUDGET, GATE_FAILED, FAILED, MEETS = "pruned", "over-budget", "gate-failed", "failed", "meets-budget"
STATUSES = (PRUNED, OVER_BUDGET, GATE_FAILED, FAILED, MEETS)


def _from(cls, data: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Budget:
    """What the chosen artifact must meet on the device; None: not limited."""

    latency_ms: float
    ram_mb: float | None = None  # peak RSS of the bench worker running the artifact
    size_mb: float | None = None  # the artifact file

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Budget:
        return _from(cls, data)


@dataclass(frozen=True)
class Candidate:
    """One point of the search space, before training. `model` and `model_options` are what
    `edgecls.train.TrainConfig` takes; `macs`/`params` are counted on the Keras graph (converters/macs.py)."""

    model: str  # a registered model name: simple, mobilenetv2, mobilenetv3small, mobilenetv3large, efficientnetb0
    image_size: int
    resize: str  # the preprocessing resize mode (runtime.preprocess)
    model_options: dict = field(default_factory=dict)
    macs: int = 0
    params: int = 0

    def key(self) -> str:
        """Stable identity: two trials with the same key are the same candidate."""
        import json

        return json.dumps(
            {"model": self.model, "size": self.image_size, "resize": self.resize, "options": self.model_options},
            sort_keys=True,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Candidate:
        return _from(cls, data)


@dataclass(frozen=True)
class Measurement:
    """The artifact's figures on the device, from the bench worker (runtime/bench)."""

    artifact: str  # e.g. tflite-int8
    engine: str  # the engine that ran it, e.g. litert
    latency_ms: float  # p50 of invoke
    latency_p90_ms: float | None = None
    peak_rss_mb: float | None = None
    size_mb: float | None = None
    device: str = ""  # what was measured: "local", "user@host:port", with the machine's CPU model
    emulated: str | None = None  # runtime.bench.machine.emulation(): set when the device runs under qemu-user
    seconds: float = 0.0  # wall time the measurement took (the device's time that pruning saves)
    started: float = 0.0  # time.time() when the device was taken (its lock held) and when it was let go: two
    ended: float = 0.0  # measurements of one device never overlap, whichever process or host asked
    threads: int | None = None  # the engine's threads it ran at; None: the backend's default (or not recorded)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        return _from(cls, data)


@dataclass
class Trial:
    """One candidate's whole story; written to OUT/trials/NNNN/trial.json after every stage."""

    number: int
    candidate: Candidate
    status: str | None = None  # one of STATUSES once finished; None while running
    predicted_ms: float | None = None  # the latency model's estimate when the trial was decided on
    val_accuracy: float | None = None  # Keras model on the validation split: what the search maximises
    test_accuracy: float | None = None  # the shipped int8 artifact on the test split (convert's verification)
    measurement: Measurement | None = None
    reason: str = ""  # one line: why pruned / over budget / failed
    run_dir: str | None = None  # OUT/trials/NNNN/run
    bundle_dir: str | None = None  # OUT/trials/NNNN/bundle
    train_seconds: float = 0.0
    convert_seconds: float = 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["candidate"] = self.candidate.to_dict()
        data["measurement"] = self.measurement.to_dict() if self.measurement else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Trial:
        data = dict(data)
        data["candidate"] = Candidate.from_dict(data["candidate"])
        if data.get("measurement"):
            data["measurement"] = Measurement.from_dict(data["measurement"])
        return _from(cls, data)
