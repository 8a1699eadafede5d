"""Monitoring of a Flower service: alert rules, Grafana dashboard generator, targets from OneGate."""
