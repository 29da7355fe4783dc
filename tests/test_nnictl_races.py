"""nnictl's races on a busy machine are retried by ``nni_splitting.nni.nnictl.start``.

NNI gives the tuner 10 s to connect; on a loaded machine (measured here: two trials and a benchmark
on 2 cores) a fresh experiment turns ERROR with "Tuner did not connect in 10 seconds" before any
trial. The race cannot be provoked on demand, so nnictl and the REST status are replaced by fakes
that answer what NNI answered then.
"""
import pytest

from nni_splitting.nni import nnictl, rest

CONFIG = {"searchSpace": {}, "trialCommand": "true", "trialConcurrency": 1,
          "tuner": {"name": "Random"}, "trainingService": {"platform": "local"}}


@pytest.fixture
def fake_nni(monkeypatch):
    state = {"created": [], "stopped": [], "answers": []}

    def create(path, port, public=False):
        experiment_id = f"exp{len(state['created'])}"
        state["created"].append((experiment_id, port))
        return experiment_id

    def status(base):
        lost = state["answers"].pop(0) if state["answers"] else False
        if lost:
            return {"status": "ERROR", "errors": ["tuner_command_channel: Tuner did not connect in 10 seconds. "
                                                  "Please check tuner (dispatcher) log."]}
        return {"status": "RUNNING", "errors": []}

    monkeypatch.setattr(nnictl, "create", create)
    monkeypatch.setattr(rest, "status", status)
    monkeypatch.setattr(nnictl, "stop", lambda experiment_id, **kw: state["stopped"].append(experiment_id) or True)
    return state


def test_start_recreates_an_experiment_whose_tuner_lost_the_race(fake_nni, capsys):
    fake_nni["answers"] = [True, False]  # the first experiment's tuner does not connect, the second's does
    experiment_id, port = nnictl.start(CONFIG, "cfg.yml", port=30100, check_s=5)
    assert experiment_id == "exp1" and fake_nni["stopped"] == ["exp0"]
    assert port != fake_nni["created"][0][1]  # the retry takes another port
    assert "did not connect in time; stopped it, retrying" in capsys.readouterr().out


def test_start_gives_up_after_its_attempts_and_leaves_nothing_running(fake_nni):
    fake_nni["answers"] = [True, True, True]
    with pytest.raises(RuntimeError, match="tuner did not connect in time in 3 attempts"):
        nnictl.start(CONFIG, "cfg.yml", port=30200, check_s=5)
    assert fake_nni["stopped"] == ["exp0", "exp1", "exp2"]


def test_start_returns_at_once_when_the_tuner_connects(fake_nni):
    experiment_id, port = nnictl.start(CONFIG, "cfg.yml", port=30300, check_s=5)
    assert (experiment_id, port) == ("exp0", 30300) and fake_nni["stopped"] == []
