"""Standalone mode: `meshsec-agent --config FILE` runs IKE connections from a YAML file, no controller."""
