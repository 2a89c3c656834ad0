"""The Kubeflow Pipelines v2 form of the DAG: components, platform settings, compile, submit, schedule."""
