"""Built-in flantune tasks, one YAML file each. This file only lets the wheel ship the folder as package data."""
