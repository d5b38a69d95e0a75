"""The web page and REST API (``pneumo serve``): a second opinion for clinicians, never a replacement for one.

:func:`pneumo.serve.app.create_app` builds the FastAPI app; :func:`pneumo.serve.app.run_server` runs it with uvicorn.
Uploads are held in memory only; nothing a client sends is written to disk or to the logs.
"""
