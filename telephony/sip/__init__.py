"""A small SIP user agent: sans-I/O message, auth, SDP, RTP and UA code, with a thin asyncio layer.

``message`` parses and builds SIP messages, ``auth`` does digest authentication, ``sdp`` the
offer/answer, ``rtp`` packets, DTMF events, the jitter buffer, the sender's counters and the
playout queue, ``ua`` the user agent's state machine (calls, REGISTER, REFER), ``transport`` the
asyncio UDP layer, the per-call ``SipLink`` that ``CallSession`` sees and ``SipTransfers``, and
``service`` starts it (and Asterisk AudioSocket) beside the runtime.
"""
