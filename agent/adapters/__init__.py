"""asyncio glue around the sans-IO IKE engine: sockets, timers, events and the data-plane hook."""
