"""HTTP serving: ``semseg serve`` puts a Predictor behind FastAPI (see :mod:`semseg.serving.app`).

FastAPI and uvicorn are optional: ``pip install "semseg[serve]"``.
"""
