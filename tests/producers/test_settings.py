"""The producers' settings: defaults tuned for holding events in memory, read from FLEETPULSE_*
variables, a flush that fits in the stop timeout, each producer's own port and bounds."""

from __future__ import annotations

import pytest

from producers.settings import AgentSettings, ProducerSettings, SimulatorSettings
from schemas.messages import MAX_PROCESSES
from schemas.topics import RAW

SERVER = "6F1C2A8E-4B7D-4E0A-9C35-0D2F5B8E91A4"


def test_defaults_retry_sooner_and_stop_later_than_other_services(
    clean_env: pytest.MonkeyPatch,
) -> None:
    s = ProducerSettings()
    assert (s.raw_topic, s.buffer_size, s.max_chunk) == (RAW.name, 600, 2000)
    assert (s.retry_min, s.retry_max) == (0.2, 5.0)  # the other services: 0.5 and 30 s
    assert (s.flush_timeout, s.stop_timeout) == (10.0, 15.0)  # the other services stop in 10 s
    assert s.kafka_bootstrap == "127.0.0.1:19092"


def test_settings_come_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_RAW_TOPIC", "test.raw")
    clean_env.setenv("FLEETPULSE_BUFFER_SIZE", "50")
    clean_env.setenv("FLEETPULSE_MAX_CHUNK", "7")
    clean_env.setenv("FLEETPULSE_FLUSH_TIMEOUT", "1.5")
    clean_env.setenv("FLEETPULSE_KAFKA_BOOTSTRAP", "kafka1:9092")
    s = ProducerSettings()
    assert (s.raw_topic, s.buffer_size, s.max_chunk, s.flush_timeout) == ("test.raw", 50, 7, 1.5)
    assert s.kafka_bootstrap == "kafka1:9092"
    clean_env.setenv("FLEETPULSE_BUFFER_SIZE", "0")
    with pytest.raises(ValueError, match="buffer_size"):
        ProducerSettings()


def test_the_spool_is_off_unless_a_folder_is_given(clean_env: pytest.MonkeyPatch) -> None:
    s = ProducerSettings()
    assert (s.spool_dir, s.spool_max_bytes) == (None, 64 * 1024 * 1024)
    clean_env.setenv("FLEETPULSE_SPOOL_DIR", "/var/spool/fleetpulse")
    clean_env.setenv("FLEETPULSE_SPOOL_MAX_BYTES", "1048576")
    for model in (ProducerSettings, AgentSettings, SimulatorSettings):
        s = model()
        assert (str(s.spool_dir), s.spool_max_bytes) == ("/var/spool/fleetpulse", 1 << 20)
    clean_env.setenv("FLEETPULSE_SPOOL_MAX_BYTES", "1000")
    with pytest.raises(ValueError, match="spool_max_bytes"):
        ProducerSettings()


def test_a_producer_flush_must_fit_in_its_stop_timeout(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_STOP_TIMEOUT", "5")
    with pytest.raises(ValueError, match="flush_timeout must be less than stop_timeout"):
        ProducerSettings()
    clean_env.delenv("FLEETPULSE_STOP_TIMEOUT")
    assert ProducerSettings().stop_timeout > ProducerSettings().flush_timeout


def test_a_flush_as_long_as_the_stop_timeout_is_refused_a_shorter_one_is_not(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="flush_timeout must be less than stop_timeout"):
        ProducerSettings(flush_timeout=15.0)
    assert ProducerSettings(flush_timeout=14.9).flush_timeout == 14.9
    assert ProducerSettings(flush_timeout=0).flush_timeout == 0  # no flush at all
    # The agent and the simulator inherit the rule.
    clean_env.setenv("FLEETPULSE_FLUSH_TIMEOUT", "20")
    for model in (AgentSettings, SimulatorSettings):
        with pytest.raises(ValueError, match="flush_timeout must be less than stop_timeout"):
            model()


def test_the_retry_delays_keep_their_order(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_RETRY_MIN", "6")
    with pytest.raises(ValueError, match="retry_max must be at least retry_min"):
        ProducerSettings()
    clean_env.setenv("FLEETPULSE_RETRY_MAX", "6")
    assert ProducerSettings().retry_max == 6.0


def test_the_agent_has_its_own_port_and_a_server_id_to_give(
    clean_env: pytest.MonkeyPatch,
) -> None:
    s = AgentSettings()
    assert (s.metrics_port, s.server_id, s.disk_mount) == (9471, None, "/")
    assert (s.top_processes, s.interval, s.buffer_size) == (10, 1.0, 600)
    clean_env.setenv("FLEETPULSE_SERVER_ID", SERVER)
    assert AgentSettings().server_id == SERVER.lower()  # stored lower case
    clean_env.setenv("FLEETPULSE_SERVER_ID", "host-1")
    with pytest.raises(ValueError, match="server_id"):
        AgentSettings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("interval", 0.05),
        ("interval", 61),
        ("top_processes", MAX_PROCESSES + 1),
        ("top_processes", -1),
        ("metrics_port", 70000),
    ],
)
def test_the_agent_refuses_values_out_of_bounds(
    clean_env: pytest.MonkeyPatch, name: str, value: float
) -> None:
    clean_env.setenv(f"FLEETPULSE_{name.upper()}", str(value))
    with pytest.raises(ValueError, match=name):
        AgentSettings()


def test_the_simulator_has_its_own_port_and_a_bigger_buffer(
    clean_env: pytest.MonkeyPatch,
) -> None:
    s = SimulatorSettings()
    assert (s.metrics_port, s.buffer_size, s.hosts, s.seed) == (9472, 1_000_000, 200, 42)
    assert (s.sim_processes, s.max_lag) == (3, 5.0)
    clean_env.setenv("FLEETPULSE_HOSTS", "10000")
    clean_env.setenv("FLEETPULSE_SEED", "7")
    s = SimulatorSettings()
    assert (s.hosts, s.seed) == (10_000, 7)
    for name, bad in (("hosts", "0"), ("max_lag", "0"), ("sim_processes", "51")):
        clean_env.setenv(f"FLEETPULSE_{name.upper()}", bad)
        with pytest.raises(ValueError, match=name):
            SimulatorSettings()
        clean_env.delenv(f"FLEETPULSE_{name.upper()}")
