//! The media relay's sans-IO parts. `sdp`: the offer/answer bodies a relayed leg is sent,
//! rewritten to the relay's ports. The relay itself (sockets, latching, timeouts) is to come
//! (see the media issue); nothing outside `media` uses it yet.

pub mod sdp;
