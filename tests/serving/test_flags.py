"""tensorflow_model_server's command line: TF flag syntax, defaults, config files, checks."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from serving import config_protos, flags
from serving.errors import ServingError

# Every flag of the contract's table (TFS_CONTRACT.md §1) with its default.
CONTRACT_DEFAULTS = {
    "port": 8500,
    "grpc_socket_path": "",
    "rest_api_port": 0,
    "rest_api_timeout_in_ms": 30000,
    "rest_api_enable_cors_support": False,
    "model_name": "default",
    "model_base_path": "",
    "model_config_file": "",
    "model_config_file_poll_wait_seconds": 0,
    "file_system_poll_wait_seconds": 1,
    "enable_batching": False,
    "batching_parameters_file": "",
    "enable_per_model_batching_parameters": False,
    "allow_version_labels_for_unavailable_models": False,
    "monitoring_config_file": "",
    "enable_model_warmup": True,
    "num_request_iterations_for_warmup": 0,
    "saved_model_tags": "serve",
    "num_load_threads": 0,
    "num_unload_threads": 0,
    "max_num_load_retries": 5,
    "load_retry_interval_micros": 60000000,
    "flush_filesystem_caches": True,
    "tensorflow_session_parallelism": 0,
    "tensorflow_intra_op_parallelism": 0,
    "tensorflow_inter_op_parallelism": 0,
    "tensorflow_session_config_file": "",
    "per_process_gpu_memory_fraction": 0.0,
    "platform_config_file": "",
    "grpc_channel_arguments": "",
    "use_alts_credentials": False,
    "ssl_config_file": "",
    "enable_signature_method_name_check": False,
    "enable_serialization_as_tensor_content": False,
    "remove_unused_fields_from_bundle_metagraph": True,
    "prefer_tflite_model": False,
    "num_tflite_interpreters_per_pool": 1,
    "xla_cpu_compilation_enabled": False,
    "xla_gpu_compilation_enabled": False,
    "enable_profiler": True,
    "thread_pool_factory_config_file": "",
    "mixed_precision": "",
    "skip_initialize_tpu": False,
    "enable_grpc_healthcheck_service": False,
    "version": False,
}
CPU_SCALED = ("rest_api_num_threads", "grpc_max_threads", "num_tflite_pools")


def test_every_contract_flag_exists_with_its_default():
    options = flags.parse_flags([])
    for name, default in CONTRACT_DEFAULTS.items():
        assert getattr(options, name) == default, name
    for name in CPU_SCALED:
        assert getattr(options, name) >= 1, name
    assert options.unknown_arguments == ()


def test_every_flag_is_an_options_field():
    fields = {f.name for f in dataclasses.fields(flags.ServerOptions)}
    assert {flag.name for flag in flags.FLAGS} <= fields


def test_values_and_bare_booleans():
    options = flags.parse_flags(
        [
            "--port=9000",
            "--rest_api_port=9001",
            "--model_name=m",
            "--model_base_path=/a/b",
            "--enable_batching",
            "--enable_model_warmup=false",
            "--rest_api_enable_cors_support=true",
            "--per_process_gpu_memory_fraction=0.5",
            "--load_retry_interval_micros=9000000000",
            "--saved_model_tags=serve,gpu",
            "--model_name=again",
        ]
    )
    assert (options.port, options.rest_api_port) == (9000, 9001)
    assert options.model_name == "again"  # the last occurrence wins
    assert options.enable_batching is True
    assert options.enable_model_warmup is False
    assert options.rest_api_enable_cors_support is True
    assert options.per_process_gpu_memory_fraction == 0.5
    assert options.load_retry_interval_micros == 9_000_000_000  # int64 flag
    assert options.tag_set == ("serve", "gpu")
    # With batching on and no file, BatchingParameters is present and empty (TF defaults apply).
    assert options.batching_parameters is not None
    assert not options.batching_parameters.HasField("max_batch_size")


@pytest.mark.parametrize(
    "argument",
    [
        "--enable_batching=1",
        "--enable_batching=yes",
        "--enable_batching=True",
        "--enable_batching=",
        "--port=abc",
        "--port=1.5",
        "--port=",
        "--port",
        "--port=99999999999",
        "--per_process_gpu_memory_fraction=half",
    ],
)
def test_malformed_value_for_known_flag_is_a_usage_error(argument):
    with pytest.raises(flags.FlagError):
        flags.parse_flags([argument])


def test_unknown_arguments_are_collected_not_fatal():
    options = flags.parse_flags(["--no_such_flag=1", "stray", "-port=1", "--port=7"])
    assert options.unknown_arguments == ("--no_such_flag=1", "stray", "-port=1")
    assert options.port == 7


def test_help_is_detected_and_usage_lists_every_flag():
    _, _, wants_help = flags.parse_args(["--help"])
    assert wants_help
    text = flags.usage("tensorflow_model_server")
    assert text.startswith("usage: tensorflow_model_server\n")
    for flag in flags.FLAGS:
        assert f"--{flag.name}=" in text


def test_options_are_frozen():
    options = flags.parse_flags([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.port = 1  # type: ignore[misc]


def test_batching_and_monitoring_files_are_parsed(tfs_testdata):
    reference = tfs_testdata / "reference"
    options = flags.parse_flags(
        [
            "--enable_batching",
            f"--batching_parameters_file={reference / 'batching_config.txt'}",
            f"--monitoring_config_file={reference / 'monitoring_config.txt'}",
        ]
    )
    batching = options.batching_parameters
    assert batching.max_batch_size.value == 128
    assert batching.HasField("batch_timeout_micros") and batching.batch_timeout_micros.value == 0
    assert batching.max_enqueued_batches.value == 1000000
    assert batching.num_batch_threads.value == 8
    assert not batching.HasField("thread_pool_name")
    assert options.prometheus_enabled
    assert options.prometheus_path == "/monitoring/prometheus/metrics"


def test_monitoring_defaults_when_no_file_or_empty_path():
    assert not flags.parse_flags([]).prometheus_enabled
    monitoring = config_protos.parse_text(
        config_protos.MonitoringConfig, "prometheus_config { enable: true }"
    )
    assert monitoring.prometheus_config.enable
    options = flags.options_for_tests(monitoring_config=monitoring)
    assert options.prometheus_path == config_protos.DEFAULT_PROMETHEUS_PATH


def test_all_batching_fields_parse_in_wrapper_syntax():
    text = """
        max_batch_size { value: 64 }  batch_timeout_micros { value: 5000 }
        thread_pool_name { value: "pool" }  num_batch_threads { value: 2 }
        max_enqueued_batches { value: 7 }  allowed_batch_sizes: 8  allowed_batch_sizes: 64
        pad_variable_length_inputs: true  enable_large_batch_splitting { value: true }
        max_execution_batch_size { value: 32 }
    """
    batching = config_protos.parse_text(config_protos.BatchingParameters, text)
    assert batching.thread_pool_name.value == "pool"
    assert list(batching.allowed_batch_sizes) == [8, 64]
    assert batching.pad_variable_length_inputs
    assert batching.enable_large_batch_splitting.value
    assert batching.max_execution_batch_size.value == 32
    # Binary round trip keeps every field.
    again = config_protos.BatchingParameters.FromString(batching.SerializeToString())
    assert again == batching


def test_bad_config_file_reports_tf_servings_phrase(tmp_path):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size: 128\n")  # not the wrapper syntax
    with pytest.raises(config_protos.TextProtoError) as raised:
        flags.parse_flags(["--enable_batching", f"--batching_parameters_file={bad}"])
    assert str(raised.value) == f"Invalid protobuf file: '{bad}'"
    assert raised.value.log_line.startswith(
        "Error parsing text-format tensorflow.serving.BatchingParameters: 1:"
    )
    with pytest.raises(config_protos.TextProtoError):
        flags.parse_flags([f"--monitoring_config_file={tmp_path / 'missing.config'}"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
        (
            ["--model_base_path=/m", "--port=0"],
            "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set.",
        ),
        (
            ["--model_base_path=/m", "--batching_parameters_file=/b.config"],
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true.",
        ),
        (
            [
                "--model_base_path=/m",
                "--tensorflow_session_parallelism=1",
                "--tensorflow_intra_op_parallelism=1",
                "--tensorflow_inter_op_parallelism=1",
            ],
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism). Setting both is not allowed.",
        ),
        (
            ["--model_base_path=/m", "--use_alts_credentials", "--ssl_config_file=/ssl.config"],
            "Either use_alts_credentials must be false or ssl_config_file must be empty.",
        ),
        (
            ["--model_base_path=/m", "--python_switch_interval_micros=0"],
            "--python_switch_interval_micros must be positive, received 0",
        ),
    ],
)
def test_cross_flag_rules(arguments, message):
    with pytest.raises(ServingError) as raised:
        flags.parse_flags(arguments).validate()
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == message


def test_valid_combinations_pass_validation():
    flags.parse_flags(["--model_base_path=/m"]).validate()
    flags.parse_flags(["--model_config_file=/c.config"]).validate()
    flags.parse_flags(["--model_base_path=/m", "--port=0", "--grpc_socket_path=/tmp/s"]).validate()
    flags.parse_flags(
        ["--model_base_path=/m", "--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=2"]
    ).validate()
