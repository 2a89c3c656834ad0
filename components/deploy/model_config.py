"""``config.pbtxt`` of the two Triton models, built as Triton's own ``ModelConfig`` protobuf.

Building the message (tritonclient ships ``model_config_pb2``) rather than formatting text means a
misspelt field fails here, at export, instead of at the server's load.
"""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from components.config.deploy import DeployConfig
from components.deploy.contract import CORRID, END, START, TensorSpec, input_specs, output_specs

# parameters{} keys model.py reads: everything the server side needs travels in config.pbtxt
MODE_PARAMETER = "p4d_mode"  # "stateless" | "session": which adapter the shared model.py runs
MAX_IMAGE_BYTES_PARAMETER = "p4d_max_image_bytes"
MAX_IMAGE_SIDE_PARAMETER = "p4d_max_image_side"
SOURCE_CACHE_PARAMETER = "p4d_source_cache_size"
DTYPE_PARAMETER = "p4d_dtype"  # "" = the Animator's default for the device


def _tensor(message_type, spec: TensorSpec, optional: bool | None = None):
    msg = message_type(name=spec.name, data_type=pb.DataType.Value(f"TYPE_{spec.dtype}"), dims=list(spec.dims))
    if optional is not None:
        msg.optional = optional
    return msg


def _control(name: str, kind: str, data_type: str):
    control = pb.ModelSequenceBatching.Control(kind=pb.ModelSequenceBatching.Control.Kind.Value(kind),
                                               data_type=pb.DataType.Value(data_type))
    if data_type == "TYPE_BOOL":
        control.bool_false_true.extend([False, True])
    return pb.ModelSequenceBatching.ControlInput(name=name, control=[control])


def model_config(cfg: DeployConfig, image_size: int, motion_dim: int, session: bool) -> pb.ModelConfig:
    name = cfg.session_model_name if session else cfg.model_name
    kind = "KIND_GPU" if cfg.instance_kind == "gpu" else "KIND_CPU"
    config = pb.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=cfg.max_batch_size,
        version_policy=pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=cfg.versions_served)),
        input=[_tensor(pb.ModelInput, s, optional=True) for s in input_specs(motion_dim)],
        output=[_tensor(pb.ModelOutput, s) for s in output_specs(image_size, session)],
        instance_group=[pb.ModelInstanceGroup(kind=pb.ModelInstanceGroup.Kind.Value(kind), count=cfg.instance_count)],
    )
    parameters = {
        MODE_PARAMETER: "session" if session else "stateless",
        MAX_IMAGE_BYTES_PARAMETER: str(cfg.max_image_bytes),
        MAX_IMAGE_SIDE_PARAMETER: str(cfg.max_image_side),
        SOURCE_CACHE_PARAMETER: str(cfg.source_cache_size),
        DTYPE_PARAMETER: cfg.dtype or "",
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    if session:
        # Oldest strategy: frames of different sessions share an execute() call, and each session stays on
        # one instance (its source cache lives in that instance's process). No response cache: Triton
        # cannot combine it with sequence batching.
        config.sequence_batching.CopyFrom(pb.ModelSequenceBatching(
            oldest=pb.ModelSequenceBatching.StrategyOldest(
                max_candidate_sequences=cfg.max_sessions,
                max_queue_delay_microseconds=cfg.max_queue_delay_us,
            ),
            max_sequence_idle_microseconds=int(cfg.session_idle_timeout_s * 1e6),
            control_input=[
                _control(START, "CONTROL_SEQUENCE_START", "TYPE_BOOL"),
                _control(END, "CONTROL_SEQUENCE_END", "TYPE_BOOL"),
                _control(CORRID, "CONTROL_SEQUENCE_CORRID", "TYPE_UINT64"),
            ],
        ))
    else:
        # Requests of different users (different sources) grouped here are rendered in one Animator call
        # (backend.py), up to max_batch_size rows; the queue delay is how long a request waits for company.
        config.dynamic_batching.CopyFrom(pb.ModelDynamicBatching(
            max_queue_delay_microseconds=cfg.max_queue_delay_us,
        ))
    return config


def config_text(config: pb.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config_text(text: str) -> pb.ModelConfig:
    return text_format.Parse(text, pb.ModelConfig())
