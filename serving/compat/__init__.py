"""Compatibility checks between our exports and the TF Serving image production runs.

`check_runtime` loads an export with the TensorFlow the pinned image is built
on (see `image_runtimes`), through TensorFlow's C API as TF Serving does, and
compares its answers with the exporter's TensorFlow.
"""
