"""SplittingTuner with fake trials: small splitting-index files in tmp_path, no NNI manager, no training."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import nni
import pytest

from nni_splitting.nni import lineage as lin
from nni_splitting.common.storage import StorageMap, atomic_write_json, trial_output_dir
from nni_splitting.nni.tuner import SplittingClassArgsValidator, SplittingTuner

LAYERS = ["a", "b"]


class FakeNNI:
    """Plays NNI's manager and trials: asks for parameters, finishes trials with fake index files."""

    def __init__(self, tuner: SplittingTuner, tmp_path, eigenvalues=None, costs=None, params_of=None):
        self.tuner = tuner
        self.tmp = tmp_path
        self.next_id = 0
        self.running = {}          # parameter id -> params
        self.history = []          # (parameter id, params) in emission order
        self.trial_ids = {}        # node id -> fake trial id
        self.eigenvalues = eigenvalues or (lambda params: {"a": [-0.1, -0.5, 0.2], "b": [-0.3, 0.0]})
        self.costs = costs or {"params": {"a": 10.0, "b": 100.0}, "flops": {"a": 1000.0, "b": 10.0}}
        self.params_of = params_of or (lambda widths: 10 * widths[0] + 100 * widths[1])
        tuner.end_hook = None

    def _push(self, parameter_id, params):
        assert parameter_id not in self.running
        self.running[parameter_id] = params
        self.history.append((parameter_id, params))

    def request(self, n=1):
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        for parameter_id, params in zip(ids, self.tuner.generate_multiple_parameters(ids, st_callback=self._push)):
            self._push(parameter_id, params)
        return ids

    def widths(self, params):
        return list(params["widths"]) if params["widths"] else [3, 2]

    def succeed(self, parameter_id, accuracy=0.5, request=True, parameters=None):
        params = self.running.pop(parameter_id)
        result = self.write_result(params, f"T{parameter_id:03d}", accuracy)
        self.tuner.receive_trial_result(parameter_id, params if parameters is None else parameters, result,
                                        trial_job_id=self.trial_ids[params["node_id"]])
        self.tuner.trial_end(parameter_id, True)
        if request:
            self.request(1)
        return result

    def write_result(self, params, trial_id, accuracy=0.5):
        """Write the fake trial's index file; return its final result."""
        widths = self.widths(params)
        folder = self.tmp / params["node_id"]
        n_params = self.params_of(widths)
        eig = self.eigenvalues(params)
        eig = {k: (v + [0.1] * (w - len(v)))[:w] for (k, v), w in zip(eig.items(), widths)}
        info = {"model": "fake", "widths": widths, "width_layers": LAYERS, "eigenvalues": eig, "costs": self.costs,
                "params": n_params, "flops": 1000 * n_params, "reference": {"params": 10000, "flops": 10000000},
                "checkpoint": str(folder / "checkpoint.pt"), "splits": str(folder / "splits.pt")}
        atomic_write_json(folder / "splitting.json", info)
        self.trial_ids[params["node_id"]] = trial_id
        return {"default": accuracy, "params": n_params, "indexes": str(folder / "splitting.json"),
                "checkpoint": info["checkpoint"], "splits": info["splits"], "node": params["node_id"]}

    def fail(self, parameter_id, request=True):
        self.running.pop(parameter_id)
        self.tuner.trial_end(parameter_id, False)
        if request:
            self.request(1)

    def only_running(self):
        assert len(self.running) == 1, self.running
        return next(iter(self.running.items()))

    def run_to_end(self, limit=50):
        for _ in range(limit):
            if not self.running:
                return
            self.succeed(next(iter(self.running)))
        raise AssertionError("did not finish")


def make(tmp_path, **kwargs):
    tuner = SplittingTuner(**kwargs)
    tuner.update_search_space({})
    return tuner, FakeNNI(tuner, tmp_path)


def test_seed_then_child_splits_most_negative_indexes(tmp_path):
    tuner, nni_ = make(tmp_path, model="small_cnn", seed_widths=[3, 2], max_splits=2, trial={"epochs": 1})
    nni_.request(1)
    pid, seed = nni_.only_running()
    assert seed["step"] == 0 and seed["parent"] == "" and seed["split_plan"] == {} and seed["widths"] == [3, 2]
    assert seed["epochs"] == 1 and seed["node_id"].startswith("l0s0-")
    nni_.succeed(pid)
    _, child = nni_.only_running()
    # indexes a: [-0.1, -0.5, 0.2], b: [-0.3, 0.0] -> the two most negative: a[1] (-0.5), b[0] (-0.3)
    assert child["split_plan"] == {"a": [1], "b": [0]}
    assert child["widths"] == [4, 3]
    assert child["step"] == 1 and child["parent"] == nni_.trial_ids[seed["node_id"]]
    assert child["parent_node"] == seed["node_id"]
    assert child["parent_checkpoint"].endswith("checkpoint.pt") and child["parent_splits"].endswith("splits.pt")
    assert child["lineage"] == 0 and child["n_split"] == 2


def test_threshold_and_stability_stop(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=5, threshold=-0.2)
    nni_.request(1)
    nni_.succeed(nni_.only_running()[0])
    _, child = nni_.only_running()
    assert child["split_plan"] == {"a": [1], "b": [0]}  # only indexes below -0.2
    nni_.eigenvalues = lambda params: {"a": [0.0, 0.1, 0.2], "b": [-0.1, 0.3]}  # nothing below -0.2
    nni_.succeed(nni_.only_running()[0])
    assert not nni_.running and tuner.finished
    assert "splitting-stable" in tuner.state()["stopped"]["0"]
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(99)


def test_max_steps_stop_and_lineage_chain(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=3)
    nni_.request(1)
    nni_.run_to_end()
    emitted = [p for _, p in nni_.history]
    assert [p["step"] for p in emitted] == [0, 1, 2, 3]
    for parent, child in zip(emitted, emitted[1:]):
        assert child["parent_node"] == parent["node_id"]
        assert child["parent"] == nni_.trial_ids[parent["node_id"]]
        assert sum(child["widths"]) == sum(nni_.widths(parent)) + 1
        assert nni_.params_of(child["widths"]) > nni_.params_of(nni_.widths(parent))
    assert tuner.finished and "max_steps" in tuner.state()["stopped"]["0"]


def test_grow_ratio_and_max_per_layer(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], grow_ratio=0.6, max_per_layer=1)
    nni_.request(1)
    nni_.succeed(nni_.only_running()[0])
    _, child = nni_.only_running()
    # round(0.6 * 5) = 3 splits wanted, but at most 1 per layer: a[1], b[0]
    assert child["split_plan"] == {"a": [1], "b": [0]}


def test_cost_aware_ranking(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, cost="params")
    nni_.request(1)
    nni_.succeed(nni_.only_running()[0])
    _, child = nni_.only_running()
    # per parameter: a[1] -0.5/10 = -0.05 beats b[0] -0.3/100
    assert child["split_plan"] == {"a": [1]}
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, cost="flops")
    nni_.request(1)
    nni_.succeed(nni_.only_running()[0])
    _, child = nni_.only_running()
    # per FLOP: b[0] -0.3/10 beats a[1] -0.5/1000
    assert child["split_plan"] == {"b": [0]}


def test_budget_trims_plan_and_stops(tmp_path):
    # seed params = 10*3 + 100*2 = 230; budget 345 leaves 115: b[0] (cost 100) then a[1] (cost 10) fit
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=3, budget={"params": 345})
    nni_.eigenvalues = lambda params: {"a": [-0.1, -0.5, -0.2], "b": [-0.9, -0.05]}
    nni_.request(1)
    nni_.succeed(nni_.only_running()[0])
    _, child = nni_.only_running()
    assert child["split_plan"] == {"a": [1], "b": [0]}  # a[2] would make 350 > 345
    assert nni_.params_of(child["widths"]) <= 345
    nni_.run_to_end()
    for _, params in nni_.history:
        assert nni_.params_of(nni_.widths(params)) <= 345
    assert "budget" in tuner.state()["stopped"]["0"]


def test_budget_ratio_key(tmp_path):
    # reference params 10000: a ratio budget of 0.024 is 240 params, room for one neuron of layer a
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=3, budget={"params_ratio": 0.024})
    nni_.request(1)
    nni_.succeed(nni_.only_running()[0])
    _, child = nni_.only_running()
    assert child["split_plan"] == {"a": [1]}


def test_budget_is_checked_with_the_exact_counter():
    """Per-neuron costs can underestimate (adjacent layers interact); the exact count has the last word."""
    torch = pytest.importorskip("torch")
    from nni_splitting import count_model
    from nni_splitting.models import build_model
    from nni_splitting.nni.tuner import exact_counter

    config = {"in_features": 4, "num_classes": 3}
    model = build_model("mlp", widths=[4, 4], **config)
    flops, params = count_model(model, torch.zeros(1, 4))
    layers = model.width_layers()
    info = {"model": "mlp", "model_config": config, "widths": [4, 4], "width_layers": layers, "input_shape": [4],
            "params": params, "flops": flops}
    ranked = [(layers[0], 0), (layers[1], 0), (layers[0], 1), (layers[1], 1)]
    cheap = {"params": {layers[0]: 1.0, layers[1]: 1.0}}  # deliberately far too low
    limits = {"params": params + 12}
    plan = lin.trim_plan(ranked, {"params": params}, cheap, limits, exact=exact_counter(info))
    assert plan  # something fits ...
    widths = lin.grown_widths([4, 4], layers, plan)
    assert count_model(build_model("mlp", widths=widths, **config), torch.zeros(1, 4))[1] <= limits["params"]
    assert lin.plan_size(plan) < 4  # ... but not everything the cheap estimate allowed


def test_beam_grows_lineages_in_parallel(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=2, beam=2, trial={"seed": 5})
    nni_.request(2)
    seeds = [p for _, p in nni_.history]
    assert sorted(p["lineage"] for p in seeds) == [0, 1]
    assert sorted(p["seed"] for p in seeds) == [5, 6]  # a different initialisation per lineage
    nni_.run_to_end()
    by_node = {p["node_id"]: p for _, p in nni_.history}
    assert len(by_node) == 6  # 2 lineages x (seed + 2 steps)
    for params in by_node.values():
        if params["parent_node"]:
            assert by_node[params["parent_node"]]["lineage"] == params["lineage"]
            assert by_node[params["parent_node"]]["seed"] == params["seed"]
    assert tuner.finished


def test_beam_larger_than_concurrency(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=1, beam=3)
    nni_.request(1)
    assert len(nni_.running) == 1
    nni_.run_to_end()
    assert sorted(p["lineage"] for _, p in nni_.history if p["step"] == 0) == [0, 1, 2]
    assert len(nni_.history) == 6 and tuner.finished


def test_child_waits_for_parent_then_is_pushed(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1)
    nni_.request(2)  # ids 0 and 1: only the seed exists; id 1 is kept for the child
    assert list(nni_.running) == [0]
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(2)  # still nothing to give: the parent is running
    nni_.succeed(0, request=False)  # the result arrives: the child is pushed on the oldest waiting id
    assert list(nni_.running) == [1] and nni_.running[1]["step"] == 1


def test_result_with_empty_parameters_uses_own_map(tmp_path):
    """NNI's dispatcher may hand parameters='' (generate_multiple_parameters returned fewer sets)."""
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1)
    nni_.request(2)
    pid = nni_.history[0][0]
    nni_.succeed(pid, parameters="")
    assert any(p["step"] == 1 for p in nni_.running.values())


def test_failed_child_is_retried_once_then_lineage_continues(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=2, max_steps=3)
    nni_.request(1)
    seed_pid, seed = nni_.only_running()
    nni_.succeed(seed_pid)
    pid, child = nni_.only_running()
    nni_.fail(pid)
    _, retry = nni_.only_running()
    assert retry["attempt"] == 1 and retry["node_id"] != child["node_id"]
    assert retry["parent_node"] == seed["node_id"] and retry["split_plan"] == child["split_plan"]
    nni_.succeed(nni_.only_running()[0])
    _, grandchild = nni_.only_running()
    assert grandchild["parent_node"] == retry["node_id"] and grandchild["step"] == 2
    assert not tuner.finished


def test_twice_failed_child_falls_back_to_last_good_checkpoint(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=2, max_steps=3)
    nni_.request(1)
    seed_pid, seed = nni_.only_running()
    nni_.succeed(seed_pid)
    nni_.fail(nni_.only_running()[0])          # child fails
    nni_.fail(nni_.only_running()[0])          # its retry fails
    _, fallback = nni_.only_running()          # lineage continues from the seed, with half the plan
    assert fallback["parent_node"] == seed["node_id"] and fallback["attempt"] == 2
    assert fallback["split_plan"] == {"a": [1]} and fallback["widths"] == [4, 2]
    nni_.succeed(nni_.only_running()[0])
    _, nxt = nni_.only_running()
    assert nxt["parent_node"] == fallback["node_id"] and nxt["step"] == 2
    nni_.fail(nni_.only_running()[0])
    nni_.fail(nni_.only_running()[0])
    nni_.fail(nni_.only_running()[0])          # third failure at the same step: the lineage stops
    assert not nni_.running and tuner.finished
    assert "failed" in tuner.state()["stopped"]["0"]


def test_trial_killed_before_reading_its_parameters(tmp_path):
    """NNI 3.0 (local) hands parameters out first-in-first-out: when a trial is killed before it asked
    for its parameters, the next trial runs them.  The trial's report (node id) decides what ran."""
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=3)
    nni_.request(1)
    nni_.succeed(nni_.only_running()[0])
    pid, child = nni_.only_running()
    nni_.fail(pid)                                   # killed at once: NNI queues a retry (new id) ...
    retry_pid, retry = nni_.only_running()
    assert retry["attempt"] == 1
    nni_.running.pop(retry_pid)                      # ... but the new trial gets the old parameters
    result = nni_.write_result(child, "T-next")
    tuner.receive_trial_result(pid, child, result, trial_job_id="T-next")  # metrics carry the old id
    tuner.trial_end(retry_pid, True)
    nni_.request(1)
    _, grandchild = nni_.only_running()
    assert grandchild["parent_node"] == child["node_id"] and grandchild["parent"] == "T-next"
    assert grandchild["step"] == 2
    states = {n["node_id"]: n["status"] for n in tuner.state()["nodes"]}
    assert states[child["node_id"]] == "succeeded" and states[retry["node_id"]] == "superseded"


def test_failed_seed_retried_then_lineage_stops_without_killing_others(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=1, beam=2)
    nni_.request(2)
    (pid0, p0), (pid1, p1) = nni_.history
    nni_.fail(pid0)
    retry_pid = next(k for k, v in nni_.running.items() if v["lineage"] == p0["lineage"])
    nni_.fail(retry_pid)
    assert all(v["lineage"] == p1["lineage"] for v in nni_.running.values())
    nni_.run_to_end()
    assert tuner.finished
    stopped = tuner.state()["stopped"]
    assert "failed" in stopped[str(p0["lineage"])] and "max_steps" in stopped[str(p1["lineage"])]


def test_success_without_result_counts_as_failure(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1)
    tuner.result_grace_s = 0.05
    nni_.request(1)
    pid, seed = nni_.only_running()
    nni_.running.pop(pid)
    tuner.trial_end(pid, True)  # ended "SUCCEEDED" but never reported a final result
    nni_.request(1)             # NNI asks for the next trial: nothing yet, the id is kept
    for _ in range(250):
        if nni_.running:
            break
        threading.Event().wait(0.02)
    _, retry = nni_.only_running()
    assert retry["attempt"] == 1 and retry["lineage"] == seed["lineage"]


def test_unreadable_indexes_stop_lineage_without_raising(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1)
    nni_.request(1)
    pid, params = nni_.only_running()
    nni_.running.pop(pid)
    tuner.receive_trial_result(pid, params, {"default": 0.5, "indexes": str(tmp_path / "missing.json")},
                               trial_job_id="X")
    tuner.trial_end(pid, True)
    assert tuner.finished and "cannot read" in tuner.state()["stopped"]["0"]


def test_trial_without_indexes_stops_lineage_with_its_error(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1)
    nni_.request(1)
    pid, params = nni_.only_running()
    nni_.running.pop(pid)
    index = tmp_path / "broken" / "splitting.json"
    atomic_write_json(index, {"widths": [3, 2], "width_layers": LAYERS, "eigenvalues": {}, "params": 1, "flops": 1,
                              "splitting_error": "LinAlgError: eigh failed"})
    tuner.receive_trial_result(pid, params, {"default": 0.5, "indexes": str(index)}, trial_job_id="X")
    assert tuner.finished and "LinAlgError" in tuner.state()["stopped"]["0"]


def test_end_hook_called_once_when_growth_ends(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=1)
    calls = []
    tuner.end_hook = calls.append
    nni_.request(1)
    nni_.run_to_end()
    for _ in range(100):
        if calls:
            break
        threading.Event().wait(0.02)
    assert calls == [tuner]


def _exported(nni_, results):
    """What NNI's import_data hands a resumed tuner: finished trials, parameters and final results."""
    return [{"parameter": params, "value": results[params["node_id"]], "trialJobId": nni_.trial_ids[params["node_id"]]}
            for _, params in nni_.history if params["node_id"] in results]


def test_import_data_resumes_growth(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=4)
    nni_.request(1)
    results = {}
    for _ in range(3):  # seed, step 1, step 2 succeed
        pid, params = nni_.only_running()
        results[params["node_id"]] = nni_.succeed(pid)
    _, running = nni_.only_running()  # step 3 is running when the experiment stops
    assert running["step"] == 3
    last = next(p for _, p in nni_.history if p["step"] == 2)

    resumed = SplittingTuner(seed_widths=[3, 2], max_splits=1, max_steps=4)
    resumed.update_search_space({})
    resumed.import_data(json.loads(json.dumps(_exported(nni_, results))))
    again = FakeNNI(resumed, tmp_path)
    again.trial_ids.update(nni_.trial_ids)
    again.request(1)  # parameter ids restart at 0 after a resume
    pid, child = again.only_running()
    assert child["step"] == 3 and child["parent_node"] == last["node_id"]
    assert child["parent"] == nni_.trial_ids[last["node_id"]]
    assert child["widths"] == running["widths"] and child["node_id"] != running["node_id"]
    again.succeed(pid)
    _, final = again.only_running()
    assert final["step"] == 4
    again.run_to_end()
    assert resumed.finished


def _stopped_while_running(tmp_path):
    """An experiment stopped with its step-2 trial running: (first session, results, running params)."""
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=3)
    nni_.request(1)
    results = {}
    for _ in range(2):
        pid, params = nni_.only_running()
        results[params["node_id"]] = nni_.succeed(pid)
    return nni_, results, nni_.only_running()[1]


class FakeClient:
    """The tuner's REST client inside a resumed dispatcher: trials NNI re-runs, their states."""

    def __init__(self, recovered, states=None):
        self.recovered, self.states = recovered, states or {}

    def recovered_trials(self):
        return self.recovered

    def trial_state(self, trial_id):
        return self.states.get(trial_id, "RUNNING")

    def active_trials(self):
        return 0

    def finish(self):
        return None


def test_trial_rerun_by_nni_after_resume_is_adopted(tmp_path):
    nni_, results, running = _stopped_while_running(tmp_path)
    resumed = SplittingTuner(seed_widths=[3, 2], max_splits=1, max_steps=3)
    resumed.client = FakeClient([("T-rerun", running, "RUNNING")])  # NNI re-runs it; the REST API lists it
    resumed.import_data(_exported(nni_, results))
    again = FakeNNI(resumed, tmp_path)
    again.request(1)
    assert not again.running  # no duplicate of the re-run trial
    # the re-run trial's final result reaches the tuner through import_data (NNI's dispatcher does that)
    result = again.write_result(running, "T-rerun")
    resumed.import_data([{"parameter": running, "value": result}])
    _, child = again.only_running()
    assert child["parent_node"] == running["node_id"] and child["parent"] == "T-rerun" and child["step"] == 3


def test_failed_rerun_after_resume_is_retried(tmp_path, monkeypatch):
    import nni_splitting.nni.tuner as tuner_module

    nni_, results, running = _stopped_while_running(tmp_path)
    monkeypatch.setattr(tuner_module, "RECOVERED_POLL_S", 0.01)
    resumed = SplittingTuner(seed_widths=[3, 2], max_splits=1, max_steps=3)
    resumed.client = FakeClient([("T-rerun", running, "RUNNING")], {"T-rerun": "FAILED"})
    resumed.import_data(_exported(nni_, results))
    again = FakeNNI(resumed, tmp_path)
    again.request(1)
    for _ in range(200):  # the watcher sees FAILED and queues a retry, pushed on the waiting id
        if again.running:
            break
        threading.Event().wait(0.02)
    _, retry = again.only_running()
    assert retry["attempt"] == 1 and retry["step"] == 2 and retry["parent_node"] == running["parent_node"]


def test_import_data_trusts_the_result_over_swapped_parameters(tmp_path):
    """NNI 3.0 may export a trial with another trial's parameters; the result's node id decides."""
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=2, beam=2)
    nni_.request(2)
    results = {}
    for pid, params in list(nni_.running.items()):
        results[params["node_id"]] = nni_.succeed(pid, request=False)
    exported = _exported(nni_, results)
    # each trial keeps its id and result, but is filed under the other trial's parameters
    exported[0]["parameter"], exported[1]["parameter"] = exported[1]["parameter"], exported[0]["parameter"]
    resumed = SplittingTuner(seed_widths=[3, 2], max_splits=1, max_steps=2, beam=2)
    resumed.import_data(exported)
    again = FakeNNI(resumed, tmp_path)
    again.request(2)
    children = sorted(again.running.values(), key=lambda p: p["lineage"])
    seeds = sorted((p for _, p in nni_.history), key=lambda p: p["lineage"])
    for child, seed in zip(children, seeds):
        assert child["parent_node"] == seed["node_id"] and child["parent"] == nni_.trial_ids[seed["node_id"]]


def test_import_data_of_finished_lineage_ends_at_once(tmp_path):
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, max_steps=1)
    nni_.request(1)
    results = {}
    while nni_.running:
        pid, params = nni_.only_running()
        results[params["node_id"]] = nni_.succeed(pid)
    resumed = SplittingTuner(seed_widths=[3, 2], max_splits=1, max_steps=1)
    resumed.end_hook = None
    resumed.import_data(_exported(nni_, results))
    assert resumed.generate_multiple_parameters([0]) == []
    assert resumed.finished


@pytest.mark.parametrize("bad, message", [
    ({"colour": "red"}, "unknown classArgs"),
    ({"model": "resnet"}, "model must be one of"),
    ({"grow_ratio": 0.2, "max_splits": 4}, "not both"),
    ({"grow_ratio": 0.0}, "grow_ratio"),
    ({"max_splits": 0}, "max_splits"),
    ({"threshold": 0.5}, "threshold"),
    ({"epsilon": -1}, "epsilon"),
    ({"method": "magic"}, "method"),
    ({"cost": "energy"}, "cost"),
    ({"budget": {"watts": 3}}, "budget key"),
    ({"budget": -5}, "budget"),
    ({"beam": 0}, "beam"),
    ({"seed_widths": [4, 0]}, "seed_widths"),
    ({"max_steps": -1}, "max_steps"),
    ({"trial": {"epochs": 0}}, "trial.epochs"),
    ({"trial": {"dataset": "imagenet"}}, "trial.dataset"),
    ({"trial": {"lr_typo": 1}}, "unknown trial settings"),
    ({"local_storage_path": "/mnt/x"}, "needs storage_path"),
])
def test_bad_class_args_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        SplittingClassArgsValidator().validate_class_args(**bad)
    with pytest.raises(ValueError, match=message):
        SplittingTuner(**bad)


def test_good_class_args_pass():
    SplittingClassArgsValidator().validate_class_args(
        model="mobilenet_v1", seed_widths=0.25, max_steps=3, grow_ratio=0.3, threshold=-1e-4, epsilon=0.01,
        method="exact", cost="flops", budget={"params_ratio": 0.5}, beam=2,
        trial={"dataset": "cifar10", "data_dir": "/data/cifar10", "epochs": 1},
        storage_path="/mnt/nfs/splitting", local_storage_path="/home/me/nfs/splitting")


def test_storage_map_remote_to_local_and_back():
    mapping = StorageMap.from_shared_storage({"storageType": "NFS", "localMountPoint": "/home/me/mnt",
                                              "remoteMountPoint": "/tmp/nni-shared", "localMounted": "usermount"})
    remote = "/tmp/nni-shared/EXP/trial1/splitting.json"
    assert mapping.to_local(remote) == "/home/me/mnt/EXP/trial1/splitting.json"
    assert mapping.to_trial(mapping.to_local(remote)) == remote
    assert mapping.to_local("/tmp/nni-shared-other/x") == "/tmp/nni-shared-other/x"  # prefix, not a parent
    assert mapping.to_local("/elsewhere/x") == "/elsewhere/x"
    assert StorageMap().to_local(remote) == remote
    assert StorageMap("/mnt/a/", "/b").to_local("/mnt/a/x/y") == "/b/x/y"
    with pytest.raises(ValueError, match="remoteMountPoint"):
        StorageMap.from_shared_storage({"storageType": "NFS", "localMountPoint": "/x"})


def test_trial_output_dir():
    assert str(trial_output_dir("/mnt/s", "E1", "T1", "/nni/out")) == "/mnt/s/E1/T1"
    assert str(trial_output_dir(None, "E1", "T1", "/nni/out")) == "/nni/out"
    assert trial_output_dir(None, None, None, None) is None


def test_tuner_reads_trial_files_through_storage_map(tmp_path):
    """Trials report worker paths under storage_path; the tuner reads them under local_storage_path."""
    local = tmp_path / "local-view"
    tuner, nni_ = make(tmp_path, seed_widths=[3, 2], max_splits=1, storage_path="/remote/share",
                       local_storage_path=str(local))
    nni_.tmp = local
    nni_.request(1)
    pid, seed = nni_.only_running()
    assert seed["storage_path"] == "/remote/share"
    nni_.running.pop(pid)
    folder = local / "E" / "T0"
    atomic_write_json(folder / "splitting.json", {
        "model": "fake", "widths": [3, 2], "width_layers": LAYERS,
        "eigenvalues": {"a": [-0.1, -0.5, 0.2], "b": [-0.3, 0.0]}, "params": 1, "flops": 1})
    result = {"default": 0.5, "indexes": "/remote/share/E/T0/splitting.json",
              "checkpoint": "/remote/share/E/T0/checkpoint.pt", "splits": "/remote/share/E/T0/splits.pt"}
    tuner.receive_trial_result(pid, seed, result, trial_job_id="T0")
    child = tuner.generate_parameters(5)
    assert child["split_plan"] == {"a": [1]}
    assert child["parent_checkpoint"] == "/remote/share/E/T0/checkpoint.pt"  # worker view passed on


def test_lineage_helpers():
    assert lin.split_count([10, 20], 0.3, None) == 9
    assert lin.split_count([10, 20], None, 4) == 4
    assert lin.split_count([1], 0.1, None) == 1
    assert lin.grown_widths([3, 2], LAYERS, {"b": [0, 1]}) == [3, 4]
    with pytest.raises(ValueError, match="not a width layer"):
        lin.grown_widths([3, 2], LAYERS, {"c": [0]})
    assert lin.parse_budget(100) == {"params": 100.0}
    assert lin.parse_budget(None) == {}
    ranked = lin.rank_plan({"a": [0, 2], "b": [1]}, {"a": [-1.0, 0, -3.0], "b": [0, -2.0]})
    assert ranked == [("a", 2), ("b", 1), ("a", 0)]
    assert lin.halve_plan(ranked) == {"a": [2]}


@pytest.mark.parametrize("name", ["cifar.yml", "cifar_protocol_ablations.yml", "cifar_protocol_ablations2.yml",
                                  "cifar_protocol_strategies.yml", "cifar_protocol_strategies_seeds.yml",
                                  "cifar_protocol_s3d_seeds.yml"])
def test_growth_configs_pass_the_tuners_validator(name):
    """The shipped SplittingTuner configs are accepted by the validator nnictl runs before the tuner starts."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments" / name).read_text())
    assert config["tuner"]["className"].endswith("SplittingTuner")
    SplittingClassArgsValidator().validate_class_args(**config["tuner"]["classArgs"])
