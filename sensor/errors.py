"""One base error for everything the library raises on purpose; the CLI turns them into messages."""


class SensorError(Exception):
    """Base of the sensor's own errors."""


class CaptureError(SensorError):
    """A capture file or interface could not be opened or read."""


class ConfigError(SensorError):
    """A setting is missing or invalid."""
