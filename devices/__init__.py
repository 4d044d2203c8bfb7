"""Device profiles: which artifact, backend, execution providers, threads and camera suit a device."""

from edgecls.devices.profiles import DeviceProfile, list_profiles, load_profile

__all__ = ["DeviceProfile", "list_profiles", "load_profile"]
