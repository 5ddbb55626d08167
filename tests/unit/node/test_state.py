from __future__ import annotations

from worcr_node.state import FINAL, TRANSITIONS, JobState, Transition, can


def test_every_state_is_reachable_and_final_states_only_leave_by_operator_retry() -> None:
    reached = set()
    for _sources, targets in TRANSITIONS.values():
        reached |= targets
    assert reached == set(JobState)
    for transition, (sources, _targets) in TRANSITIONS.items():
        if sources & FINAL:
            assert transition is Transition.RETRY_NOW


def test_one_live_attempt_only_dispatch_enters_running() -> None:
    into_running = [t for t, (_s, targets) in TRANSITIONS.items() if JobState.RUNNING in targets]
    assert into_running == [Transition.DISPATCH]
    assert can(Transition.DISPATCH, JobState.QUEUED, JobState.RUNNING)
    assert not can(Transition.DISPATCH, JobState.SCHEDULED, JobState.RUNNING)


def test_results_need_a_running_job() -> None:
    for t in (Transition.ACK, Transition.FAIL_RETRY, Transition.FAIL_FINAL, Transition.YIELD):
        assert TRANSITIONS[t][0] == frozenset({JobState.RUNNING})
    assert not can(Transition.ACK, JobState.CANCELLED, JobState.COMPLETED)
    assert not can(Transition.EXPIRE, JobState.RUNNING, JobState.EXPIRED)
