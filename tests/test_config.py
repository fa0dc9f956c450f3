from pathlib import Path

import pytest
from click.testing import CliRunner

import config
from common.errors import ConfigError
from config import load_config, parse_runtime_setting, redact, register_secrets
from main import cli

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_need_no_configuration(tmp_path):
    cfg = load_config(environ={}, dotenv_path=tmp_path / "none.env")
    assert cfg.mode == "SIM"
    assert cfg.broker == "sim" and cfg.data_source == "sim"
    assert cfg.max_positions == 6 and cfg.position_size_pct == 10.0 and cfg.max_exposure_pct == 60.0
    assert cfg.min_gap_up_pct_small == 3.0 and cfg.min_volume_surge_large == 1.3
    assert Path(cfg.momentum_db) == ROOT / "data" / "trades.db"
    assert cfg.sim_broker_path() == ROOT / "data" / "sim_broker.db"


def test_layering_dotenv_then_environment_then_options(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("MAX_POSITIONS=4\nTRAILING_STOP_PCT=7\nBROKER=sim\n")
    cfg = load_config({"MAX_POSITIONS": "3"}, environ={"TRAILING_STOP_PCT": "6"}, dotenv_path=env_file)
    assert cfg.max_positions == 3
    assert cfg.trailing_stop_pct == 6.0


@pytest.mark.parametrize("name, value, fragment", [
    ("MAX_POSITIONS", "six", "MAX_POSITIONS: expected an integer"),
    ("MAX_POSITIONS", "0", "MAX_POSITIONS: must be between 1 and 100"),
    ("MAX_EXPOSURE_PCT", "150", "MAX_EXPOSURE_PCT: must be between 1 and 100"),
    ("TRAILING_STOP_PCT", "nan", "TRAILING_STOP_PCT: must be between"),
    ("ALPACA_PAPER", "maybe", "ALPACA_PAPER: expected true or false"),
    ("BROKER", "ibkr", "BROKER: must be one of sim, alpaca"),
    ("DATA_SOURCE", "yahoo", "DATA_SOURCE/--data: unknown source 'yahoo'"),
    ("DATA_SOURCE", "csv:", "unknown source"),
    ("ALPACA_TRADING_URL", "paper-api.alpaca.markets", "ALPACA_TRADING_URL: expected an http(s) URL with a host"),
    ("ALPACA_TRADING_URL", "https://", "ALPACA_TRADING_URL: expected an http(s) URL with a host"),
    ("ALPACA_TRADING_URL", "https://paper-api.alpaca.markets/v2", "ALPACA_TRADING_URL: expected scheme and host"),
    ("ALPACA_DATA_URL", "ftp://data.alpaca.markets", "ALPACA_DATA_URL: expected an http(s) URL with a host"),
    ("ALPACA_DATA_URL", "https://data.alpaca.markets:99999", "ALPACA_DATA_URL: not a valid URL"),
    ("ALPACA_DATA_URL", "https://data.alpaca .markets", "ALPACA_DATA_URL: expected an http(s) URL with a host"),
    ("TELEGRAM_BASE_URL", "api.telegram.org", "TELEGRAM_BASE_URL: expected an http(s) URL with a host"),
    ("ANTHROPIC_BASE_URL", "http//api.anthropic.com", "ANTHROPIC_BASE_URL: expected an http(s) URL with a host"),
    ("DISCORD_WEBHOOK_URL", "discord.com/api/webhooks/1/x", "DISCORD_WEBHOOK_URL: expected an http(s) URL"),
])
def test_bad_values_name_the_variable(tmp_path, name, value, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(environ={name: value}, dotenv_path=tmp_path / "none.env")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("name, value, effective", [
    ("ALPACA_TRADING_URL", "http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("ALPACA_TRADING_URL", "https://paper-api.alpaca.markets/", "https://paper-api.alpaca.markets"),
    ("ALPACA_DATA_URL", "", ""),
    ("TELEGRAM_BASE_URL", "", "https://api.telegram.org"),
    ("ANTHROPIC_BASE_URL", "https://proxy.example.com/anthropic", "https://proxy.example.com/anthropic"),
])
def test_good_urls_are_kept(tmp_path, name, value, effective):
    assert load_config(environ={name: value}, dotenv_path=tmp_path / "none.env").get(name) == effective


def test_a_secret_url_is_not_echoed_when_malformed(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(environ={"DISCORD_WEBHOOK_URL": "discord.com/api/webhooks/1/SeCrEtToKeN"},
                    dotenv_path=tmp_path / "none.env")
    assert "SeCrEtToKeN" not in str(err.value) and "<hidden>" in str(err.value)


def test_a_malformed_alpaca_url_is_bad_configuration_not_an_outage(tmp_path, monkeypatch):
    for name, value in {"MOMENTUM_DB": str(tmp_path / "trades.db"), "LOG_DIR": str(tmp_path / "logs"),
                        "BROKER": "alpaca", "ALPACA_API_KEY": "PKURLTEST12345", "ALPACA_SECRET_KEY": "urlsecret12345",
                        "ALPACA_TRADING_URL": "paper-api.alpaca.markets"}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["--asof", "2016-11-09T10:30", "status"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "error: ALPACA_TRADING_URL: expected an http(s) URL with a host, like https://example.com "
        "(got 'paper-api.alpaca.markets')"]


def test_secret_values_are_never_echoed_in_errors(tmp_path):
    cfg = load_config(environ={"ALPACA_API_KEY": "PKSECRETVALUE123", "ALPACA_SECRET_KEY": "zzzSECRET999"},
                      dotenv_path=tmp_path / "none.env")
    public = cfg.public()
    assert public["ALPACA_API_KEY"] == "<set>" and "PKSECRETVALUE123" not in str(public)
    register_secrets(cfg.secrets())
    assert redact("key PKSECRETVALUE123 and zzzSECRET999") == "key *** and ***"


def test_redact_masks_token_shapes_even_when_unregistered():
    text = "GET https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getUpdates"
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw" not in redact(text)
    assert "abcdef123456" not in redact('{"api_key": "abcdef123456"}')


@pytest.mark.parametrize("paper, live, mode", [("true", "yes", "PAPER"), ("false", "no", "PAPER"),
                                               ("false", "yes", "LIVE")])
def test_live_needs_two_switches(tmp_path, paper, live, mode):
    cfg = load_config(environ={"BROKER": "alpaca", "ALPACA_PAPER": paper, "LIVE_TRADING": live},
                      dotenv_path=tmp_path / "none.env")
    assert cfg.mode == mode


@pytest.mark.parametrize("key, raw, stored", [("autoclose", "off", "off"), ("autoclose", "YES", "on"),
                                              ("autoclose_threshold", "7", "7"), ("skip_buys", "0", "off")])
def test_runtime_settings_parse(key, raw, stored):
    assert parse_runtime_setting(key, raw) == stored


@pytest.mark.parametrize("key, raw, fragment", [
    ("autoclose_threshold", "abc", "set autoclose_threshold: expected a whole number"),
    ("autoclose_threshold", "11", "must be between 3 and 10"),
    ("autoclose", "sometimes", "expected on or off"),
    ("colour", "blue", "unknown setting 'colour'"),
])
def test_runtime_settings_reject_bad_values(key, raw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_runtime_setting(key, raw)


def test_env_example_documents_every_variable():
    text = (ROOT / ".env.example").read_text()
    assert text == config.env_example(), "regenerate .env.example from config.env_example()"
    for var in config.VARIABLES:
        assert f"# {var.name}=" in text


@pytest.mark.parametrize("value", ["25:00", "9:00", "abc", "16:00", ""])
def test_rebalance_time_must_be_a_time_inside_the_session(value):
    with pytest.raises(ConfigError, match="^REBALANCE_TIME: expected HH:MM between 09:30 and 15:59"):
        config.load_config({"REBALANCE_TIME": value}, environ={})
