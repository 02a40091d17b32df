"""WSGI entry point: ``gunicorn wsgi:app``.

With Gunicorn's ``preload_app`` this module is imported once in the master,
so the model is loaded before the workers fork and shared copy-on-write.
A bad setting or unloadable weights end the process with one line and an exit
status of their own (``clip_service/startup.py``), never a traceback.
"""

from clip_service.startup import app_or_exit

app = app_or_exit()
