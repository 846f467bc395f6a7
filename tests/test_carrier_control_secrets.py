"""Every carrier secret is named in the config (``telephony.*_env``, ``handoff.twilio_account_sid_env``)
and read in one place (``Config.carrier_secrets``): the runtime's call controls and the carrier edge
take them from there, under whatever variable names the config gives."""

from __future__ import annotations

from voxroute.agent.config import CarrierSecrets, TelephonyConfig, load_config
from voxroute.runtime import _call_control, carrier_settings
from voxroute.telephony.call_control import TwilioCallControl
from voxroute.telephony.carrier_control import PlivoCallControl, TelnyxCallControl

RENAMED = {
    "twilio_account_sid_env": "ACME_TWILIO_SID",
    "twilio_auth_token_env": "ACME_TWILIO_TOKEN",
    "exotel_credentials_env": "ACME_EXOTEL",
    "plivo_auth_id_env": "ACME_PLIVO_ID",
    "plivo_auth_token_env": "ACME_PLIVO_TOKEN",
    "telnyx_api_key_env": "ACME_TELNYX_KEY",
    "telnyx_public_key_env": "ACME_TELNYX_PUBLIC",
    "telnyx_stream_secret_env": "ACME_TELNYX_STREAM",
}
VALUES = {
    "ACME_TWILIO_SID": "AC" + "1" * 32,
    "ACME_TWILIO_TOKEN": "twilio-token",
    "ACME_EXOTEL": "key:token",
    "ACME_PLIVO_ID": "MAPLIVOID",
    "ACME_PLIVO_TOKEN": "plivo-token",
    "ACME_TELNYX_KEY": "KEYtelnyx",
    "ACME_TELNYX_PUBLIC": "cHVibGlj",
    "ACME_TELNYX_STREAM": "stream-secret",
}


def renamed_config():
    config = load_config()
    handoff = config.handoff.model_copy(update={"twilio_account_sid_env": RENAMED["twilio_account_sid_env"]})
    telephony = config.telephony.model_copy(
        update={k: v for k, v in RENAMED.items() if k in TelephonyConfig.model_fields}
    )
    return config.model_copy(update={"handoff": handoff, "telephony": telephony})


def test_every_secret_env_of_the_telephony_config_is_a_carrier_secret():
    envs = load_config().carrier_secret_envs()
    declared = {name for name in TelephonyConfig.model_fields if name.endswith("_env")}
    defaults = {TelephonyConfig.model_fields[name].default for name in declared}
    assert defaults | {"TWILIO_ACCOUNT_SID"} == set(envs.values())
    assert set(envs) == set(CarrierSecrets.__dataclass_fields__)


def test_secrets_come_from_the_configured_names_and_are_never_printed():
    config = renamed_config()
    env = dict(VALUES) | {"ACME_TELNYX_STREAM": "  ", "PLIVO_AUTH_TOKEN": "the-default-name-is-not-read"}
    secrets = config.carrier_secrets(env)
    assert secrets == CarrierSecrets(
        twilio_account_sid="AC" + "1" * 32,
        twilio_auth_token="twilio-token",
        exotel_credentials="key:token",
        plivo_auth_id="MAPLIVOID",
        plivo_auth_token="plivo-token",
        telnyx_api_key="KEYtelnyx",
        telnyx_public_key="cHVibGlj",
        telnyx_stream_secret=None,  # blank: unset
    )
    assert not any(value in repr(secrets) for value in VALUES.values())
    assert load_config().carrier_secrets({}) == CarrierSecrets()


async def test_the_call_controls_use_the_configured_names(monkeypatch):
    for name, value in VALUES.items():
        monkeypatch.setenv(name, value)
    for default in (
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "PLIVO_AUTH_ID",
        "PLIVO_AUTH_TOKEN",
        "TELNYX_API_KEY",
    ):
        monkeypatch.delenv(default, raising=False)
    modes: list[str] = []
    control = _call_control(renamed_config(), None, modes, {})
    try:
        twilio, plivo, telnyx = (control.controls[c] for c in ("twilio", "plivo", "telnyx"))
        assert isinstance(twilio, TwilioCallControl) and twilio.account_sid == VALUES["ACME_TWILIO_SID"]
        assert twilio.api_base_url == "https://api.twilio.com"
        assert isinstance(plivo, PlivoCallControl) and plivo.auth_id == VALUES["ACME_PLIVO_ID"]
        assert isinstance(telnyx, TelnyxCallControl)
        assert telnyx.http.headers["authorization"] == f"Bearer {VALUES['ACME_TELNYX_KEY']}"
        assert "Twilio call control: api.twilio.com" in modes and "Plivo call control: api.plivo.com" in modes
    finally:
        await control.aclose()


async def test_without_secrets_or_emulators_no_control_and_the_names_are_said(monkeypatch):
    for name in VALUES:
        monkeypatch.delenv(name, raising=False)
    modes: list[str] = []
    control = _call_control(renamed_config(), None, modes, {})
    assert set(control.controls) == {"exotel"}
    assert any("$ACME_TWILIO_SID" in m and "$ACME_TWILIO_TOKEN" in m for m in modes)
    await control.aclose()


def test_the_carrier_edge_takes_the_secrets_read_once(monkeypatch):
    monkeypatch.setenv("EXOTEL_SAMPLE_RATE", "16000")  # a stream choice, not a secret: from the environment
    config = renamed_config()
    settings = carrier_settings(config, config.carrier_secrets(VALUES))
    assert settings.exotel_credentials == "key:token" and settings.plivo_auth_token == "plivo-token"
    assert (settings.telnyx_public_key, settings.telnyx_stream_secret) == ("cHVibGlj", "stream-secret")
    assert settings.exotel_sample_rate == 16000
