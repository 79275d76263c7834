"""The pure core: quantities, plans, tenancy, admission, agents, tasks, messages, errors.

No I/O here: nothing in this package touches a database, a socket, a process or a clock
it was not handed. Everything else in Corral is built on these types.
"""
