"""The event backbone: catalog, CloudEvents envelope, event store, log API, relay, subscriptions.

This package is the one place that knows about the store, the envelope and Kafka;
services speak in the domain events of `events.catalog`.
"""
