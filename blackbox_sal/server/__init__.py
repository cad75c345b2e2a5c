"""The HTTP server (the ``[serve]`` extra: starlette and uvicorn): ``blackbox-sal serve``.

:class:`~blackbox_sal.server.app.Server` holds the models and their engines and is the ASGI
application (``Server(...).app``); :func:`~blackbox_sal.server.process.run` serves it with
uvicorn. Requests and statuses: :mod:`blackbox_sal.server.protocol`.
"""
