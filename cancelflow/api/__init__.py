"""The HTTP API: FastAPI app and routers (thin: parse, call a service, shape the response).

`uvicorn --factory cancelflow.api.app:create_app` serves it.
"""
