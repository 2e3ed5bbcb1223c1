"""One fit: the epoch loop shared by a solo trial and a fused stack (``train``, ``stacked``), its
complete state on disk (``checkpoint``), LE's shared teachers and a config run end to end (``run``)."""
