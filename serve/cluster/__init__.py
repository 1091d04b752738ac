"""Sluice on Ray Serve: each model's engine as a Serve deployment, our FastAPI app as the ingress."""
