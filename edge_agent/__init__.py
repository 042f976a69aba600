"""edge-agent: local-first step-by-step reasoning with cloud escalation at the steps that need it."""

from triggers.learned import use_models_dir

from .config import models_dir

__version__ = "0.1.0"

# the one wiring the lower packages need from the application: where trained models live
use_models_dir(models_dir)
