"""Creating workers: torch elastic on this host (one host or one of many: :mod:`.elastic`),
the worker entry (:mod:`.worker`), and the files through which a job and its result travel
(:mod:`.handover`). Process creation only: what a rank does is :mod:`..training`'s.

Nothing is imported here: a worker process loads this package first, and must stay light until
it has armed its die-with-its-parent guard.
"""
