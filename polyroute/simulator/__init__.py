"""Offline simulated upstreams: real HTTP servers on 127.0.0.1 with scripted latency
and failures, for demos and for chaos-testing a routing config. Ground floor:
imports ``polyroute.core`` only. Private API except through the CLI and the
``simulated`` provider type."""
