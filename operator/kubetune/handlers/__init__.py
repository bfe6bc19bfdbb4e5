"""kopf handlers. Importing this package registers them (`kopf run -m kubetune.handlers`)."""

from . import children, finetunejob, metrics, modeldeployment, scaling, scaling_events, startup  # noqa: F401
