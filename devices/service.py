"""The daemon's systemd unit: defined in the runtime (edgecls.runtime.install.unit), as the device writes it itself."""

from edgecls.runtime.install.unit import UnitOptions, unit_text

__all__ = ["UnitOptions", "unit_text"]
