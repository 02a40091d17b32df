"""``gunicorn tests.gc_wsgi:app``: the tiny service, plus ``GET /test/gc``, the worker's garbage collector state."""

import gc

from tests.tiny_wsgi import app


@app.get("/test/gc")
def collector_state():
    return {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
