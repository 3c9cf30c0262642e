"""Gradient-degradation defenses, each with its attacker-side simulation."""
