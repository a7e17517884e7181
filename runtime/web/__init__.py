"""The browser playground: static files (no build step) and the route that serves them."""
