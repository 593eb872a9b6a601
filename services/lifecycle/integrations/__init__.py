"""Integrations (stream `integration-<id>`): registration, attempts, go-live, health and SLA."""
