"""The appliance tests' fixtures (a real origin, appliances on loopback), shared here."""

from tests.appliance.conftest import make_appliance, origin  # noqa: F401
