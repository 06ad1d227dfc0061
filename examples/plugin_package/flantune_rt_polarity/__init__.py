"""Example flantune task plugin: its task files sit beside this file and are found through the `flantune.tasks` entry point."""
