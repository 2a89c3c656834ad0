"""Stage ``fit_flame``: offline landmarks, 512 alignment, batched FLAME fitting, PD-FGC motion.

``run(config, input_path, assets_dir, out_dir, video, device, batch)`` is the whole stage; the
``p4d fit-flame`` command (cli.py) is a thin wrapper around it.
"""

from components.config.fit_flame import FitFlameConfig

__all__ = ["FitFlameConfig", "FitFlameResult", "FailureRatioExceeded", "run"]


def __getattr__(name: str):
    # The stage pulls in torch, PyAV and MediaPipe; importing the config alone stays cheap.
    if name in ("run", "FitFlameResult", "FailureRatioExceeded"):
        from components.fit_flame import stage

        return getattr(stage, name)
    raise AttributeError(name)
