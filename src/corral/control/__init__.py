"""Services: the platform's composition root, the agent lifecycle controller, the task
dispatcher, the reconciler and the reaper. Everything with a loop lives here; the edges
(api, cli) call these services and nothing below them directly."""
