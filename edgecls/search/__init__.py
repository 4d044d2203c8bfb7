"""`edgecls search`: the most accurate model that meets a latency (and memory, size) budget on the target device,
with the latency measured on that device, of the int8 artifact that would ship.

Every candidate is a point of the search space (`space.py`: architecture and width/depth, input size, resize
mode). Its multiply-accumulates are counted from the Keras graph before any training; the latency model
(`latency.py`), fitted to the device's measurements so far (MACs -> ms), prunes candidates that cannot meet the
budget before they are trained, so the device is only asked about plausible ones. A plausible candidate is
trained (short schedule, early-stopped: `edgecls.train`), converted to the artifact the device runs (int8
through the accuracy gate: `edgecls.converters`), and measured on the device (`device.py`: local, SSH or the
emulated Pi, with the bench's worker; one measurement at a time per device, across every search process).
Optuna drives the search (`study.py`: multi-objective, constraints, a journal file that makes it resumable after
a kill and shareable by workers on several machines). `report.py` writes the trials table (CSV, JSON), the
Pareto front (PNG) and picks the chosen trial, whose run and bundle are copied to OUT.

The types every part shares are in `types.py`.
"""
