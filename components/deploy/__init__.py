"""The `deploy` stage: Triton model repository, the real tritonserver, rollout/rollback, and the client."""
