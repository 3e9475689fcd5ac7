"""Optuna studies shipped with nesfgen (TOML files, loaded by name)."""
