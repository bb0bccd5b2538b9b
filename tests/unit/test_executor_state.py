"""The executor's state machine as transcripts: events in, commands out, with literal times and
the rules checked after every step. No Parsl, no sockets, no threads."""

from __future__ import annotations

import pytest

from dispatcher.client.errors import DispatcherUnavailable
from parsl_adapter import events as e
from parsl_adapter.placement import Placed, Plan, PlanningError
from parsl_adapter.plancache import restore
from parsl_adapter.window import WindowConfig

from .executor_transcript import Transcript, graph, kinds, launch, network, only, plan, resolved

pytestmark = pytest.mark.unit


def planned_window(
    t: Transcript, launches: list[e.Launch], placed: dict[int, tuple[str, float, float]], now: float,
    gating: frozenset[int] = frozenset(), extra: tuple[int, ...] = (),
) -> list[e.Command]:  # fmt: skip
    """Launch ``launches`` on an idle executor and answer its window with ``placed`` (from SAGA)."""
    for i, item in enumerate(launches):
        out = t(e.TaskLaunched(item, now))
        if i == 0:
            assert kinds(out) == ["BuildWindowGraph"]
    build = only(out, e.BuildWindowGraph)[0] if len(launches) == 1 else None
    batch = build.batch if build is not None else tuple(launches[:1])
    tids = tuple(sorted({x.tid for x in batch} | set(extra)))
    out = t(e.WindowGraphBuilt(batch, tids, graph(tids), gating, now))
    if kinds(out) != ["RunPlanner"]:
        return out  # from the plan cache
    job = only(out, e.RunPlanner)[0].job
    result = plan(placed)
    net = job.network or network(*{node for node, _, _ in placed.values()})
    return t(e.PlannerReturned(job, result, result, None, net, 0.01, 0.02, now))


GATED: dict[int, tuple[str, float, float]] = {1: ("a", 0.0, 1.0), 2: ("a", 1.0, 2.0), 3: ("a", 2.0, 3.0)}
"""A plan on node a: 1, then 2 (gating: it waits on 1), then 3."""


def held_behind_a_gate(t: Transcript) -> e.Launch:
    """Plan GATED with task 1 launched and in flight, then launch 3: it is held back behind 2,
    which has not launched. Returns 3's launch."""
    planned_window(t, [launch(1)], GATED, 0.0, gating=frozenset({2}), extra=(2, 3))
    later = launch(3)
    assert t(e.TaskLaunched(later, 0.1)) == []  # launched, held back behind 2
    return later


# --------------------------------------------------------------------------- plan and release


def test_a_lone_launch_on_an_idle_executor_is_planned_at_once_and_sent_to_its_node() -> None:
    t = Transcript()
    one = launch(1)
    out = t(e.TaskLaunched(one, 0.0))
    assert out == [e.BuildWindowGraph((one,), 128)]
    out = t(e.WindowGraphBuilt((one,), (1,), graph([1]), frozenset(), 0.0))
    (run,) = only(out, e.RunPlanner)
    assert run.job.network is None  # nobody asked the dispatcher yet: the planner will
    result = plan({1: ("b", 0.0, 1.0)})
    out = t(e.PlannerReturned(run.job, result, result, None, network("a", "b"), 0.01, 0.02, 0.03))
    assert only(out, e.Send) == [e.Send(one, "b", 0.0)]
    assert t.state.speeds == {"a": 1.0, "b": 1.0}
    outcome = resolved(2)
    out = t(e.TaskResolved(one, outcome, "b", 0.5, 1.0))
    assert out == [e.Resolve(one, outcome)]
    assert t.state.ran_on[1] == "b"
    assert t.state.runtimes.estimate("f") == 0.5


def test_a_stream_is_planned_in_windows_while_tasks_are_in_flight() -> None:
    t = Transcript(window=WindowConfig(flush_idle_s=0.02, plan_idle_s=1.0, max_held=100, max_delay_s=0.005))
    planned_window(t, [launch(1)], {1: ("a", 0.0, 1.0)}, 0.0)  # in flight now
    assert t(e.TaskLaunched(launch(2), 0.001)) == []  # busy: held for company
    assert t(e.TaskLaunched(launch(3), 0.002)) == []
    assert t(e.Ticked(0.004)) == []
    out = t(e.Ticked(0.0061))  # the oldest has waited max_delay_s
    (build,) = only(out, e.BuildWindowGraph)
    assert [x.tid for x in build.batch] == [2, 3]


def test_a_window_is_capped_and_what_is_left_goes_in_the_next_one() -> None:
    t = Transcript(max_plan_tasks=2)
    planned_window(t, [launch(1)], {1: ("a", 0.0, 1.0)}, 0.0)
    for tid in (2, 3, 4):
        t(e.TaskLaunched(launch(tid), 0.001))
    out = t(e.Ticked(1.0))
    (build,) = only(out, e.BuildWindowGraph)
    assert [x.tid for x in build.batch] == [2, 3] and build.cap == 2
    assert [x.tid for x in t.state.held] == [4]


def test_deep_tasks_planned_by_the_first_window_leave_when_launched_without_a_new_plan() -> None:
    t = Transcript()
    first, deep = launch(1), launch(2)
    out = planned_window(t, [first], {1: ("a", 0.0, 1.0), 2: ("b", 1.0, 2.0)}, 0.0, extra=(2,))
    assert only(out, e.Send) == [e.Send(first, "a", 0.0)]
    t(e.TaskResolved(first, resolved(1), "a", 1.0, 1.0))
    out = t(e.TaskLaunched(deep, 1.1))  # registered with the first window, launched now
    assert out == [e.Send(deep, "b", 1.0)]


def test_incremental_plan_a_task_registered_after_a_plan_gets_a_window_of_its_own() -> None:
    t = Transcript()
    planned_window(t, [launch(1)], {1: ("a", 0.0, 1.0)}, 0.0)
    t(e.TaskResolved(t.state.in_flight[1], resolved(1), "a", 1.0, 1.0))
    late = launch(7)
    out = planned_window(t, [late], {7: ("b", 5.0, 6.0)}, 5.0)
    assert only(out, e.Send) == [e.Send(late, "b", 5.0)]
    assert t.state.epoch == 2
    assert [p["epoch"] for p in t.state.plans] == [1, 2]


def test_a_gating_task_holds_later_ranked_launches_on_its_node_back_until_it_launches() -> None:
    t = Transcript()
    gate = launch(2)
    later = held_behind_a_gate(t)
    assert t.state.waiting == {3: later}
    out = t(e.TaskLaunched(gate, 1.0))
    assert only(out, e.Send) == [e.Send(gate, "a", 1.0), e.Send(later, "a", 2.0)]


def test_a_gating_task_that_ends_unlaunched_lets_the_others_go() -> None:
    t = Transcript()
    later = held_behind_a_gate(t)
    assert t.state.blocking() == [2]
    out = t(e.LaunchesEnded((2,), 0.5))  # its dependency failed: Parsl never launches it
    assert out == [e.Send(later, "a", 2.0)]


# --------------------------------------------------------------------------- cache, retry, history


def test_a_plan_saga_made_for_the_same_shape_comes_from_the_plan_cache() -> None:
    t = Transcript()
    t(e.NodesListed((("a", 1.0), ("b", 1.0)), 0.0))  # the network is known: plans are memoizable
    first = launch(1)
    t(e.TaskLaunched(first, 0.0))
    out = t(e.WindowGraphBuilt((first,), (1,), graph([1]), frozenset(), 0.0))
    (run,) = only(out, e.RunPlanner)
    assert run.job.canon is not None
    raw = Plan({"t0": Placed("b", 0.0, 1.0)}, 1.0, "HEFT")
    t(e.PlannerReturned(run.job, restore(raw, run.job.canon), raw, run.job.canon, network("a", "b"), 0.1, 0.1, 0.1))
    t(e.TaskResolved(first, resolved(1), "b", 1.0, 1.0))
    again = launch(2)
    assert kinds(t(e.TaskLaunched(again, 2.0))) == ["BuildWindowGraph"]
    out = t(e.WindowGraphBuilt((again,), (2,), graph([2]), frozenset(), 2.0))
    assert out == [e.Send(again, "b", 0.0)]  # no planner: the same shape, the same plan
    assert t.state.plan_cache.hits == 1
    assert t.state.plans[-1]["cached"] is True


def test_a_retry_keeps_its_placement_and_counts_once_in_the_history() -> None:
    t = Transcript(history_size=10)
    first = launch(1)
    planned_window(t, [first], {1: ("a", 0.0, 1.0)}, 0.0)
    t(e.TaskResolved(first, resolved(error=ValueError("flaky")), "a", 0.1, 0.5))
    retry = launch(1)  # Parsl's retry: the same task id, a new submit()
    out = t(e.TaskLaunched(retry, 0.6))
    assert out == [e.Send(retry, "a", 0.0)]
    assert 1 not in t.state.done
    t(e.TaskResolved(retry, resolved(1), "a", 0.1, 1.0))
    assert len(t.state.history) == 1


def test_finished_tasks_are_forgotten_beyond_history_size() -> None:
    t = Transcript(history_size=2)
    for tid in (1, 2, 3):
        one = launch(tid)
        planned_window(t, [one], {tid: ("a", 0.0, 1.0)}, float(tid))
        t(e.TaskResolved(one, resolved(tid), "a", 0.1, tid + 0.5))
    assert sorted(t.state.plan) == [2, 3]
    assert sorted(t.state.ran_on) == [2, 3]


# --------------------------------------------------------------------------- plan() blocks


def test_inside_plan_launches_wait_for_the_block_to_end_then_are_planned_whole() -> None:
    t = Transcript()
    assert t(e.HoldingChanged(+1, 0.0)) == []
    for tid in range(1, 5):
        assert t(e.TaskLaunched(launch(tid), 0.01 * tid)) == []  # idle, but the block decides
    assert t(e.Ticked(0.5, registered=10)) == []
    out = t(e.HoldingChanged(-1, 0.6))
    (build,) = only(out, e.BuildWindowGraph)
    assert [x.tid for x in build.batch] == [1, 2, 3, 4] and build.cap is None


def test_inside_plan_a_block_without_activity_for_plan_idle_s_is_planned_anyway() -> None:
    """A ``.result()`` inside the block stops registrations: waiting for the block would deadlock."""
    t = Transcript()
    t(e.HoldingChanged(+1, 0.0))
    t(e.TaskLaunched(launch(1), 0.1))
    assert t(e.Ticked(1.0, registered=1)) == []
    assert kinds(t(e.Ticked(2.1, registered=1))) == ["BuildWindowGraph"]  # plan_idle_s = 1 s without news


# --------------------------------------------------------------------------- node loss and re-plans


def test_a_dead_node_s_unfinished_tasks_are_replanned_queued_ones_repinned_held_back_ones_released() -> None:
    t = Transcript()
    gate = launch(2)
    later = held_behind_a_gate(t)
    out = t(e.NodeChanged("a", "dead", 1.0, 0.5))
    (build,) = only(out, e.BuildReplanGraph)
    assert build == e.BuildReplanGraph("a", (1, 2, 3))
    assert t.state.speeds == {}
    out = t(e.ReplanGraphBuilt("a", (1, 2, 3), graph([1, 2, 3]), 0.5))
    (run,) = only(out, e.RunPlanner)
    assert run.job.kind == "replan" and run.job.network is None  # ask which nodes are alive now
    moved = plan({1: ("b", 0.5, 1.5), 2: ("b", 1.5, 2.5), 3: ("b", 2.5, 3.5)})
    out = t(e.PlannerReturned(run.job, moved, moved, None, network("b"), 0.01, 0.02, 0.6))
    assert only(out, e.Repin) == [e.Repin(((1, "b", 0.5),))]  # in flight at the dispatcher
    assert only(out, e.Send) == [e.Send(later, "b", 2.5)]  # held back, now free, to its new node
    assert t(e.TaskLaunched(gate, 1.5)) == [e.Send(gate, "b", 1.5)]
    assert t.state.first_node[2] == "a"


def test_a_failed_replan_lets_held_back_tasks_go_to_their_old_node_the_dispatcher_s_pool_runs_them() -> None:
    t = Transcript()
    later = held_behind_a_gate(t)
    t(e.NodeChanged("a", "dead", 1.0, 0.5))
    (run,) = only(t(e.ReplanGraphBuilt("a", (1, 2, 3), graph([1, 2, 3]), 0.5)), e.RunPlanner)
    out = t(e.PlannerFailed(run.job, PlanningError("no live nodes"), 0.6))
    assert only(out, e.Send) == [e.Send(later, "a", 2.0)]


def test_a_plan_that_lands_on_a_node_that_died_while_it_was_made_is_replanned() -> None:
    t = Transcript()
    t(e.NodesListed((("a", 1.0), ("b", 1.0)), 0.0))
    one = launch(1)
    t(e.TaskLaunched(one, 0.0))
    (run,) = only(t(e.WindowGraphBuilt((one,), (1,), graph([1]), frozenset(), 0.0)), e.RunPlanner)
    t(e.NodeChanged("a", "dead", 1.0, 0.1))  # while SAGA plans
    result = plan({1: ("a", 0.0, 1.0)})
    out = t(e.PlannerReturned(run.job, result, result, run.job.canon, network("a", "b"), 0.1, 0.1, 0.2))
    assert only(out, e.BuildReplanGraph) == [e.BuildReplanGraph("a", (1,))]


def test_replan_off_a_dead_node_changes_no_plan() -> None:
    t = Transcript(replan=False)
    planned_window(t, [launch(1)], {1: ("a", 0.0, 1.0)}, 0.0)
    assert kinds(t(e.NodeChanged("a", "dead", 1.0, 0.5))) == []


def test_after_a_dispatcher_restart_nodes_that_do_not_rejoin_within_the_grace_are_replanned() -> None:
    t = Transcript(rejoin_grace_s=3.0)
    planned_window(t, [launch(1)], {1: ("a", 0.0, 1.0), 2: ("b", 0.0, 1.0)}, 0.0, extra=(2,))
    t(e.DispatcherRestarted(10.0))
    assert t.state.network is None
    assert kinds(t(e.Ticked(12.9))) == []
    assert t(e.Ticked(13.0)) == [e.ListNodes()]
    out = t(e.NodesListed((("b", 1.0),), 13.1))  # b came back, a did not
    assert only(out, e.BuildReplanGraph) == [e.BuildReplanGraph("a", (1,))]  # 2, on b, stays
    assert t.state.speeds == {"b": 1.0}


def test_after_a_dispatcher_restart_nodes_that_rejoin_keep_their_work() -> None:
    t = Transcript(rejoin_grace_s=3.0)
    planned_window(t, [launch(1)], {1: ("a", 0.0, 1.0)}, 0.0)
    t(e.DispatcherRestarted(10.0))
    t(e.Ticked(13.0))
    assert kinds(t(e.NodesListed((("a", 1.0),), 13.1))) == []


# --------------------------------------------------------------------------- failures and shut-down


def test_a_failed_plan_fails_its_batch_explicitly() -> None:
    t = Transcript()
    one = launch(1)
    t(e.TaskLaunched(one, 0.0))
    (run,) = only(t(e.WindowGraphBuilt((one,), (1,), graph([1]), frozenset(), 0.0)), e.RunPlanner)
    out = t(e.PlannerFailed(run.job, RuntimeError("SAGA blew up"), 0.1))
    (fail,) = only(out, e.Fail)
    assert fail.launches == (one,)
    assert isinstance(fail.error, PlanningError)
    assert t.state.window_job is None


def test_shut_down_fails_everything_not_in_flight_and_refuses_new_launches() -> None:
    t = Transcript()
    waiting = held_behind_a_gate(t)
    held = launch(9)
    t(e.TaskLaunched(held, 0.2))
    out = t(e.ShutDown(0.3))
    (fail,) = only(out, e.Fail)
    assert set(fail.launches) == {held, waiting}
    assert isinstance(fail.error, DispatcherUnavailable)
    late = launch(10)
    assert only(t(e.TaskLaunched(late, 0.4)), e.Fail)[0].launches == (late,)
    in_flight = t.state.in_flight[1]  # the client's close fails it; it still resolves
    outcome = resolved(error=DispatcherUnavailable("closed"))
    assert t(e.TaskResolved(in_flight, outcome, None, None, 0.5)) == [e.Resolve(in_flight, outcome)]


def test_a_window_whose_graph_cannot_be_built_fails_its_batch() -> None:
    t = Transcript()
    one = launch(1)
    t(e.TaskLaunched(one, 0.0))
    out = t(e.WindowGraphFailed((one,), KeyError("executor"), 0.0))
    assert only(out, e.Fail)[0].launches == (one,)
    two = launch(2)
    assert kinds(t(e.TaskLaunched(two, 0.1))) == ["BuildWindowGraph"]  # planning goes on


def test_a_result_from_a_node_that_died_meanwhile_still_resolves_its_task() -> None:
    """The review's finding: the result's callback indexed the live nodes' speeds after checking
    them, unlocked; the node's removal in between raised KeyError inside a done-callback, where
    ``concurrent.futures`` swallows it, and Parsl's future never resolved. As events, on one
    thread, the removal is simply a step before the result."""
    t = Transcript()
    one = launch(1)
    planned_window(t, [one], {1: ("a", 0.0, 1.0)}, 0.0)
    t(e.NodeChanged("a", "dead", 1.0, 0.5))
    outcome = resolved(1)
    out = t(e.TaskResolved(one, outcome, "a", 0.4, 0.6))
    assert only(out, e.Resolve) == [e.Resolve(one, outcome)]
    assert t.state.runtimes.estimate("f") is None  # no speed to learn from: nothing learned


def test_node_changes_heard_while_the_first_plan_runs_are_kept_when_its_node_list_arrives() -> None:
    """The planner asked the dispatcher for its nodes before SAGA ran; b registered and a died
    meanwhile. The list it brings back is brought up to date, and a's tasks are re-planned."""
    t = Transcript()
    one = launch(1)
    t(e.TaskLaunched(one, 0.0))
    (run,) = only(t(e.WindowGraphBuilt((one,), (1,), graph([1]), frozenset(), 0.0)), e.RunPlanner)
    t(e.NodeChanged("b", "alive", 2.0, 0.1))
    t(e.NodeChanged("a", "dead", 1.0, 0.2))
    result = plan({1: ("a", 0.0, 1.0)})
    out = t(e.PlannerReturned(run.job, result, result, None, network("a"), 0.1, 0.1, 0.3))
    assert t.state.speeds == {"b": 2.0}
    assert only(out, e.BuildReplanGraph) == [e.BuildReplanGraph("a", (1,))]


def test_a_replan_that_lands_on_a_node_that_died_meanwhile_is_replanned_again() -> None:
    t = Transcript()
    planned_window(t, [launch(1)], {1: ("a", 0.0, 1.0)}, 0.0)
    t(e.NodeChanged("b", "alive", 1.0, 0.1))
    t(e.NodeChanged("a", "dead", 1.0, 0.2))
    (run,) = only(t(e.ReplanGraphBuilt("a", (1,), graph([1]), 0.2)), e.RunPlanner)
    t(e.NodeChanged("b", "dead", 1.0, 0.3))  # while SAGA re-plans onto b
    moved = plan({1: ("b", 0.5, 1.5)})
    out = t(e.PlannerReturned(run.job, moved, moved, None, network("b"), 0.1, 0.1, 0.4))
    assert only(out, e.BuildReplanGraph) == [e.BuildReplanGraph("b", (1,))]


def test_shut_down_during_a_replan_leaves_nothing_to_trip_on() -> None:
    t = Transcript()
    later = held_behind_a_gate(t)
    t(e.NodeChanged("a", "dead", 1.0, 0.5))
    (run,) = only(t(e.ReplanGraphBuilt("a", (1, 2, 3), graph([1, 2, 3]), 0.5)), e.RunPlanner)
    assert only(t(e.ShutDown(0.6)), e.Fail)[0].launches == (later,)
    moved = plan({1: ("b", 0.5, 1.5), 2: ("b", 1.5, 2.5), 3: ("b", 2.5, 3.5)})
    assert t(e.PlannerReturned(run.job, moved, moved, None, network("b"), 0.1, 0.1, 0.7)) == []


def test_an_abandoned_window_fails_what_did_not_leave_and_planning_goes_on() -> None:
    t = Transcript()
    one = launch(1)
    t(e.TaskLaunched(one, 0.0))
    t(e.WindowGraphBuilt((one,), (1,), graph([1]), frozenset(), 0.0))
    error = RuntimeError("a bug in the plan's step")
    out = t(e.WindowAbandoned((one,), error, 0.1))
    assert out == [e.Fail((one,), error)]
    assert kinds(t(e.TaskLaunched(launch(2), 0.2))) == ["BuildWindowGraph"]


# --------------------------------------------------------------------------- zones (Kubernetes)


def test_nodes_in_different_zones_are_linked_at_the_cross_zone_bandwidth() -> None:
    t = Transcript(bandwidth=1e9, cross_zone_bandwidth=1e8)
    t(e.NodesListed((("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)), 0.0, (("a", "z1"), ("b", "z1"), ("c", "z2"))))
    network = t.state.network
    assert network is not None
    assert network.link("a", "b") == 1e9  # one zone
    assert network.link("a", "c") == network.link("c", "b") == 1e8  # across zones
    assert network.link("a", "d") == 1e9  # d's zone is unknown: no penalty guessed
    t(e.NodeChanged("c", "dead", 1.0, 1.0))  # the links follow the node list
    assert t.state.network is not None and t.state.network.links == {}


def test_without_a_cross_zone_bandwidth_zones_change_nothing() -> None:
    t = Transcript(bandwidth=1e9)
    t(e.NodesListed((("a", 1.0), ("b", 1.0)), 0.0, (("a", "z1"), ("b", "z2"))))
    assert t.state.network is not None and t.state.network.link("a", "b") == 1e9


def test_a_task_launched_while_saga_plans_leaves_in_rank_order_with_the_batch() -> None:
    """A root Parsl launches while SAGA plans its window is planned as a registered task; it
    left after the whole batch, and so started after a task of the batch ranked behind it."""
    t = Transcript()
    late, first = launch(1), launch(2)
    (build,) = only(t(e.TaskLaunched(first, 0.0)), e.BuildWindowGraph)
    out = t(e.WindowGraphBuilt(build.batch, (1, 2), graph((1, 2)), frozenset(), 0.0))
    (job,) = [c.job for c in only(out, e.RunPlanner)]
    assert t(e.TaskLaunched(late, 0.001)) == []  # held: a plan is under way
    result = plan({1: ("a", 0.0, 0.5), 2: ("a", 0.5, 1.0)})
    out = t(e.PlannerReturned(job, result, result, None, network("a"), 0.01, 0.02, 0.002))
    assert only(out, e.Send) == [e.Send(late, "a", 0.0), e.Send(first, "a", 0.5)]
