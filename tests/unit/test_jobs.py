"""The state rules in jobs.py, which the job store's guarded updates take their sources from."""

from __future__ import annotations

from smap_stt.jobs import ACTIVE_STATES, FINAL_STATES, TRANSITIONS, JobStatus, sources


def test_a_final_state_never_changes() -> None:
    assert all(not TRANSITIONS[state] for state in FINAL_STATES)
    assert set(TRANSITIONS) == set(JobStatus)


def test_where_each_state_can_be_reached_from() -> None:
    assert sources(JobStatus.COMPLETED) == {JobStatus.PROCESSING}
    assert sources(JobStatus.PENDING) == {JobStatus.PROCESSING}  # handed back
    assert sources(JobStatus.PROCESSING) == ACTIVE_STATES  # claimed, or taken over
    assert sources(JobStatus.FAILED) == sources(JobStatus.CANCELLED) == ACTIVE_STATES
