"""The controller-connected agent (docs/agent.md): enrollment, desired-state watch, the
level-triggered reconciler, status reports, metrics and the process around them."""
