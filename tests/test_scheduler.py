"""The Scheduler without NNI: fake trial results and index files, time passed in by the test."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from nni_splitting.growth.checkpoint import save_checkpoint
from nni_splitting.nni.lineage import NodeKind, NodeStatus
from nni_splitting.models import build_model
from nni_splitting.nni.scheduler import Policy, Scheduler
from nni_splitting.common.storage import atomic_write_json, read_json
from nni_splitting.nni.dispatcher import verified_result
from nni_splitting.nni.tuner import SplittingArguments

LAYERS = ["a", "b"]
EIG = {"a": [-0.1, -0.5, 0.2], "b": [-0.3, 0.0]}


def make(tmp_path, verify=None, policy=None, **kwargs):
    args = SplittingArguments(**{"seed_widths": [3, 2], "max_splits": 1, "max_steps": 2, "trial": {}, **kwargs})
    return Scheduler(args, {}, read_index=read_json, verify=verify, policy=policy, resume_timeout_s=100.0)


def finish(tmp_path, node, accuracy=0.5):
    """Write the node's index file; return its final result."""
    widths = node.params["widths"] or [3, 2]
    folder = tmp_path / node.node_id
    eig = {k: (v + [0.1] * w)[:w] for (k, v), w in zip(EIG.items(), widths)}
    atomic_write_json(folder / "splitting.json", {"widths": widths, "width_layers": LAYERS, "eigenvalues": eig,
                                                  "params": sum(widths), "flops": sum(widths)})
    return {"default": accuracy, "indexes": str(folder / "splitting.json"), "node": node.node_id,
            "checkpoint": str(folder / "checkpoint.pt"), "splits": str(folder / "splits.pt")}


def test_lineage_grows_to_max_steps_with_explicit_statuses(tmp_path):
    sched = make(tmp_path)
    sched.start()
    steps = []
    while True:
        node = sched.pop_ready()
        if node is None:
            break
        assert node.status is NodeStatus.RUNNING and node.kind is NodeKind.GROWTH
        steps.append((node.step, node.params["widths"]))
        sched.succeeded(node, finish(tmp_path, node), trial_id=f"T{node.step}")
        assert node.status is NodeStatus.SUCCEEDED
    assert steps == [(0, [3, 2]), (1, [4, 2]), (2, [5, 2])]  # a[1] = -0.5 first each time
    assert sched.finished and "max_steps" in sched.stopped[0]


def test_retry_then_fallback_then_stop(tmp_path):
    sched = make(tmp_path, max_splits=2)
    sched.start()
    seed = sched.pop_ready()
    sched.succeeded(seed, finish(tmp_path, seed))
    child = sched.pop_ready()
    sched.failed(child, "killed")
    retry = sched.pop_ready()
    assert retry.attempt == 1 and retry.params["split_plan"] == child.params["split_plan"]
    sched.failed(retry, "killed")
    fallback = sched.pop_ready()
    assert fallback.attempt == 2 and fallback.parent == seed.node_id and fallback.params["split_plan"] == {"a": [1]}
    sched.failed(fallback, "killed")
    assert sched.pop_ready() is None and sched.finished and "3 failed attempt(s)" in sched.stopped[0]


def test_missing_result_waits_while_nni_is_busy_then_retries(tmp_path):
    sched = make(tmp_path)
    sched.start()
    seed = sched.pop_ready()
    sched.ended_without_result(seed, now=0.0)
    assert sched.next_deadline() == sched.result_grace_s
    assert sched.tick(now=sched.result_grace_s + 1, nni_busy=True) == []  # maybe filed under another trial
    assert seed.status is NodeStatus.RUNNING
    assert sched.tick(now=10 * sched.result_grace_s) == [seed]
    retry = sched.pop_ready()
    assert retry.attempt == 1 and retry.step == 0


def _stopped_mid_step(tmp_path, verify):
    """First session: seed succeeded, step 1 running at the stop; second session: the same imported."""
    first = make(tmp_path)
    first.start()
    seed = first.pop_ready()
    result = finish(tmp_path, seed)
    first.succeeded(seed, result, "T0")
    running = first.pop_ready()
    resumed = make(tmp_path, verify=verify)
    resumed.import_finished([{"parameter": seed.params, "value": result, "trialJobId": "T0"}])
    return resumed, running


def test_recovered_trial_gets_a_deadline_then_is_retried(tmp_path):
    resumed, running = _stopped_mid_step(tmp_path, verify=None)
    resumed.start([("T1", running.params, "ADD_RESUMED")], now=0.0)  # what NNI's REST API shows
    assert resumed.pop_ready() is None  # NNI re-runs it: no duplicate at first
    assert resumed.next_deadline() == 100.0
    assert resumed.tick(now=50.0) == []
    (given_up,) = resumed.tick(now=101.0)  # never finished: given up at its deadline ...
    assert given_up.node_id == running.node_id and given_up.status is NodeStatus.FAILED
    retry = resumed.pop_ready()  # ... and retried, not waited on forever
    assert retry.step == 1 and retry.attempt == 1 and retry.parent == running.parent


def test_recovered_trial_nni_will_not_rerun_is_retried_at_once(tmp_path):
    resumed, running = _stopped_mid_step(tmp_path, verify=None)
    resumed.start([("T1", running.params, "UNKNOWN")], now=0.0)
    retry = resumed.pop_ready()
    assert retry is not None and retry.attempt == 1 and retry.step == 1


def _write_trial_output(tmp_path, node, sha=None):
    """What the trial writes: a real checkpoint and splitting.json with the checkpoint's SHA-256."""
    folder = tmp_path / "trials" / "T1"
    model = build_model("mlp", widths=[4, 2], in_features=4, num_classes=3)
    digest = save_checkpoint(folder / "checkpoint.pt", model, "mlp")
    (folder / "splits.pt").write_bytes(b"splits")
    info = {"node_id": node.node_id, "step": node.step, "lineage": 0, "widths": [4, 2], "width_layers": LAYERS,
            "eigenvalues": {"a": [-0.2, 0.1, 0.1, 0.1], "b": [0.1, 0.1]}, "params": 6, "flops": 6,
            "accuracy": 0.8, "checkpoint": str(folder / "checkpoint.pt"), "splits": str(folder / "splits.pt"),
            "checkpoint_sha256": sha or digest}
    atomic_write_json(folder / "splitting.json", info)
    return folder


def test_finished_work_on_disk_is_adopted_when_its_hash_matches(tmp_path):
    holder = {}
    resumed, running = _stopped_mid_step(tmp_path, verify=lambda node, trial_id: holder["verify"](node))
    folder = _write_trial_output(tmp_path, running)
    holder["verify"] = lambda node: verified_result(folder / "splitting.json", node.node_id)
    resumed.start([("T1", running.params, "RUNNING")], now=0.0)
    adopted = resumed.nodes[running.node_id]
    assert adopted.status is NodeStatus.SUCCEEDED and adopted.result["adopted"]
    child = resumed.pop_ready()  # growth goes on from the adopted work
    assert child.step == 2 and child.parent == running.node_id and child.params["split_plan"] == {"a": [0]}


def test_finished_work_with_a_wrong_hash_is_not_adopted(tmp_path):
    resumed, running = _stopped_mid_step(tmp_path, verify=None)
    folder = _write_trial_output(tmp_path, running, sha="0" * 64)
    assert verified_result(folder / "splitting.json", running.node_id) is None
    (folder / "checkpoint.pt").write_bytes(b"truncated")  # and a truncated checkpoint: no match either
    info = read_json(folder / "splitting.json")
    atomic_write_json(folder / "splitting.json", dict(info, checkpoint_sha256="1" * 64))
    resumed.verify = lambda node, trial_id: verified_result(folder / "splitting.json", node.node_id)
    resumed.start([("T1", running.params, "UNKNOWN")], now=0.0)
    assert resumed.nodes[running.node_id].status is NodeStatus.FAILED
    assert resumed.pop_ready().attempt == 1  # retried instead


def test_policy_arm_nodes_do_not_count_as_lineage_steps(tmp_path):
    class OneArm(Policy):
        def __init__(self):
            self.ended = []

        def start(self, scheduler):
            scheduler.add_arm(0, "full-0", 0, {"arm": "full"})

        def growth_params(self, node, parent):
            return {"arm": "splitting"}

        def arm_ended(self, scheduler, node):
            self.ended.append((node.node_id, node.status))

    policy = OneArm()
    sched = make(tmp_path, policy=policy, max_steps=0)
    sched.start()
    seed, arm = sched.pop_ready(), sched.pop_ready()
    assert seed.params["arm"] == "splitting" and arm.kind is NodeKind.ARM and arm.lineage == 0
    sched.succeeded(seed, finish(tmp_path, seed))
    assert not sched.finished and sched.busy(0) is False  # the arm runs, but lineage 0 is not busy
    sched.failed(arm, "killed")
    assert policy.ended == [("full-0", NodeStatus.FAILED)] and sched.finished
    assert sched.pop_ready() is None  # arms are not retried by the growth policy


def test_growth_nodes_are_handed_out_before_queued_arms(tmp_path):
    class ArmsPerStep(Policy):
        def step_succeeded(self, scheduler, node):
            for k in range(2):
                scheduler.add_arm(0, f"arm-s{node.step}-{k}", node.step, {"arm": "uniform"})

    sched = make(tmp_path, policy=ArmsPerStep(), max_steps=2)
    sched.start()
    order, running = [], []  # order: as handed out
    while True:  # two slots; the oldest running trial finishes first
        while len(running) < 2 and (nxt := sched.pop_ready()) is not None:
            running.append(nxt)
            order.append(nxt.node_id if nxt.kind is NodeKind.ARM else f"growth-s{nxt.step}")
        if not running:
            break
        node = running.pop(0)
        sched.succeeded(node, finish(tmp_path, node) if node.kind is NodeKind.GROWTH else {"default": 0.5})
    # each step's child goes out before the arms its parent queued, which fill the slot afterwards
    assert [o for o in order if o.startswith("growth")] == ["growth-s0", "growth-s1", "growth-s2"]
    # growth-s2 is queued after arm-s0-1 but handed out first (first-in-first-out would not)
    assert order.index("growth-s2") < order.index("arm-s0-1")
    assert sorted(o for o in order if o.startswith("arm")) == sorted(f"arm-s{s}-{k}" for s in range(3) for k in range(2))
    assert sched.finished


def test_lowest_fraction_selection_splits_whatever_the_sign(tmp_path):
    # every index of layer b is >= 0 after a[1]; "negative" would pick a[1] then stop on a[0]/b[0]
    sched = make(tmp_path, selection="lowest_fraction", max_splits=2, max_steps=1)
    sched.start()
    seed = sched.pop_ready()
    sched.succeeded(seed, finish(tmp_path, seed))
    child = sched.pop_ready()
    assert child.params["split_plan"] == {"a": [1], "b": [0]}  # -0.5 and -0.3: the two lowest
    sched2 = make(tmp_path, selection="lowest_fraction", max_splits=4, max_steps=1)
    sched2.start()
    seed2 = sched2.pop_ready()
    sched2.succeeded(seed2, finish(tmp_path, seed2))
    assert sched2.pop_ready().params["split_plan"] == {"a": [0, 1], "b": [0, 1]}  # 0.0 (b[1]) too


def test_unknown_selection_is_refused():
    from nni_splitting.nni.tuner import SplittingClassArgsValidator
    with pytest.raises(ValueError, match="selection must be one of"):
        SplittingClassArgsValidator().validate_class_args(selection="smallest")
    with pytest.raises(ValueError, match="ranks by index only"):
        SplittingClassArgsValidator().validate_class_args(selection="lowest_fraction", cost="flops")


def test_lineage_settings_override_one_lineage_each(tmp_path):
    settings = [{"arm_label": "splitting_eps0.1", "epsilon": 0.1, "seed": 7},
                {"arm_label": "splitting_lowest", "selection": "lowest_fraction", "epochs": 2}]
    sched = make(tmp_path, beam=2, max_splits=2, max_steps=1, threshold=-0.4, trial={"epochs": 5, "seed": 3},
                 lineage_settings=settings)
    sched.start()
    seeds = {n.lineage: n for n in (sched.pop_ready(), sched.pop_ready())}
    assert seeds[0].params["seed"] == 7 and seeds[0].params["epochs"] == 5  # explicit seed kept as is
    assert seeds[1].params["seed"] == 4 and seeds[1].params["epochs"] == 2  # 3 + lineage 1
    for node in seeds.values():
        sched.succeeded(node, finish(tmp_path, node))
    children = {n.lineage: n for n in (sched.pop_ready(), sched.pop_ready())}
    assert children[0].params["epsilon"] == 0.1 and children[0].params["arm_label"] == "splitting_eps0.1"
    assert children[1].params["epsilon"] == SplittingArguments().epsilon
    # below threshold -0.4 "negative" has only a[1] (-0.5); lineage 1's lowest_fraction takes the two lowest
    assert children[0].params["split_plan"] == {"a": [1]}
    assert children[1].params["split_plan"] == {"a": [1], "b": [0]}


def test_lineage_settings_are_validated():
    from nni_splitting.nni.tuner import SplittingClassArgsValidator
    check = SplittingClassArgsValidator().validate_class_args
    with pytest.raises(ValueError, match="one per lineage"):
        check(beam=2, lineage_settings=[{}])
    with pytest.raises(ValueError, match=r"lineage_settings\[1\].*unknown trial settings"):
        check(beam=2, lineage_settings=[{}, {"epoch": 3}])
    with pytest.raises(ValueError, match=r"lineage_settings\[0\].selection"):
        check(beam=1, lineage_settings=[{"selection": "best"}])
    for bad in (-0.1, float("nan"), True, "0.1"):  # the one epsilon check (common.defaults.check_epsilon)
        with pytest.raises(ValueError, match=r"lineage_settings\[0\].epsilon=.* must be a finite number >= 0"):
            check(beam=1, lineage_settings=[{"epsilon": bad}])
        with pytest.raises(ValueError, match=r"^epsilon=.* must be a finite number >= 0"):
            check(epsilon=bad)


def test_lineage_settings_cost_ranks_that_lineage_per_flop(tmp_path):
    """A lineage's own ``cost`` ranks its splits by index per added FLOP; the others keep the tuner's."""
    sched = make(tmp_path, beam=2, max_splits=1, max_steps=1, lineage_settings=[{"cost": "flops"}, {}])
    sched.start()
    for node in (sched.pop_ready(), sched.pop_ready()):
        result = finish(tmp_path, node)
        index = json.loads(Path(result["indexes"]).read_text())
        index["costs"] = {"flops": {"a": 10.0, "b": 1.0}, "params": {"a": 1.0, "b": 1.0}}
        atomic_write_json(Path(result["indexes"]), index)
        sched.succeeded(node, result)
    children = {n.lineage: n for n in (sched.pop_ready(), sched.pop_ready())}
    assert children[0].params["split_plan"] == {"b": [0]}  # -0.3 per FLOP beats a[1]'s -0.5 / 10
    assert children[1].params["split_plan"] == {"a": [1]}  # by index alone
    assert "cost" not in children[0].params
    from nni_splitting.nni.tuner import SplittingClassArgsValidator
    check = SplittingClassArgsValidator().validate_class_args
    with pytest.raises(ValueError, match=r"lineage_settings\[0\].cost"):
        check(beam=1, lineage_settings=[{"cost": "joules"}])
    with pytest.raises(ValueError, match="ranks by index only"):
        check(beam=1, lineage_settings=[{"cost": "flops", "selection": "lowest_fraction"}])
    with pytest.raises(ValueError, match="ranks by index only"):
        check(beam=1, selection="lowest_fraction", lineage_settings=[{"cost": "flops"}])


def test_energy_selection_spends_the_count_rules_flops_on_the_cheapest_descent(tmp_path):
    """``selection="energy"``: the LP gets the FLOPs that the count rule's m* splits would add (a[0]: 3) and
    buys more descent with them (b[0] and b[1]: -0.8 for 2 FLOPs) than the count rule's pick (-0.6)."""
    sched = make(tmp_path, selection="energy", max_splits=1, max_steps=1)
    sched.start()
    seed = sched.pop_ready()
    result = finish(tmp_path, seed)
    index = json.loads(Path(result["indexes"]).read_text())
    index["eigenvalues"] = {"a": [-0.6, 0.1, 0.1], "b": [-0.4, -0.4]}
    index["costs"] = {"flops": {"a": 3.0, "b": 1.0}, "params": {"a": 1.0, "b": 1.0}}
    atomic_write_json(Path(result["indexes"]), index)
    sched.succeeded(seed, result)
    assert sched.pop_ready().params["split_plan"] == {"b": [0, 1]}
    from nni_splitting.nni.tuner import SplittingClassArgsValidator
    SplittingClassArgsValidator().validate_class_args(selection="energy", cost="flops")  # accepted


def test_three_copy_splits_count_the_neurons_they_add(tmp_path):
    """An index file with added_per_split = 2 (S3D with three copies): grow_ratio counts added neurons, so
    half as many splits are picked, and each split layer's width grows by two per split."""
    sched = make(tmp_path, max_splits=None, grow_ratio=0.8, max_steps=1, selection="lowest_fraction")
    sched.start()
    seed = sched.pop_ready()
    result = finish(tmp_path, seed)
    info = read_json(result["indexes"])
    atomic_write_json(result["indexes"], dict(info, added_per_split=2))
    sched.succeeded(seed, result)
    child = sched.pop_ready()
    assert child.params["split_plan"] == {"a": [1], "b": [0]}  # round(0.8 * 5) = 4 added neurons: 2 splits
    assert child.params["widths"] == [5, 4]
