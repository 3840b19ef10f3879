"""The restart rule both launchers follow: lost workers are restarted, an error that would
repeat (raised without a newer checkpoint since its attempt began) is not."""

from __future__ import annotations

from ai_distributed_training.errors import DESYNC_CHECK, RankFailure, WorkerFailedError
from ai_distributed_training.launch.ray_launcher import _rank_failure
from ai_distributed_training.launch.restarts import RestartPolicy


class ActorDiedError(Exception):
    """Named as Ray's: how Ray reports a worker process that died (killed, OOM, node lost)."""


def _policy(steps: list[int]) -> RestartPolicy:
    """A policy whose progress is the last of ``steps`` (append to make progress)."""
    return RestartPolicy(lambda: steps[-1])


RAISED = RankFailure(1, 1, None, "ValueError: a bug in forward", "Traceback ...")


def test_an_error_raised_without_progress_is_not_restarted_and_with_progress_is() -> None:
    steps = [-1]
    policy = _policy(steps)
    reason = policy.why_not_restart(RAISED)
    assert reason is not None and "attempt 1 raised before any checkpoint" in reason
    steps.append(4)  # the next attempt wrote step 4's checkpoint, then raised
    assert policy.why_not_restart(RAISED) is None
    reason = policy.why_not_restart(RAISED)  # again at step 4: no progress since
    assert reason is not None and "attempt 3 raised after checkpoint step 4" in reason


def test_lost_workers_are_restarted_without_progress() -> None:
    killed = RankFailure(0, -9, "SIGKILL", "the process was killed by SIGKILL", "")
    peer = RankFailure(1, 1, None, "DistBackendError: Connection closed by peer", "")
    died_on_ray = _rank_failure(0, ActorDiedError("The actor died unexpectedly"))
    assert "worker process died" in died_on_ray.message
    for failure in (killed, peer, died_on_ray):
        assert _policy([-1]).why_not_restart(failure) is None, failure
    # The same rank failing by raising is not a lost worker.
    assert _policy([-1]).why_not_restart(_rank_failure(0, ValueError("bad"))) is not None


def test_a_timeout_where_every_rank_waited_suggests_mismatched_collectives() -> None:
    """Every rank timed out in a collective (none stuck elsewhere): the ranks ran different
    collectives, e.g. ctx.step on some ranks only under FSDP; torch's desync check names it."""
    timed_out = "RuntimeError: [gloo] Timed out waiting 30000ms for recv operation to complete"
    both = [RankFailure(0, 1, None, timed_out, ""), RankFailure(1, 1, None, timed_out, "")]
    message = str(WorkerFailedError(both))
    assert "every failed rank timed out in a collective itself" in message
    assert f"run with the environment variable {DESYNC_CHECK}" in message
    stuck = [both[0], RankFailure(1, -15, "SIGTERM", "stopped by the agent", "")]
    assert "likely stuck): [1]" in str(WorkerFailedError(stuck))
