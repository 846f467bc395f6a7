"""The carriers' routes, one module each (``twilio``, ``exotel``, ``plivo``, ``telnyx``), over what
they share (``edge``: the one stream handler and the webhook helpers). ``telephony.app.create_app``
mounts the enabled ones."""
