"""HTTP front door: FastAPI app served by the Ingress deployment."""
