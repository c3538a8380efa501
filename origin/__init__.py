"""The origin: the title store, ingest, and the HTTP server appliances fill from."""
