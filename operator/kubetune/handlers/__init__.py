"""kopf handlers. Importing this package registers them (`kopf run -m kubetune.handlers`)."""

from . import children, finetunejob, metrics, modeldeployment, startup  # noqa: F401
