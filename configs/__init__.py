"""Built-in flantune configs (YAML). This file only lets the wheel ship the folder as package data."""
