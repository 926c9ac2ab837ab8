"""The HTTP(S) control API: server, routes, TLS and the optional debug endpoints."""
