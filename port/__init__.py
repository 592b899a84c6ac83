"""The reference's `protean.port` import paths: `from tidings.port.broker import BrokerCapabilities`."""
