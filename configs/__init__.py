"""Experiment configs: one Python file per kind of run, each with `get_config(arg=None)`."""
