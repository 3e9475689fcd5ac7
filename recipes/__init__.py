"""Training recipes shipped with nesfgen (TOML files, loaded by name)."""
