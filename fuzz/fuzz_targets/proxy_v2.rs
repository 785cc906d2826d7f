//! PROXY protocol v2 header, the first bytes a trusted load balancer sends: `parse` on arbitrary
//! bytes, checked against the stream reader the listener uses (`read_header`).
#![no_main]

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use scoregate::proxy_protocol::{self, Header, MAX_BODY_LEN, PREFIX_LEN, SIGNATURE};

fuzz_target!(|data: &[u8]| {
    let parsed = proxy_protocol::parse(data);
    if let Ok((header, used)) = parsed {
        // Exactly the declared length is used, never more than there is or than the cap.
        assert_eq!(data[..12], SIGNATURE);
        let declared = u16::from_be_bytes([data[14], data[15]]) as usize;
        assert_eq!(used, PREFIX_LEN + declared);
        assert!(used <= data.len() && declared <= MAX_BODY_LEN);
        // Bytes behind the header do not change the answer.
        assert_eq!(proxy_protocol::parse(&data[..used]), Ok((header, used)));
        if let Header::Proxy {
            source,
            destination,
        } = header
        {
            assert_eq!(source.is_ipv4(), destination.is_ipv4());
            let again = proxy_protocol::encode(source, destination);
            assert_eq!(proxy_protocol::parse(&again), Ok((header, again.len())));
        }
    }

    // The listener's reader: a `&[u8]` is always ready, so one poll finishes it.
    let mut rest = data;
    let read = {
        let mut fut = pin!(proxy_protocol::read_header(&mut rest));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("reading from a slice is never pending"),
        }
    };
    match (parsed, read) {
        (Ok((h, used)), Ok(r)) => {
            assert_eq!(h, r);
            assert_eq!(
                rest.len(),
                data.len() - used,
                "the reader consumes exactly the header"
            );
        }
        (Err(_), Err(_)) => {}
        (p, r) => panic!("parse and read_header disagree: {p:?} vs {r:?}"),
    }
});
