"""Bringing an existing IPVS configuration over: keepalived.conf and ipvsadm-save.

Each importer turns text into an `ImportResult` (carom services, the interfaces,
and a note for every construct carom cannot carry over); `carom import` writes
it as carom.yaml and validates it with carom's own loader."""
