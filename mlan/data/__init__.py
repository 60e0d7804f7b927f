"""Mixture building: sources, adapters, templates, hygiene, manifest."""
