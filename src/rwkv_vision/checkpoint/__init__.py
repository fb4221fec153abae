"""Checkpoints: reading and writing files, the Hugging Face Hub, config.json, the official key layouts.

This package depends on the models and never the reverse (a model's ``from_pretrained`` is a thin entry
point that calls in here).
"""
