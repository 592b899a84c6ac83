"""The broker port at the reference's import path (`protean.port.broker`).

`BaseBroker` is Tidings' `Broker` (a custom adapter subclasses it and implements `_publish`,
`_read`, `_ack`, `_nack`); `BrokerCapabilities` is `BrokerCapability`, with the reference's
member names as aliases.
"""

from tidings.domain.brokers import (
    Broker,
    BrokerCapabilities,
    BrokerCapability,
    Brokers,
)
from tidings.domain.inline_broker import InlineBroker

BaseBroker = Broker

__all__ = ["BaseBroker", "Broker", "BrokerCapabilities", "BrokerCapability", "Brokers", "InlineBroker"]
