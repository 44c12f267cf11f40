"""``abn-train -m hparams_search=lr_wd``: an Optuna search of the learning rate and weight decay, as the README shows it,
run in this process on tiny embedded shapes."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import abn.train
from abn.config import config_dir

from .conftest import TINY_SHAPES

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='pip install "abn[optuna]"')

SEARCH = ["-m", "hparams_search=lr_wd"]
# one epoch, without TensorBoard, attention figures or a memory-format measurement (each trial still saves its
# checkpoints and is tested)
TINY_RUN = [*TINY_SHAPES, "trainer.max_epochs=1", "logger=none", "callbacks.attention_images=null",
            "model.channels_last=false"]
PRESET = OmegaConf.load(config_dir() / "hparams_search" / "lr_wd.yaml")


def search_range(key: str) -> tuple[float, float]:
    """(low, high) of ``key``'s ``tag(log, interval(low, high))`` in the preset."""
    text = PRESET.hydra.sweeper.params[key]
    assert text.startswith("tag(log, interval(")
    low, high = text.removeprefix("tag(log, interval(").rstrip(")").split(",")
    return float(low), float(high)


def run_search(folder: Path, arguments: list[str]) -> tuple[int, str, list[dict]]:
    """Run ``abn-train arguments`` in ``folder`` as a user would; (exit code, the message it exits with where it stops
    before Hydra starts, what each trial that finished training used and logged: lr, weight_decay, metrics, folder)."""
    trials: list[dict] = []
    train = abn.train.train

    def recording_train(cfg, *args, **kwargs):
        metrics = train(cfg, *args, **kwargs)
        trials.append({"lr": cfg.model.optimizer.lr, "weight_decay": cfg.model.optimizer.weight_decay,
                       "metrics": metrics, "folder": Path(HydraConfig.get().runtime.output_dir)})
        return metrics

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(folder)
        monkeypatch.setattr(sys, "argv", ["abn-train", *arguments])
        monkeypatch.setattr(abn.train, "train", recording_train)
        GlobalHydra.instance().clear()
        try:
            abn.train.main()
            code, message = 0, ""
        except SystemExit as exit:
            code, message = (exit.code, "") if isinstance(exit.code, int) else (1, str(exit.code))
        finally:
            GlobalHydra.instance().clear()
    return code, message, trials


def sweep_folder(folder: Path) -> Path:
    (sweep,) = (folder / "logs" / "train" / "multiruns").iterdir()
    return sweep


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The README's command with three trials: (the sweep's folder, the trials)."""
    folder = tmp_path_factory.mktemp("search")
    code, _, trials = run_search(folder, [*SEARCH, "hydra.sweeper.n_trials=3", *TINY_RUN])
    assert code == 0
    return sweep_folder(folder), trials


def test_each_trial_is_a_run_in_its_own_folder_within_the_search_space(search):
    sweep, trials = search
    assert len(trials) == 3
    assert sorted(path.name.split("_")[0] for path in sweep.iterdir() if path.is_dir()) == ["0", "1", "2"]
    assert {trial["folder"].parent for trial in trials} == {sweep}
    assert len({trial["folder"] for trial in trials}) == 3
    for key, name in (("model.optimizer.lr", "lr"), ("model.optimizer.weight_decay", "weight_decay")):
        low, high = search_range(key)
        assert all(low <= trial[name] <= high for trial in trials)
        assert len({trial[name] for trial in trials}) == 3  # each trial tries other settings
    for trial in trials:
        assert (trial["folder"] / "checkpoints" / "last.ckpt").is_file()
        saved = OmegaConf.load(trial["folder"] / ".hydra" / "config.yaml")
        assert saved.optimized_metric == "val/acc"  # what each trial returned to the sweeper
        assert saved.model.optimizer.lr == trial["lr"]


def test_the_best_settings_are_those_of_the_trial_with_the_best_validation_accuracy(search):
    sweep, trials = search
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    best = max(trials, key=lambda trial: trial["metrics"]["val/acc"])
    assert results.best_value == best["metrics"]["val/acc"]
    best_lr, best_weight_decay = results.best_params["model.optimizer.lr"], results.best_params["model.optimizer.weight_decay"]
    (chosen,) = [trial for trial in trials if trial["lr"] == best_lr]
    assert chosen["weight_decay"] == best_weight_decay
    assert chosen["metrics"]["val/acc"] == results.best_value


def test_a_diverged_trial_fails_alone_and_the_search_goes_on(tmp_path):
    # the seeded sampler tries lr=1e6 (diverges at its first step) first, then 0.05; weight_decay held fixed
    code, _, trials = run_search(tmp_path, [*SEARCH, "hydra.sweeper.n_trials=2", "model.optimizer.lr=choice(0.05,1000000.0)",
                                         "model.optimizer.weight_decay=0.0001", *TINY_RUN])
    assert code == 0
    sweep = sweep_folder(tmp_path)
    (diverged,) = [path for path in sweep.iterdir() if path.name.startswith("0_")]
    assert "Train again with a lower learning rate" in (diverged / "train.log").read_text()  # its folder is kept
    assert [(trial["lr"], trial["weight_decay"]) for trial in trials] == [(0.05, 0.0001)]
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert dict(results.best_params) == {"model.optimizer.lr": 0.05}
    assert results.best_value == trials[0]["metrics"]["val/acc"]


def test_a_trial_whose_metric_is_nan_fails_alone(tmp_path, monkeypatch):
    values = iter([math.nan, 0.5])
    monkeypatch.setattr(abn.train, "train", lambda cfg, **kwargs: {"val/acc": next(values)})  # no training needed
    code, _, _ = run_search(tmp_path, [*SEARCH, "hydra.sweeper.n_trials=2"])
    assert code == 0
    assert OmegaConf.load(sweep_folder(tmp_path) / "optimization_results.yaml").best_value == 0.5


def test_a_wrong_setting_stops_the_search_at_its_first_trial(tmp_path, capsys):
    code, _, trials = run_search(tmp_path, [*SEARCH, *TINY_RUN, "data.batch_size=abc"])
    printed = capsys.readouterr()
    assert code == 1 and not trials
    assert "data.batch_size='abc': must be a positive integer" in printed.out + printed.err
    assert "#1 :" not in printed.out  # no second trial was launched
    assert not (sweep_folder(tmp_path) / "optimization_results.yaml").exists()


def test_a_metric_the_run_does_not_log_stops_the_search_with_its_name(tmp_path, capsys):
    code, _, trials = run_search(tmp_path, [*SEARCH, *TINY_RUN, "test=false", "optimized_metric=val/accuracy"])
    printed = capsys.readouterr()
    assert code == 1 and len(trials) == 1
    assert "optimized_metric=val/accuracy: this run logged no such metric" in printed.err
    assert "#1 :" not in printed.out


@pytest.mark.parametrize("arguments, message", [
    (["hparams_search=lr_wd"], "hparams_search=lr_wd runs a search of many trials: add -m"),
    ([*SEARCH, "optimized_metric=test/acc"], "a search must not choose its settings on the test split"),
])
def test_a_search_command_that_cannot_work_is_refused_before_any_run(tmp_path, arguments, message):
    code, printed, trials = run_search(tmp_path, arguments)
    assert code == 1 and message in printed and not trials
    assert not (tmp_path / "logs").exists()


def test_the_preset_can_be_shown_without_m(tmp_path, capsys):
    code, _, trials = run_search(tmp_path, ["hparams_search=lr_wd", "--cfg", "job"])
    assert code == 0 and not trials
    assert "optimized_metric: val/acc" in capsys.readouterr().out


def test_a_search_names_the_package_it_needs_when_the_sweeper_is_missing(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.startswith("hydra_plugins.hydra_optuna") else find_spec(name, *args))
    code, printed, _ = run_search(tmp_path, SEARCH)
    assert code == 1 and 'needs the Optuna sweeper for Hydra, which is not installed: pip install "abn[optuna]"' in printed
    assert not (tmp_path / "logs").exists()
