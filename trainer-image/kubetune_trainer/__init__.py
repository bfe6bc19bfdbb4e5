"""kubetune trainer: the container every FineTuneJob runs (config in, published adapter out).

Entry point: `python -m kubetune_trainer --config /etc/kubetune/config.json` (see docs/trainer.md).
"""

__version__ = "0.1.0"
