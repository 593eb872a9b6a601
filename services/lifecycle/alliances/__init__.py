"""Alliances (stream `alliance-<partner_id>`): phases, renewal, exit, termination, satisfaction."""
