"""Experiments that back claims made in the notebooks; each writes its results to a JSON file under ``docs/``."""
