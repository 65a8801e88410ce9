"""meshctl: the admin CLI (apply/get/describe/topology/events against the controller) and the local lab."""
