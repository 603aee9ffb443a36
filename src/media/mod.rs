//! The media relay. `sdp`: the offer/answer bodies a relayed leg is sent, rewritten to the
//! relay's ports; `latch`: which source a stream accepts, and when a silent one ends;
//! `ports`: the relay's port pairs; `rtcp`: the reception reports read from RTCP passing by; `session`: one call's streams, sans-IO, carrying SDP from
//! side to side and saying what the relays must do; `relay`: one stream's datagrams passed
//! between its two legs' sockets. The SIP B2BUA drives sessions (`sip::engine::media`) and
//! runs the relays (`sip::service`).

pub mod latch;
pub mod ports;
pub mod relay;
pub mod rtcp;
pub mod sdp;
pub mod session;
