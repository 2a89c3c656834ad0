"""Read a compiled KFP pipeline spec: tasks, their executors and platform settings, and stage-level edges.

Stage edges are traced through the spec's own plumbing (sub-DAG inputs of ParallelFor/condition blocks,
sub-DAG outputs of loops, gather steps), so they are what Kubeflow will actually run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.dag import kfp_task_name


@dataclass
class Task:
    dag: str
    name: str
    spec: dict
    component: str
    executor: dict | None  # deploymentSpec.executors[...] (container), None for sub-DAGs/importer
    platform: dict  # platforms.kubernetes.deploymentSpec.executors[...] ({} when none)


class SpecGraph:
    def __init__(self, docs: list[dict]):
        self.spec = docs[0]
        self.platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
        comps = self.spec["components"]
        self.dags = {"root": self.spec["root"]["dag"]}
        self.dags.update({name: c["dag"] for name, c in comps.items() if "dag" in c})
        self.callers: dict[str, tuple[str, str]] = {}
        self.tasks: dict[tuple[str, str], Task] = {}
        executors = self.spec["deploymentSpec"]["executors"]
        for dname, dag in self.dags.items():
            for tname, t in dag["tasks"].items():
                comp = t["componentRef"]["name"]
                self.callers[comp] = (dname, tname)
                label = comps.get(comp, {}).get("executorLabel")
                self.tasks[(dname, tname)] = Task(
                    dname, tname, t, comp, executors.get(label, {}).get("container") if label else None,
                    self.platform.get(label, {}) if label else {},
                )

    @classmethod
    def load(cls, path: str | Path) -> "SpecGraph":
        return cls(list(yaml.safe_load_all(Path(path).read_text())))

    def leaf_tasks(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.component not in self.dags]

    def task(self, name: str) -> Task:
        [match] = [t for t in self.leaf_tasks() if t.name == name]
        return match

    def enclosing(self, task: Task) -> list[dict]:
        """Task specs of the sub-DAG blocks around ``task`` (innermost first)."""
        out, dname = [], task.dag
        while dname != "root":
            parent_dag, parent_task = self.callers[dname]
            out.append(self.dags[parent_dag]["tasks"][parent_task])
            dname = parent_dag
        return out

    def _input_producers(self, dname: str, tname: str, name: str) -> set[tuple[str, str]]:
        source = self.dags[dname]["tasks"][tname]["inputs"]["artifacts"][name]
        if "taskOutputArtifact" in source:
            out = source["taskOutputArtifact"]
            return self._output_producers(dname, out["producerTask"], out["outputArtifactKey"])
        parent_dag, parent_task = self.callers[dname]
        return self._input_producers(parent_dag, parent_task, source["componentInputArtifact"])

    def _output_producers(self, dname: str, tname: str, key: str) -> set[tuple[str, str]]:
        comp = self.dags[dname]["tasks"][tname]["componentRef"]["name"]
        if comp not in self.dags:
            return {(dname, tname)}
        found = set()
        for sel in self.dags[comp]["outputs"]["artifacts"][key]["artifactSelectors"]:
            found |= self._output_producers(comp, sel["producerSubtask"], sel["outputArtifactKey"])
        return found

    def upstream_stages(self, task: Task, stage_of: dict[str, str]) -> set[str]:
        """Stages whose outputs reach ``task``'s inputs (through gathers); importers are sources."""
        found = set()
        for name in task.spec.get("inputs", {}).get("artifacts", {}):
            for key in self._input_producers(task.dag, task.name, name):
                producer = self.tasks[key]
                if producer.name in stage_of:
                    found.add(stage_of[producer.name])
                elif producer.name.startswith("gather-"):
                    found |= self.upstream_stages(producer, stage_of)
        return found

    def stage_edges(self, stage_names: list[str]) -> tuple[set[str], set[tuple[str, str]]]:
        stage_of = {kfp_task_name(s): s for s in stage_names}
        stage_of.update({f"launch-{kfp_task_name(s)}": s for s in stage_names})
        stages, edges = set(), set()
        for t in self.leaf_tasks():
            if t.name in stage_of:
                stages.add(stage_of[t.name])
                edges |= {(u, stage_of[t.name]) for u in self.upstream_stages(t, stage_of)}
        return stages, edges
