"""The remote-access gateway around the IKE engine (docs/remote-access.md): where road warriors'
virtual addresses come from (a local pool in standalone mode), who holds which lease, and the
connect / disconnect / refusal record of each client."""
