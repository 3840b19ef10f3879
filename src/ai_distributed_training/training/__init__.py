"""ONE rank's work, the same under our launcher, torchrun, Ray and one process: the rank's set-up
(:mod:`.rank`), the loop (:mod:`.loop`), the step (:mod:`.step`, :mod:`.custom`), resuming
(:mod:`.resume`), the strategies (:mod:`.strategies`) and what they are built from
(:mod:`.job`)."""
