"""Agent programs shipped with Corral. Each is an ordinary SDK agent run as
``python -m corral.agents.<name>``; they import only ``corral.sdk`` and the domain."""
