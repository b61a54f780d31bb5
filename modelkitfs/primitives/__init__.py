"""Building blocks that know nothing of kits, registries or caches, used from every layer:
a call within a deadline (:mod:`~modelkitfs.primitives.deadline`), a blocking call that may
never return (a folder whose FUSE daemon is stopped) waited for at most so long
(:mod:`~modelkitfs.primitives.calls`), one flight of work shared by every caller who asks for
it at once (:mod:`~modelkitfs.primitives.singleflight`), digest strings checked and computed
(:mod:`~modelkitfs.primitives.digests`), memory aligned for direct I/O
(:mod:`~modelkitfs.primitives.buffers`), and the machine's mount table
(:mod:`~modelkitfs.primitives.mountinfo`)."""
