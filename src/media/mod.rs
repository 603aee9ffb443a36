//! The media relay's sans-IO parts. `sdp`: the offer/answer bodies a relayed leg is sent,
//! rewritten to the relay's ports; `latch`: which source a stream accepts, and when a silent
//! one ends. The relay itself (sockets, ports, the calls' use of it) is to come (see the media
//! issue); nothing outside `media` uses it yet.

pub mod latch;
pub mod sdp;
