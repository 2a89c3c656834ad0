"""Stage ``evaluate``: a trained Ψ on held-out clips -> reenactment metrics, per-item table, gate, samples.

``run(config, psi, data, assets, out, ...)`` (stage.py) is the whole stage; ``p4d evaluate`` (cli.py)
is a thin wrapper around it. The metric functions are in metrics.py, the gate in gate.py.
"""

from components.config.evaluate import GREATER_IS_BETTER, METRIC_NAMES, EvaluateConfig, GateRule

__all__ = ["EvaluateConfig", "GateRule", "GREATER_IS_BETTER", "METRIC_NAMES", "EvaluateResult", "run"]


def __getattr__(name: str):
    # The stage pulls in torch, MediaPipe and the engine; importing the config alone stays cheap.
    if name in ("run", "EvaluateResult"):
        from components.evaluate import stage

        return getattr(stage, name)
    raise AttributeError(name)
