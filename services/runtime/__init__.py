"""Shared plumbing every partnerhub service is built from (written once, reused)."""
