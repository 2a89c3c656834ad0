"""Stage `register` and `p4d review`: Ψ as an MLflow pyfunc in the model registry, the release gate, the model
card, lineage tags, and the reviewers' approve / reject / rollback on aliases and tags (MLflow 3, no stages)."""
