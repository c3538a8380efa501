"""The control plane: accounts, catalog, playback API, events, watch page."""
