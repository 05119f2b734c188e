"""The plugin's own test: tuner's task contract, run against the plugin's task."""

from tuner_example_task import SineMLP

from tuner.tasks.contract import check_task


def test_sine_mlp_keeps_the_contract():
    check_task(SineMLP(train_size=128))
