"""The cache appliance: tiers, eviction policies, coalesced fill, HTTP server."""
