"""The background process that serves mounts: :mod:`~modelkitfs.daemon.process` is how it is
started and reports, :mod:`~modelkitfs.daemon.serving` the FUSE session it runs for one kit,
:mod:`~modelkitfs.daemon.service` the node service's (every kit under one root), and
:mod:`~modelkitfs.daemon.metrics` what it tells Prometheus. :mod:`modelkitfs.mount` starts it
and talks to it; it opens kits through :mod:`modelkitfs.session` and serves them through
:mod:`modelkitfs.fuse`."""
