"""The small shared runtime the server, the client and the agent all use.

``logs`` (structlog, configured once by an entry point), ``lifeline`` (die with the parent
process), ``sockets`` (drain a ZeroMQ socket), ``report`` (text tables), ``errors`` (the base
error), ``smoothing`` (the moving average runtimes are learned with). Depends on nothing of
ours; each module is imported on its own, so this ``__init__`` imports nothing.
"""
