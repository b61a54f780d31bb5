"""Building blocks that know nothing of kits, registries or caches, used from every layer:
a call within a deadline (:mod:`~modelkitfs.primitives.deadline`), one flight of work shared
by every caller who asks for it at once (:mod:`~modelkitfs.primitives.singleflight`), digest
strings checked and computed (:mod:`~modelkitfs.primitives.digests`), memory aligned for
direct I/O (:mod:`~modelkitfs.primitives.buffers`), and the machine's mount table
(:mod:`~modelkitfs.primitives.mountinfo`)."""
