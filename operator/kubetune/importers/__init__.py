"""Importers: another tool's training config in, a FineTuneJob manifest out (`kubetune import ...`).

Pure functions over dicts (no I/O, no Kubernetes): the CLI reads the files and writes the manifest. Every key
of the source config is either carried into the manifest or listed with the reason it is not.
"""
