"""Names the tests look for in the app's answers: /healthz names one component per served model."""

from serve_app.config.names import DEFAULT_MODEL_NAME, TINY_MODEL_NAME

LLM = f"llm:{DEFAULT_MODEL_NAME}"  # the default model's component in /healthz
TINY_LLM = f"llm:{TINY_MODEL_NAME}"
# Every LLM deployment is named by its model: the default model's, and its Serve application's name in the
# session app (serve_app).
DEPLOYMENT = f"LLMServer-{DEFAULT_MODEL_NAME}"
APP = f"serve_app-{DEPLOYMENT}"
TINY_DEPLOYMENT = f"LLMServer-{TINY_MODEL_NAME}"
