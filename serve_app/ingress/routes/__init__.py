"""The public HTTP API, one thin router per resource: validate against the settings, call a deployment
through the call layer (serve_app/calls), answer. What a route needs comes from the replica's
IngressContext (serve_app/ingress/context.py) through FastAPI's dependency injection."""

from serve_app.ingress.routes import (
                                      admin,
                                      agent,
                                      chat,
                                      completions,
                                      conversations,
                                      documents,
                                      embeddings,
                                      files,
                                      health,
                                      keys,
                                      models,
                                      rag,
                                      responses,
                                      search,
                                      tokens,
)

ROUTERS = [health.router, models.router, chat.router, completions.router, tokens.router, embeddings.router,
           documents.router, search.router, rag.router, agent.router, admin.router,
           keys.router, responses.router, conversations.router, files.router]
