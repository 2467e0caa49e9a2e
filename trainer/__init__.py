"""The trainer sidecar (`pseudoserve trainer`): it receives the traffic the service captured
(`collector`), keeps it in a durable SQLite sample store (`store`), answers the control API
(`control`: pool status, late labels, active-learning queries, rounds) and runs self-training
rounds whose students are published back to the service. `server` assembles the process.

Nothing here is imported by the service; the trainer may import `service.tensors`,
`service.repository` and `service.security`.
"""
