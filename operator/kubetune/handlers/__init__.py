"""kopf handlers. Importing this package registers them (`kopf run -m kubetune.handlers`).

Every handler run per watch event (indexes included) is `async def`: kopf runs a plain function in its thread pool,
a thread hop per event of every watched object (tests/unit/test_handlers_async.py)."""

from . import children, finetunejob, metrics, modeldeployment, scaling, scaling_events, startup  # noqa: F401
