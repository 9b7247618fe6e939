"""The command line (``customer-upsert``) and the local dev stack; a client of the API, not part of it."""
