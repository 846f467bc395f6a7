"""The websocket carriers we serve (Twilio, Exotel, Plivo, Telnyx): their names, the public paths
of their routes, and their secrets and choices (:class:`CarrierSettings`).

The routes themselves are per carrier in ``telephony/routes/`` (``twilio.py``, ``exotel.py``,
``plivo.py``, ``telnyx.py``), all over one stream handler and one websocket link:

| carrier | set-up | check |
|---|---|---|
| Twilio | ``POST /twilio/voice`` -> ``<Connect><Stream>`` TwiML; ``/twilio/whisper``, ``/twilio/dial-action`` for transfers | ``X-Twilio-Signature`` on webhooks and the upgrade, a per-call HMAC ``<Parameter>`` checked on ``start`` |
| Exotel | ``GET /exotel/voicebot`` (the applet's dynamic URL) -> ``{"url": "wss://..."}``, or a static URL | Basic auth on the upgrade (``wss://KEY:TOKEN@host/...``), optional IP allow-list |
| Plivo | ``POST /plivo/answer`` -> ``<Stream bidirectional="true">`` XML; ``POST /plivo/stream-status`` | ``X-Plivo-Signature-V3`` on webhooks, a per-call HMAC in ``extraHeaders`` checked on ``start`` |
| Telnyx | ``POST /telnyx/texml`` -> ``<Connect><Stream bidirectionalMode="rtp">`` TeXML | Ed25519 webhook signature, a per-call HMAC ``<Parameter>`` checked on ``start`` |

Secrets other than Twilio's come from the environment (:meth:`CarrierSettings.from_env`, variable
names from the config's ``telephony`` section). Fail closed: an enabled carrier without its secret
is an error at start (:func:`missing_secrets`), unless ``allow_unsigned`` (dev only: its check is
off and a warning says so). A carrier that is not enabled has no routes (404).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from voxroute.telephony import plivo, telnyx

TWILIO_VOICE_PATH = "/twilio/voice"
TWILIO_STREAM_PATH = "/twilio/stream"
TWILIO_WHISPER_PATH = "/twilio/whisper"  # + /{CallSid}: what the human hears before the caller is connected
TWILIO_DIAL_ACTION_PATH = "/twilio/dial-action"  # + /{CallSid}: how the human leg of a transfer ended
EXOTEL_VOICEBOT_PATH = "/exotel/voicebot"
EXOTEL_STREAM_PATH = "/exotel/stream"
PLIVO_ANSWER_PATH = "/plivo/answer"
PLIVO_STATUS_PATH = "/plivo/stream-status"
PLIVO_STREAM_PATH = "/plivo/stream"
PLIVO_TRANSFER_PATH = "/plivo/transfer"  # + /{call_uuid}: telephony.carrier_control's aleg_url
TELNYX_TEXML_PATH = "/telnyx/texml"
TELNYX_STREAM_PATH = "/telnyx/stream"
CARRIERS = ("twilio", "exotel", "plivo", "telnyx")  # the websocket carriers; SIP is telephony.sip


class CarrierSettings(BaseModel):
    """Per-carrier secrets and choices. ``None`` secret: that carrier's check is off (logged)."""

    model_config = ConfigDict(extra="forbid")

    exotel_credentials: str | None = Field(default=None, repr=False)  # "KEY:TOKEN" for Basic auth
    exotel_allowed_networks: list[str] = Field(default_factory=list)  # CIDRs; empty: any address
    exotel_sample_rate: int = 8000  # asked for in the stream URL (?sample-rate=); 8000, 16000, 24000
    plivo_auth_token: str | None = Field(default=None, repr=False)
    plivo_content_type: str = "audio/x-l16;rate=8000"  # Plivo's default
    telnyx_public_key: str | None = None  # base64 Ed25519 key from the portal
    telnyx_stream_secret: str | None = Field(default=None, repr=False)  # our key for the per-call HMAC
    telnyx_codec: str = "PCMU"
    telnyx_sample_rate: int = 8000

    @model_validator(mode="after")
    def _known_formats(self) -> CarrierSettings:
        if self.exotel_sample_rate not in (8000, 16000, 24000):
            raise ValueError("exotel_sample_rate must be 8000, 16000 or 24000")
        if self.plivo_content_type not in plivo.CONTENT_TYPES:
            raise ValueError(f"plivo_content_type must be one of {plivo.CONTENT_TYPES}")
        telnyx.codec_format(self.telnyx_codec, self.telnyx_sample_rate)  # raises if we could not decode it
        return self

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        names: dict[str, str] | None = None,
        secrets: Mapping[str, str | None] | None = None,
    ) -> CarrierSettings:
        """``names``: the environment variable of each secret field, when not the default
        (``exotel_credentials``, ``plivo_auth_token``, ``telnyx_public_key``, ``telnyx_stream_secret``).
        ``secrets``: the secret fields as already read (the runtime reads every carrier secret in one
        place, ``Config.carrier_secrets``); then only the stream choices come from ``env``."""
        env = os.environ if env is None else env
        names = {**SECRET_ENV, **(names or {})}
        if secrets is None:
            secrets = {field: env.get(name) for field, name in names.items()}
        nets = [n.strip() for n in env.get("EXOTEL_ALLOWED_NETWORKS", "").split(",") if n.strip()]
        choices = {
            "exotel_sample_rate": env.get("EXOTEL_SAMPLE_RATE"),
            "plivo_content_type": env.get("PLIVO_CONTENT_TYPE"),
            "telnyx_codec": env.get("TELNYX_CODEC"),
            "telnyx_sample_rate": env.get("TELNYX_SAMPLE_RATE"),
        }
        # validated from strings as the environment holds them (pydantic converts the sample rates)
        return cls.model_validate(
            {
                "exotel_allowed_networks": nets,
                **{field: (secrets.get(field) or "").strip() or None for field in names},
                **{k: v for k, v in choices.items() if v},
            }
        )


# Each carrier's secret fields in CarrierSettings, and their default environment variables.
SECRET_ENV = {
    "exotel_credentials": "EXOTEL_STREAM_CREDENTIALS",
    "plivo_auth_token": "PLIVO_AUTH_TOKEN",
    "telnyx_public_key": "TELNYX_PUBLIC_KEY",
    "telnyx_stream_secret": "TELNYX_STREAM_SECRET",
}
SECRETS_OF = {
    "exotel": ("exotel_credentials",),
    "plivo": ("plivo_auth_token",),
    "telnyx": ("telnyx_public_key", "telnyx_stream_secret"),
}


def missing_secrets(settings: CarrierSettings, enabled: tuple[str, ...] | list[str]) -> list[str]:
    """The secret fields that enabled carriers (other than Twilio) lack."""
    return [f for c in enabled for f in SECRETS_OF.get(c, ()) if not getattr(settings, f)]
