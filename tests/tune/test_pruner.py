"""The median pruner that compares a trial only with trials removing at least as much."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution

from otonas.tuning import BudgetAwareMedianPruner


def _add(study, sparsity, curve, state=optuna.trial.TrialState.COMPLETE):
    study.add_trial(optuna.trial.create_trial(
        params={"sparsity": sparsity}, distributions={"sparsity": FloatDistribution(0, 1)},
        values=[curve[-1], 1000 * (1 - sparsity)] if state == optuna.trial.TrialState.COMPLETE else None,
        intermediate_values=dict(enumerate(curve)), state=state))


def _frozen(sparsity, curve):
    return optuna.trial.create_trial(params={"sparsity": sparsity},
                                     distributions={"sparsity": FloatDistribution(0, 1)},
                                     intermediate_values=dict(enumerate(curve)),
                                     state=optuna.trial.TrialState.RUNNING)


def test_prunes_only_against_trials_that_remove_at_least_as_much():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for s in (0.6, 0.7, 0.8):  # sparser trials, all better at epoch 2 than 0.5
        _add(study, s, [0.5, 0.8, 0.9])
    _add(study, 0.1, [0.9, 0.99, 0.99])  # a denser, better trial: not a fair comparison
    pruner = BudgetAwareMedianPruner(n_startup_trials=3, n_warmup_steps=1)
    assert pruner.prune(study, _frozen(0.5, [0.5, 0.6]))       # beaten by cheaper trials
    assert not pruner.prune(study, _frozen(0.5, [0.5, 0.85]))  # above their median
    assert not pruner.prune(study, _frozen(0.9, [0.1, 0.2]))   # nobody removes as much: no peers
    assert not pruner.prune(study, _frozen(0.5, [0.1]))        # in warm-up (epoch 0)


def test_waits_for_enough_peers():
    study = optuna.create_study(directions=["maximize", "minimize"])
    _add(study, 0.6, [0.5, 0.8])
    _add(study, 0.7, [0.5, 0.8], state=optuna.trial.TrialState.PRUNED)
    pruner = BudgetAwareMedianPruner(n_startup_trials=3, n_warmup_steps=1)
    assert not pruner.prune(study, _frozen(0.5, [0.5, 0.1]))
    _add(study, 0.65, [0.5, 0.8])
    assert pruner.prune(study, _frozen(0.5, [0.5, 0.1]))  # pruned trials count as peers too


def test_a_flops_budget_compares_with_trials_that_keep_no_more():
    def add(flops, curve):
        study.add_trial(optuna.trial.create_trial(
            params={"flops": flops}, distributions={"flops": FloatDistribution(0, 1)},
            values=[curve[-1], flops], intermediate_values=dict(enumerate(curve))))

    def frozen(flops, curve):
        return optuna.trial.create_trial(params={"flops": flops}, distributions={"flops": FloatDistribution(0, 1)},
                                         intermediate_values=dict(enumerate(curve)),
                                         state=optuna.trial.TrialState.RUNNING)

    study = optuna.create_study(directions=["maximize", "minimize"])
    for f in (0.2, 0.3, 0.4):  # cheaper trials (keep fewer FLOPs), all good at epoch 2
        add(f, [0.5, 0.8, 0.9])
    pruner = BudgetAwareMedianPruner(n_startup_trials=3, n_warmup_steps=1)
    assert pruner.prune(study, frozen(0.5, [0.5, 0.6]))        # beaten by trials that keep less
    assert not pruner.prune(study, frozen(0.1, [0.1, 0.2]))    # nobody keeps as little: no peers


def test_an_optuna_pruner_that_trial_should_prune_consults():
    pruner = BudgetAwareMedianPruner(n_startup_trials=1, n_warmup_steps=0)
    assert isinstance(pruner, optuna.pruners.BasePruner)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.add_trial(optuna.trial.create_trial(params={"sparsity": 0.7},
                                              distributions={"sparsity": FloatDistribution(0, 1)},
                                              value=0.9, intermediate_values={0: 0.9}))
    for accuracy, stopped in ((0.1, True), (0.95, False)):
        study.enqueue_trial({"sparsity": 0.5})
        trial = study.ask()
        trial.suggest_float("sparsity", 0, 1)
        trial.report(accuracy, 0)
        assert trial.should_prune() is stopped
        study.tell(trial, state=optuna.trial.TrialState.PRUNED if stopped else optuna.trial.TrialState.FAIL)
